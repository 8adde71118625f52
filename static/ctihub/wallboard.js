// The wallboard (templates/wallboard.html): the agent grid, the floor's figures and today's calls per hour.
//
// console.js owns the websocket and the cards: it dispatches "ctihub:message" with every message it gets
// (before applying it) and "ctihub:calls" with every card it holds (after). The snapshot brings today's
// figures counted by the server (telephony/wallboard.py); from there the cards keep them up to date here,
// each call counted by its id: what a call adds is worked out from its card alone (answered, or ended
// unanswered, on the day it came in), so a card sent twice, or late by a resync, or one that skips a
// state, never counts twice. The server's count comes back every REFRESH_MS and at midnight (a fresh
// snapshot, asked through console.js), which bounds any drift and starts the new day.
"use strict";

(function () {
  // Django's catalog or static/ctihub/i18n.js (base.html loads one of them before this file) defines both.
  const gettext = (text) => window.gettext(text);
  const interpolate = (format, values) => window.interpolate(format, values, true);

  const REFRESH_MS = 15 * 60 * 1000;
  const COMMIT_MARGIN_MS = 1000; // a change is stamped a moment before its commit (telephony.consumers)
  // The chart's drawing, as telephony/wallboard.py draws it on the server.
  const SLOT = 30, BAR = 12, PLOT = 150;
  const SVG = "http://www.w3.org/2000/svg";
  const STATUS_LABELS = { free: gettext("Free"), busy: gettext("Busy"), dinner: gettext("Dinner"), break: gettext("Break") };
  const STATE_LABELS = { ringing: gettext("Ringing"), dialing: gettext("Dialling"), talking: gettext("Talking"), held: gettext("On hold") };

  let today = null; // the snapshot's figures, kept up to date
  let agents = new Map(); // agent id -> {id, name, code, status}
  let counted = new Map(); // call id -> what it adds to today's figures, as counted so far
  let versions = new Map(); // call id -> the newest card version seen here
  let cards = []; // every card console.js holds
  let refreshTimer = null;

  // --- today's figures ---------------------------------------------------------------
  // What a call adds to today's figures, from its card: nothing unless it is a customer's call in today.
  function contribution(card) {
    if (!today || card.direction !== "in" || card.internal) return null;
    const created = Date.parse(card.created_at);
    if (created < today.start || created >= today.end) return null;
    const answered = Boolean(card.answered_at);
    return {
      agent: card.agent == null ? null : String(card.agent),
      hour: Math.floor((created - today.start) / 3600000),
      answered: answered ? 1 : 0,
      missed: !answered && card.state === "ended" ? 1 : 0,
      wait: answered ? Math.max(0, Date.parse(card.answered_at) - created) : 0,
    };
  }

  // A card of a call the snapshot did not hold: the server counted it already if it had ended before the
  // snapshot was read (an older call, e.g. its card sent again); a call it had not seen counts from nothing.
  function countedBySnapshot(card) {
    return card.state === "ended" && card.ended_at && Date.parse(card.ended_at) < today.asOf - COMMIT_MARGIN_MS
      ? contribution(card) : null;
  }

  function apply(part, sign) {
    if (!part) return;
    today.answered += sign * part.answered;
    today.missed += sign * part.missed;
    today.waitMs += sign * part.wait;
    const hour = today.hours[part.hour];
    if (hour) {
      hour.answered += sign * part.answered;
      hour.missed += sign * part.missed;
    }
    if (part.agent !== null) {
      const agent = today.agents[part.agent] || (today.agents[part.agent] = { answered: 0, missed: 0 });
      agent.answered += sign * part.answered;
      agent.missed += sign * part.missed;
    }
  }

  function onSnapshot(message) {
    if (!message.wallboard) return;
    const w = message.wallboard;
    today = {
      asOf: Date.parse(w.as_of), start: Date.parse(w.day_start), end: Date.parse(w.day_end),
      answered: w.answered, missed: w.missed, waitMs: w.wait_ms_total,
      agents: JSON.parse(JSON.stringify(w.agents)), hours: w.hours.map((h) => ({ ...h })),
    };
    agents = new Map((message.agents || []).map((a) => [a.id, { ...a }]));
    counted = new Map();
    versions = new Map();
    for (const card of message.calls) {
      counted.set(card.id, contribution(card));
      versions.set(card.id, card.version);
    }
    scheduleRefresh();
  }

  function onCard(card) {
    if (!today) return;
    if ((versions.get(card.id) || 0) >= card.version) return; // stale or repeated
    versions.set(card.id, card.version);
    const before = counted.has(card.id) ? counted.get(card.id) : countedBySnapshot(card);
    const after = contribution(card);
    apply(before, -1);
    apply(after, +1);
    counted.set(card.id, after);
  }

  // A fresh snapshot from the server every REFRESH_MS, and as the day ends (console.js asks for it); tried
  // again every minute until one comes (a reconnect brings one too). Midnight by the server's clock (the
  // snapshot's time), not the browser's, which may be minutes off.
  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    const untilMidnight = today.end - today.asOf + 1000;
    refreshTimer = setTimeout(refresh, Math.max(1000, Math.min(REFRESH_MS, untilMidnight)));
  }

  function refresh() {
    refreshTimer = setTimeout(refresh, 60000);
    document.dispatchEvent(new CustomEvent("ctihub:refresh"));
  }

  // --- rendering ----------------------------------------------------------------------
  function formatDuration(ms) {
    const s = Math.floor(Math.max(0, ms) / 1000);
    return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  }

  function setText(id, text) {
    const el = document.getElementById(id);
    if (el && el.textContent !== String(text)) el.textContent = String(text);
  }

  const live = () => cards.filter((c) => c.state !== "ended");
  const waiting = (c) => c.state === "ringing" && c.direction === "in" && !c.internal;

  function renderFigures(now) {
    const calls = live();
    const ringing = calls.filter(waiting);
    setText("fig-ringing", ringing.length);
    const longest = Math.max(0, ...ringing.map((c) => now - Date.parse(c.created_at)));
    setText("fig-longest", ringing.length ? formatDuration(longest) : "—");
    setText("fig-talking", calls.filter((c) => c.state === "talking").length);
    setText("fig-held", calls.filter((c) => c.state === "held").length);
    if (!today) return;
    setText("fig-answered", today.answered);
    setText("fig-missed", today.missed);
    const total = today.answered + today.missed;
    setText("fig-rate", total ? interpolate(gettext("%(rate)s %"), { rate: Math.round(100 * today.answered / total) }) : "—");
    setText("fig-wait", today.answered ? formatDuration(today.waitMs / today.answered) : "—");
  }

  function peerOf(card) {
    const customer = card.crm && card.crm.customer;
    const name = customer ? [customer.firstName, customer.lastName].filter(Boolean).join(" ") : "";
    const number = card.remote_number_display || card.remote_number || gettext("Unknown number");
    const who = name || card.remote_label;
    return who ? `${who} (${number})` : number;
  }

  // The call an agent is on: the one they talk on (or hold) before one that rings.
  function currentCalls() {
    const rank = { talking: 0, held: 1, dialing: 2, ringing: 3 };
    const byAgent = new Map();
    for (const card of live()) {
      if (card.agent == null) continue;
      const shown = byAgent.get(card.agent);
      if (!shown || (rank[card.state] ?? 9) < (rank[shown.state] ?? 9)) byAgent.set(card.agent, card);
    }
    return byAgent;
  }

  function cell(tr, n, text, className) {
    let td = tr.children[n];
    if (!td) {
      td = document.createElement("td");
      if (className) td.className = className;
      tr.appendChild(td);
    }
    if (td.textContent !== String(text)) td.textContent = String(text);
  }

  // Rows are kept and filled in place (not rebuilt every second): a screen reader or a selection stays put.
  function renderRows(tbody, items, key, fill) {
    const keep = new Set(items.map((item) => String(key(item))));
    for (const tr of [...tbody.children]) if (!keep.has(tr.dataset.key)) tr.remove();
    items.forEach((item, n) => {
      let tr = tbody.querySelector(`tr[data-key="${key(item)}"]`);
      if (!tr) {
        tr = document.createElement("tr");
        tr.dataset.key = key(item);
      }
      if (tbody.children[n] !== tr) tbody.insertBefore(tr, tbody.children[n] || null);
      fill(tr, item);
    });
  }

  function renderAgents(now) {
    const current = currentCalls();
    const list = [...agents.values()].sort((a, b) => a.name.localeCompare(b.name));
    renderRows(document.getElementById("agents"), list, (a) => a.id, (tr, agent) => {
      const call = current.get(agent.id);
      const figures = (today && today.agents[String(agent.id)]) || { answered: 0, missed: 0 };
      tr.dataset.agent = agent.id;
      tr.dataset.status = agent.status;
      tr.dataset.call = call ? call.state : "";
      cell(tr, 0, agent.name);
      cell(tr, 1, agent.code || "");
      cell(tr, 2, STATUS_LABELS[agent.status] || agent.status, "status");
      cell(tr, 3, call ? `${STATE_LABELS[call.state] || call.state}: ${peerOf(call)}` : "—");
      cell(tr, 4, call ? formatDuration(now - Date.parse(call.answered_at || call.created_at)) : "", "num");
      cell(tr, 5, figures.answered, "num answered");
      cell(tr, 6, figures.missed, "num missed");
    });
  }

  function renderCalls(now) {
    const calls = live().sort((a, b) => a.created_at.localeCompare(b.created_at));
    renderRows(document.getElementById("calls"), calls, (c) => c.id, (tr, card) => {
      const agent = agents.get(card.agent);
      tr.dataset.call = card.id;
      tr.dataset.state = card.state;
      cell(tr, 0, STATE_LABELS[card.state] || card.state);
      cell(tr, 1, card.direction === "in" ? gettext("In") : gettext("Out"));
      cell(tr, 2, card.remote_number_display || card.remote_number || "?");
      cell(tr, 3, agent ? agent.name : "—");
      cell(tr, 4, formatDuration(now - Date.parse(card.answered_at || card.created_at)), "num");
    });
  }

  function svg(name, attributes, text) {
    const el = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) el.setAttribute(key, String(value));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  let drawn = ""; // the counts the chart shows: it is drawn again only when they change
  function renderChart() {
    if (!today) return;
    const signature = JSON.stringify(today.hours.map((h) => [h.label, h.answered, h.missed]));
    if (signature === drawn) return;
    drawn = signature;
    const box = document.getElementById("chart");
    const words = { answered: box.dataset.answeredLabel, missed: box.dataset.missedLabel };
    const tallest = Math.max(1, ...today.hours.flatMap((h) => [h.answered, h.missed]));
    const width = today.hours.length * SLOT;
    const chart = svg("svg", { viewBox: `0 0 ${width} ${PLOT + 30}`, role: "img", "aria-labelledby": "chart-heading" });
    const pattern = svg("pattern", { id: "hatch", patternUnits: "userSpaceOnUse", width: 4, height: 4 });
    pattern.appendChild(svg("path", { class: "hatch", d: "M0,4 L4,0" }));
    chart.appendChild(svg("defs", {})).appendChild(pattern);
    chart.appendChild(svg("line", { class: "axis", x1: 0, y1: PLOT, x2: width, y2: PLOT }));
    today.hours.forEach((hour, n) => {
      const x = n * SLOT + (SLOT - 2 * BAR) / 2;
      [["answered", 0], ["missed", BAR]].forEach(([kind, offset]) => {
        const height = Math.round(hour[kind] * PLOT / tallest);
        const bar = svg("rect", { class: `bar bar-${kind}`, x: x + offset, y: PLOT - height, width: BAR, height,
          ...(kind === "missed" ? { fill: "url(#hatch)" } : {}) }); // hatched: not told by its colour alone
        bar.appendChild(svg("title", {}, `${hour.label}:00 — ${hour[kind]} ${words[kind]}`));
        chart.appendChild(bar);
      });
      if (n % 2 === 0) chart.appendChild(svg("text", { class: "hour", x: n * SLOT + SLOT / 2, y: PLOT + 18, "text-anchor": "middle" }, hour.label));
    });
    box.replaceChildren(chart);
    setText("chart-scale", interpolate(gettext("Top of the scale: %(tallest)s"), { tallest }));
    renderRows(document.getElementById("hours"), today.hours, (h) => h.start, (tr, hour) => {
      if (!tr.children.length) {
        const th = document.createElement("th");
        th.scope = "row";
        tr.appendChild(th);
      }
      tr.children[0].textContent = `${hour.label}:00`;
      cell(tr, 1, hour.answered, "num");
      cell(tr, 2, hour.missed, "num");
    });
  }

  function render() {
    const now = Date.now();
    renderFigures(now);
    renderAgents(now);
    renderCalls(now);
    renderChart();
  }

  // --- wiring -------------------------------------------------------------------------
  if (document.body.dataset.page !== "wallboard") return;
  document.addEventListener("ctihub:message", (event) => {
    const message = event.detail;
    if (message.type === "snapshot") onSnapshot(message);
    else if (message.type === "card") onCard(message.card);
    else if (message.type === "agent_status" && agents.has(message.agent)) agents.get(message.agent).status = message.status;
  });
  document.addEventListener("ctihub:calls", (event) => {
    cards = event.detail.calls;
    render();
  });
  setInterval(render, 1000); // the durations tick
})();
