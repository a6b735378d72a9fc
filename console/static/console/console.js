// ModelMuxer console: progressive enhancement only; every core form works without this file.
"use strict";

// Copy buttons: <button data-copy="#element-id">Copy</button> copies that element's text.
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.querySelector(button.dataset.copy);
  if (!source) return;
  const text = source.value !== undefined && source.tagName !== "CODE" && source.tagName !== "PRE" ? source.value : source.textContent;
  const done = () => { const label = button.textContent; button.textContent = "Copied"; setTimeout(() => { button.textContent = label; }, 1500); };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text.trim()).then(done, () => selectText(source));
  } else {
    selectText(source);
    document.execCommand && document.execCommand("copy");
    done();
  }
});

function selectText(node) {
  const range = document.createRange();
  range.selectNodeContents(node);
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
}

// Forms with data-confirm ask before submitting (revoke, delete).
document.addEventListener("submit", (event) => {
  const message = event.target.dataset && event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});

// The console's WebSocket URL for a path, on this page's host and scheme.
window.muxerSocketURL = (path) => `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
