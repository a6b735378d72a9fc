// ModelMuxer console, management pages: progressive enhancement only (the forms work without it).
"use strict";

// The budget form shows only the target select its scope uses (team, API key or member).
(() => {
  const form = document.getElementById("budget-create-form");
  if (!form) return;
  const scope = form.querySelector("select[name=scope]");
  const targets = { team: "team", api_key: "api_key", user: "user" };
  const update = () => {
    for (const name of Object.values(targets)) {
      const field = form.querySelector(`[name=${name}]`);
      const wrapper = field && field.closest("div");
      if (wrapper) wrapper.hidden = targets[scope.value] !== name;
    }
  };
  scope.addEventListener("change", update);
  update();
})();
