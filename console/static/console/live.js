// Live console updates: one WebSocket to the organization's events, re-opened when it drops.
// The element with data-socket (#live-status) names the socket and shows whether it is connected;
// each event is re-dispatched on document as a "muxer:live" CustomEvent for the page's own script.
"use strict";

(() => {
  const indicator = document.getElementById("live-status");
  if (!indicator || !indicator.dataset.socket || !("WebSocket" in window)) return;
  let delay = 1000;

  const show = (state, text) => {
    indicator.classList.remove("connected", "disconnected");
    indicator.classList.add(state);
    indicator.textContent = text;
    indicator.dataset.state = state;
  };

  function connect() {
    const socket = new WebSocket(window.muxerSocketURL(indicator.dataset.socket));
    socket.addEventListener("open", () => { delay = 1000; show("connected", "Live"); });
    socket.addEventListener("message", (message) => {
      let event;
      try { event = JSON.parse(message.data); } catch (_) { return; }
      document.dispatchEvent(new CustomEvent("muxer:live", { detail: event }));
    });
    socket.addEventListener("close", (closed) => {
      // 44xx: not a member or not allowed; trying again will not help.
      if (closed.code >= 4400 && closed.code < 4500) { show("disconnected", "Live updates unavailable"); return; }
      show("disconnected", "Disconnected, reconnecting…");
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    });
  }
  connect();
})();
