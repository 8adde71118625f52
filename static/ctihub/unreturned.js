// The console's count of missed calls nobody has returned today. Plain JavaScript, no build step.
//
// The server counts on every snapshot (telephony.history.unreturned_missed: the numbers of today's missed
// incoming calls with no answered or outgoing call to or from them since). Between snapshots the cards
// that arrive keep it: a card of a missed incoming call adds its number, an answered call or an outgoing
// one with that number removes it. The snapshot alone sees a colleague's call back (the agent's console
// gets no card of another agent's call). Each number counts once: it is one caller to call back.
"use strict";

(function () {
  const ANSWERED_ELSEWHERE = "answered_elsewhere";
  const NOT_MISSED_CAUSES = new Set(["busy", "failed", "unavailable", ANSWERED_ELSEWHERE]);
  let numbers = new Set();

  function show() {
    const el = document.getElementById("unreturned");
    if (!el) return;
    const count = numbers.size;
    el.dataset.count = String(count);
    const format = count === 0 ? el.dataset.none : count === 1 ? el.dataset.one : el.dataset.many;
    el.textContent = format.replace("%(count)s", String(count));
  }

  function isMissed(card) {
    return card.direction === "in" && card.state === "ended" && !card.answered && !NOT_MISSED_CAUSES.has(card.end_cause);
  }

  function onCard(card) {
    const number = card.remote_number;
    if (!number || !number.startsWith("+")) return; // only E.164 numbers are counted (as the server does)
    if (isMissed(card)) numbers.add(number);
    else if (card.answered || card.direction === "out" || card.end_cause === ANSWERED_ELSEWHERE) numbers.delete(number);
    show();
  }

  document.addEventListener("ctihub:message", (event) => {
    const message = event.detail;
    if (message.type === "snapshot" && Array.isArray(message.unreturned_missed)) {
      numbers = new Set(message.unreturned_missed);
      show();
    } else if (message.type === "card" && message.card) {
      onCard(message.card);
    }
  });
})();
