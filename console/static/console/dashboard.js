// The dashboard's live figures: new usage adds to today's and this month's spend and to today's requests;
// budget alerts appear in #alerts. The page's next load shows the ledger's exact figures.
"use strict";

(() => {
  const usd = (amount) => {
    if (amount === 0 || Math.abs(amount) >= 0.01) {
      return `$${amount.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })} USD`;
    }
    return `$${Number(amount.toPrecision(6))} USD`;
  };

  function addSpend(card, cost) {
    if (!card) return;
    const total = Number(card.dataset.usd || 0) + cost;
    card.dataset.usd = String(total);
    const amount = card.querySelector("[data-role=amount]");
    if (amount) amount.textContent = usd(total);
    const bar = card.querySelector("[data-role=bar]");
    const limit = Number(card.dataset.limitUsd);
    if (bar && limit > 0) {
      const percent = Math.min(100, (total * 100) / limit);
      bar.style.width = `${percent.toFixed(1)}%`;
      bar.classList.toggle("over", total >= limit);
      bar.parentElement.setAttribute("aria-valuenow", percent.toFixed(1));
    }
  }

  function addRequests(card, requests) {
    if (!card) return;
    const total = Number(card.dataset.count || 0) + requests;
    card.dataset.count = String(total);
    const count = card.querySelector("[data-role=count]");
    if (count) count.textContent = String(total);
  }

  function showAlert(event) {
    const area = document.getElementById("alerts");
    if (!area) return;
    const line = document.createElement("p");
    line.className = "alert warn";
    line.textContent = event.title;
    area.prepend(line);
  }

  document.addEventListener("muxer:live", (message) => {
    const event = message.detail || {};
    if (event.type === "usage") {
      const cost = Number(event.cost_usd) || 0;
      addSpend(document.getElementById("spend-today"), cost);
      addSpend(document.getElementById("spend-month"), cost);
      addRequests(document.getElementById("requests-today"), Number(event.requests) || 0);
    } else if (event.type === "budget_alert") {
      showAlert(event);
    }
  });
})();
