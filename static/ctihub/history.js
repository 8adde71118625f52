// The call history's call-back buttons. Plain JavaScript, no build step.
//
// The page has no console websocket: a call back is a POST to /console/dial/, which does what the
// console's own "dial" request does (from the agent's dialling terminal), with the session and the
// CSRF token as every POST of these pages.
"use strict";

(function () {
  // Django's catalog or static/ctihub/i18n.js (base.html loads one of them before this file) defines both.
  const gettext = (text) => window.gettext(text);
  const interpolate = (format, values) => window.interpolate(format, values, true);

  function notice(text) {
    const el = document.getElementById("history-notice");
    if (el) el.textContent = text || "";
  }

  async function callBack(button, url, token) {
    const number = button.dataset.number;
    button.disabled = true;
    notice(interpolate(gettext("Calling %(number)s…"), { number }));
    try {
      const response = await fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": token },
        body: JSON.stringify({ number }),
      });
      let answer = null;
      try { answer = await response.json(); } catch (e) { answer = null; }
      if (!response.ok || !answer || !answer.ok) {
        notice((answer && answer.error) || interpolate(gettext("Could not call (HTTP %(status)s)."), { status: response.status }));
      }
    } catch (e) {
      notice(gettext("Could not reach ctihub; try again in a moment."));
    } finally {
      button.disabled = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const table = document.querySelector("table.history[data-dial-url]");
    const tokenInput = document.querySelector("input[name=csrfmiddlewaretoken]");
    if (!table || !tokenInput) return;
    table.addEventListener("click", (event) => {
      const button = event.target.closest("button.call-back");
      if (button && !button.disabled) callBack(button, table.dataset.dialUrl, tokenInput.value);
    });
  });
})();
