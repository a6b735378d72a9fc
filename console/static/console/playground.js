// The playground: send the form over the WebSocket and show the answer as it streams.
// Without this file (or without WebSockets) the form posts to the page and shows the whole answer.
"use strict";

(() => {
  const form = document.getElementById("playground-form");
  if (!form || !("WebSocket" in window)) return;
  const answer = document.getElementById("playground-answer");
  const status = document.getElementById("playground-status");
  const send = document.getElementById("playground-send");
  const stop = document.getElementById("playground-stop");
  const facts = {
    model: document.getElementById("playground-model"),
    reason: document.getElementById("playground-reason"),
    tokens: document.getElementById("playground-tokens"),
    cost: document.getElementById("playground-cost"),
  };
  let socket = null;
  let busy = false;

  const field = (name) => form.elements.namedItem(name);
  const setStatus = (text, cls) => { status.textContent = text; status.className = cls || "muted"; };
  const setBusy = (value) => { busy = value; send.disabled = value; stop.hidden = !value; };
  const resetFacts = () => { for (const node of Object.values(facts)) node.textContent = "—"; };

  function request() {
    const messages = [];
    const system = field("system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push({ role: "user", content: field("message").value });
    const body = { key_id: Number(field("key_id").value), model: field("model").value, messages };
    if (field("max_tokens").value) body.max_tokens = Number(field("max_tokens").value);
    if (field("temperature").value) body.temperature = Number(field("temperature").value);
    return body;
  }

  function onMessage(event) {
    let data;
    try { data = JSON.parse(event.data); } catch (_) { return; }
    if (data.type === "delta") {
      answer.textContent += data.text;
    } else if (data.type === "done") {
      facts.model.textContent = data.model || "—";
      facts.reason.textContent = data.route_reason || "—";
      facts.tokens.textContent = `${data.input_tokens} / ${data.output_tokens}`;
      facts.cost.textContent = data.cost_usd != null ? `$${data.cost_usd} USD` : "—";
      setStatus("Done.", "ok");
      setBusy(false);
    } else if (data.type === "error") {
      setStatus(`${data.message}${data.status ? ` (${data.status})` : ""}`, "error");
      setBusy(false);
    }
  }

  function open() {
    return new Promise((resolve, reject) => {
      if (socket && socket.readyState === WebSocket.OPEN) { resolve(socket); return; }
      const ws = new WebSocket(window.muxerSocketURL(form.dataset.socket));
      ws.addEventListener("open", () => { socket = ws; resolve(ws); });
      ws.addEventListener("message", onMessage);
      ws.addEventListener("close", (event) => {
        if (socket === ws) socket = null;
        if (busy) { setStatus(event.code === 4403 ? "Your role cannot use the playground." : "Connection closed.", "error"); setBusy(false); }
        reject(new Error(`closed ${event.code}`));
      });
    });
  }

  form.addEventListener("submit", (event) => {
    if (!field("message").value.trim()) return; // let the server say what is missing
    event.preventDefault();
    answer.textContent = "";
    resetFacts();
    setStatus("Sending…");
    setBusy(true);
    open().then((ws) => ws.send(JSON.stringify(request()))).catch(() => {
      // No WebSocket: fall back to the plain form post.
      setBusy(false);
      form.submit();
    });
  });

  // Stopping closes the socket: the gateway cancels the upstream call and records the usage so far.
  stop.addEventListener("click", () => {
    if (socket) socket.close();
    setStatus("Stopped.", "warn");
    setBusy(false);
  });
})();
