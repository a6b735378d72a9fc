// Onboarding: progressive enhancement only; every step works without this file.
"use strict";

// The organization form's time zone starts at the browser's own, unless the page already chose one.
document.addEventListener("DOMContentLoaded", () => {
  const select = document.querySelector("#org-form select[name=timezone]");
  if (!select || select.value !== "UTC" || !window.Intl) return;
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  if (zone && Array.from(select.options).some((option) => option.value === zone)) select.value = zone;
});
