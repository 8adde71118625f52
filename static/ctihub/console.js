// ctihub console and wallboard. Plain JavaScript, no build step.
//
// The server is the truth: on every (re)connect it sends a snapshot, which
// replaces what the page shows; live cards then update it. Every card has a
// version, so an update older than the one shown is dropped, and cards are
// keyed by call id, so a reload or a reconnect never shows a call twice.
"use strict";

(function () {
  // Codes after which retrying cannot help. Any other code reconnects with backoff, 4013 among them
  // (the server's "try again later": a snapshot it could not send in time).
  const CLOSE_REASONS = {
    4401: "Your session has ended. Log in again to see your calls.",
    4403: "This page was opened from a site that is not ctihub, so the live feed was refused.",
    4400: "Your account is not set up as an agent. Ask your admin.",
  };
  const ACTION_LABELS = {
    answer: "Answer", hold: "Hold", resume: "Resume", redirect: "Transfer…", transfer: "Connect to…",
    merge: "Merge with…", add_party: "Add party…", send_dtmf: "Keypad", hangup: "Hang up", leave: "Leave",
    // Telepo's own actions.
    alternate: "Swap calls", park: "Park", pickup: "Pick up", mute: "Mute", unmute: "Unmute",
    move: "Move to device…", conference_add: "Conference with…",
  };
  ACTION_LABELS.conference_remove = "Remove party…"; // Telepo: a conference's card (controls.remove_party)
  const STATE_LABELS = { ringing: "Ringing", dialing: "Dialling", talking: "Talking", held: "On hold", ended: "Ended" };

  // The state, and the PBX's own word when it sent one we do not know (the call stays in its last known state).
  function stateText(card) {
    const label = STATE_LABELS[card.state] || card.state;
    return card.pbx_state ? `${label} (PBX: ${card.pbx_state})` : label;
  }

  const calls = new Map(); // call id -> card
  let agents = new Map();
  let missedToday = 0;
  let me = null;
  let socket = null;
  let requestSeq = 0;
  const pending = new Map();
  let controls = {}; // account id -> what its PBX's call control offers (console.controls in the snapshot)

  // --- connection ------------------------------------------------------------------
  const SNAPSHOT_TIMEOUT_MS = 10000;
  let attempt = 0;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    setConnection("connecting", attempt ? "Reconnecting…" : "Connecting…");
    socket = new WebSocket(`${scheme}://${location.host}/ws/console/`);
    const opened = socket;
    // A server that accepted us but never sends the snapshot (its channel layer stuck) is no
    // connection at all: drop it and reconnect, as for any other loss.
    let snapshotTimer = null;
    opened.addEventListener("open", () => {
      setConnection("connecting", "Loading…");
      snapshotTimer = setTimeout(() => opened.close(), SNAPSHOT_TIMEOUT_MS);
    });
    opened.addEventListener("message", (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "snapshot" && snapshotTimer !== null) {
        clearTimeout(snapshotTimer);
        snapshotTimer = null;
        attempt = 0;
        setConnection("live", "Live");
      }
      handle(message);
    });
    opened.addEventListener("close", (event) => {
      clearTimeout(snapshotTimer);
      if (CLOSE_REASONS[event.code]) {
        setConnection("refused", CLOSE_REASONS[event.code]);
        return; // retrying cannot help
      }
      const delay = Math.min(30000, 500 * 2 ** attempt) * (0.5 + Math.random() / 2);
      attempt += 1;
      setConnection("offline", `Connection lost. Retrying in ${Math.round(delay / 1000)} s…`);
      setTimeout(connect, delay);
    });
  }

  function setConnection(state, text) {
    const el = document.getElementById("connection");
    if (!el) return;
    el.dataset.state = state;
    el.textContent = text;
  }

  function send(message) {
    return new Promise((resolve) => {
      if (!socket || socket.readyState !== WebSocket.OPEN) {
        resolve({ ok: false, error: "not connected; try again in a moment" });
        return;
      }
      const id = ++requestSeq;
      pending.set(id, resolve);
      socket.send(JSON.stringify({ ...message, id }));
    });
  }

  // --- messages ----------------------------------------------------------------------
  function handle(message) {
    document.dispatchEvent(new CustomEvent("ctihub:message", { detail: message })); // for voicemail.js and the like
    if (message.type === "snapshot") {
      me = message.me;
      calls.clear();
      for (const card of message.calls) calls.set(card.id, card);
      if (message.agents) agents = new Map(message.agents.map((a) => [a.id, a]));
      if (typeof message.missed_today === "number") missedToday = message.missed_today;
      controls = message.controls || {};
      render();
    } else if (message.type === "card") {
      applyCard(message.card);
    } else if (message.type === "agent_status") {
      const agent = agents.get(message.agent);
      if (agent) agent.status = message.status;
      if (me && me.id === message.agent) {
        me.status = message.status;
        const select = document.getElementById("status");
        if (select) select.value = message.status;
      }
      render();
    } else if (message.type === "result") {
      const resolve = pending.get(message.id);
      pending.delete(message.id);
      if (resolve) resolve(message);
    }
  }

  function applyCard(card) {
    const shown = calls.get(card.id);
    if (shown && shown.version >= card.version) return; // stale or repeated
    const becameMissed = card.state === "ended" && !card.answered && card.direction === "in" &&
      (!shown || shown.state !== "ended");
    if (becameMissed) missedToday += 1;
    calls.set(card.id, card);
    render();
  }

  // --- rendering ----------------------------------------------------------------------
  function render() {
    if (document.body.dataset.page === "console") renderConsole();
    if (document.body.dataset.page === "wallboard") renderWallboard();
    // Every card as this page now holds it (snapshot and versions applied): for alerts.js and the like.
    document.dispatchEvent(new CustomEvent("ctihub:calls", { detail: { calls: [...calls.values()], me } }));
  }

  function renderConsole() {
    const live = [...calls.values()].filter((c) => c.state !== "ended").sort(byCreated);
    const ended = [...calls.values()].filter((c) => c.state === "ended").sort((a, b) => (b.ended_at || "").localeCompare(a.ended_at || ""));
    const container = document.getElementById("cards");
    const keep = new Set(live.map((c) => String(c.id)));
    for (const el of [...container.children]) if (!keep.has(el.dataset.call)) el.remove();
    for (const card of live) {
      let el = container.querySelector(`[data-call="${card.id}"]`);
      if (!el) {
        el = buildCard(card);
        container.appendChild(el);
      }
      fillCard(el, card);
    }
    document.getElementById("no-calls").hidden = live.length > 0;
    const recent = document.getElementById("recent");
    recent.replaceChildren(...ended.slice(0, 20).map(summaryItem));
  }

  function buildCard(card) {
    const el = document.createElement("article");
    el.className = "card";
    el.dataset.call = card.id;
    el.setAttribute("aria-label", "Call");
    el.innerHTML = `
      <header><span class="direction"></span><span class="state"></span><span class="timer" aria-label="Duration"></span></header>
      <p class="number"></p><p class="label"></p><p class="shop"></p><p class="crm"></p>
      <div class="actions" role="group" aria-label="Call actions"></div>
      <p class="card-error" role="alert"></p>`;
    return el;
  }

  function fillCard(el, card) {
    el.dataset.state = card.state;
    el.dataset.version = card.version;
    el.querySelector(".direction").textContent = card.direction === "in" ? "Incoming" : "Outgoing";
    el.querySelector(".state").textContent = stateText(card);
    el.querySelector(".number").textContent = card.remote_number_display || card.remote_number || "Unknown number";
    el.querySelector(".label").textContent = card.remote_label || "";
    el.querySelector(".shop").textContent = card.external_phone ? `Shop line ${card.site_code || card.external_phone}` : "";
    fillCrm(el.querySelector(".crm"), card.crm);
    el.querySelector(".timer").textContent = timerText(card);
    const actions = el.querySelector(".actions");
    // A stable order (the labels' order), whatever order the PBX lists them in.
    const allowed = Object.keys(ACTION_LABELS).filter((a) => (card.actions || []).includes(a) && offered(card, a));
    if (actions.dataset.actions !== allowed.join(",")) {
      actions.dataset.actions = allowed.join(",");
      actions.replaceChildren(...allowed.map((a) => actionButton(card.id, a)));
    }
  }

  const CRM_LINK_LABELS = {
    customerLink: "Customer in retailCRM", newCustomerLink: "New customer", newOrderLink: "New order",
    lastOrderLink: "Last order",
  };

  // retailCRM's manager lookup: the customer (an object), and links to open in the CRM.
  function fillCrm(el, crm) {
    const customer = crm && crm.customer;
    const name = customer ? [customer.firstName, customer.lastName].filter(Boolean).join(" ") || `Customer #${customer.id}` : "";
    const links = Object.entries((crm && crm.links) || {}).filter(([key, url]) => CRM_LINK_LABELS[key] && /^https?:/.test(url));
    const signature = JSON.stringify([name, links]);
    if (el.dataset.signature === signature) return;
    el.dataset.signature = signature;
    const parts = [];
    if (name) {
      const strong = document.createElement("strong");
      strong.className = "customer";
      strong.textContent = name;
      parts.push(strong);
    }
    for (const [key, url] of links) {
      const a = document.createElement("a");
      a.href = url;
      a.target = "_blank";
      a.rel = "noopener";
      a.dataset.link = key;
      a.textContent = CRM_LINK_LABELS[key];
      parts.push(document.createTextNode(" "), a);
    }
    el.replaceChildren(...parts);
  }

  function actionButton(callId, action) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = ACTION_LABELS[action];
    button.dataset.action = action;
    button.addEventListener("click", () => runAction(callId, action, button));
    return button;
  }

  async function runAction(callId, action, button) {
    let payload = {};
    const card = calls.get(callId);
    if (action === "redirect" && card && (pbxControls(card).transfer_types.length || pbxControls(card).blind_transfer)) {
      payload = await chooseTransfer(card);
      if (!payload) return;
    } else if (action === "redirect" || action === "add_party") {
      const destination = prompt("Number or extension to " + (action === "redirect" ? "transfer to" : "add"));
      if (!destination) return;
      payload.destination = destination;
    } else if (action === "move") {
      const device = prompt("Device to move the call to");
      if (!device) return;
      payload.device_id = device;
    } else if (action === "transfer" || action === "merge" || action === "conference_add") {
      const others = card ? otherCalls(card) : [];
      if (!others.length) { showCardError(callId, gettext("You need a second call for that.")); return; }
      // With one other call there is nothing to choose; with several the agent says which.
      const other = others.length === 1 ? others[0] : await chooseCall(card, action, others);
      if (!other) return;
      payload.call = other.id;
    } else if (action === "conference_remove") {
      const party = card ? await chooseParty(card) : null;
      if (!party) return;
      payload.party = party.id;
    } else if (action === "send_dtmf") {
      openKeypad(callId);
      return;
    }
    button.disabled = true;
    const result = await send({ action: "call_action", call: callId, name: action, payload });
    button.disabled = false;
    showCardError(callId, result.ok ? "" : result.error);
  }

  // --- call control choices: the other call, the party to remove, how to transfer ---------------------
  // Django's JavaScript catalog defines gettext globally; until a page loads it, the text as is (an assignment,
  // not a declaration: a gettext of this script's own would take precedence, and not clash).
  if (!window.gettext) window.gettext = (text) => text;
  // Read when shown, not when this script runs: the catalog may come later.
  function transferTypeLabel(value) {
    const labels = {
      BASIC: gettext("Basic"), VOICEMAIL: gettext("To their voicemail"), CAMP_ON: gettext("Camp on (wait until free)"),
      DIVERSION_BYPASS: gettext("Bypass their diversions"),
    };
    return labels[value] || value;
  }

  function pbxControls(card) {
    const found = controls[String(card.account)] || {};
    return { transfer_types: found.transfer_types || [], blind_transfer: !!found.blind_transfer,
      remove_party: !!found.remove_party };
  }

  // Whether the card offers ``action``: the PBX allows it now and ctihub can drive it on that PBX.
  function offered(card, action) {
    return action !== "conference_remove" || pbxControls(card).remove_party;
  }

  // The agent's other live calls on the same PBX account: the only ones a transfer or a merge can join.
  function otherCalls(card) {
    return [...calls.values()].filter((c) => c.id !== card.id && c.state !== "ended" &&
      c.account === card.account && c.agent === card.agent).sort(byCreated);
  }

  // The conference's other parties: Telepo lists a conference's participants by call id (its legs), and
  // every leg in the conference offers conference_remove.
  function conferenceParties(card) {
    return otherCalls(card).filter((c) => (c.actions || []).includes("conference_remove"));
  }

  function callText(c) {
    const number = c.remote_number_display || c.remote_number || gettext("Unknown number");
    return [number, c.remote_label, stateText(c)].filter(Boolean).join(" · ");
  }

  // A modal dialog built by ``fill(body, done)``; resolves with what ``done`` was given, or null (cancelled).
  function openCallDialog(title, fill) {
    let dialog = document.getElementById("call-dialog");
    if (!dialog) {
      dialog = document.createElement("dialog");
      dialog.id = "call-dialog";
      dialog.className = "call-dialog";
      document.body.appendChild(dialog);
    }
    if (dialog.open) dialog.close(); // the one before is cancelled
    return new Promise((resolve) => {
      let chosen = null;
      const heading = document.createElement("h3");
      heading.textContent = title;
      const body = document.createElement("div");
      body.className = "choices";
      const cancel = document.createElement("button");
      cancel.type = "button";
      cancel.className = "cancel";
      cancel.textContent = gettext("Cancel");
      cancel.addEventListener("click", () => dialog.close());
      fill(body, (value) => { chosen = value; dialog.close(); });
      dialog.setAttribute("aria-label", title);
      dialog.replaceChildren(heading, body, cancel);
      dialog.addEventListener("close", () => resolve(chosen), { once: true });
      dialog.showModal();
    });
  }

  function choiceList(body, items, label, done) {
    const list = document.createElement("ul");
    for (const c of items) {
      const li = document.createElement("li");
      const text = document.createElement("span");
      text.textContent = callText(c);
      const pick = document.createElement("button");
      pick.type = "button";
      pick.dataset.choice = c.id;
      pick.textContent = label;
      pick.setAttribute("aria-label", `${label}: ${callText(c)}`);
      pick.addEventListener("click", () => done(c));
      li.append(text, " ", pick);
      list.appendChild(li);
    }
    body.appendChild(list);
  }

  function chooseCall(card, action, others) {
    const titles = { transfer: gettext("Connect this call to which call?"), merge: gettext("Merge with which call?"),
      conference_add: gettext("Conference with which call?") };
    return openCallDialog(titles[action], (body, done) => choiceList(body, others, gettext("Choose"), done));
  }

  function chooseParty(card) {
    const parties = conferenceParties(card);
    return openCallDialog(gettext("Remove whom from the conference?"), (body, done) => {
      if (!parties.length) {
        const none = document.createElement("p");
        none.textContent = gettext("No other party of this conference is shown here.");
        body.appendChild(none);
        return;
      }
      choiceList(body, parties, gettext("Remove"), done);
    });
  }

  // Transfer to a number where the PBX lets the agent say how (Telepo's blind flag and transfer type).
  function chooseTransfer(card) {
    const offer = pbxControls(card);
    return openCallDialog(gettext("Transfer to a number"), (body, done) => {
      const form = document.createElement("form");
      form.className = "transfer";
      const number = document.createElement("input");
      number.name = "destination";
      number.required = true;
      number.inputMode = "tel";
      number.autocomplete = "off";
      const numberLabel = document.createElement("label");
      numberLabel.append(gettext("Number or extension"), " ", number);
      form.appendChild(numberLabel);
      let type = null;
      if (offer.transfer_types.length) {
        type = document.createElement("select");
        type.name = "type";
        for (const value of offer.transfer_types) type.add(new Option(transferTypeLabel(value), value));
        const typeLabel = document.createElement("label");
        typeLabel.append(gettext("Transfer type"), " ", type);
        form.appendChild(typeLabel);
      }
      let blind = null;
      if (offer.blind_transfer) {
        blind = document.createElement("input");
        blind.type = "checkbox";
        blind.name = "blind";
        const blindLabel = document.createElement("label");
        blindLabel.append(blind, " ", gettext("Blind: drop my call as soon as the transfer starts"));
        form.appendChild(blindLabel);
      }
      const submit = document.createElement("button");
      submit.type = "submit";
      submit.textContent = gettext("Transfer");
      form.appendChild(submit);
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const payload = { destination: number.value.trim() };
        if (!payload.destination) return;
        if (type) payload.type = type.value;
        if (blind) payload.blind = blind.checked;
        done(payload);
      });
      body.appendChild(form);
      setTimeout(() => number.focus(), 0);
    });
  }

  function showCardError(callId, text) {
    const el = document.querySelector(`[data-call="${callId}"] .card-error`);
    if (el) el.textContent = text || "";
  }

  function openKeypad(callId) {
    const dialog = document.getElementById("keypad");
    dialog.dataset.call = callId;
    dialog.showModal();
  }

  function summaryItem(card) {
    const li = document.createElement("li");
    const outcome = card.answered ? `answered, talked ${formatDuration((card.talking_ms || 0) / 1000)}` : "missed";
    li.textContent = `${card.direction === "in" ? "From" : "To"} ${card.remote_number_display || card.remote_number || "unknown"}` +
      `${card.remote_label ? " (" + card.remote_label + ")" : ""}: ${outcome}`;
    li.dataset.call = card.id;
    li.className = card.answered ? "answered" : "missed";
    return li;
  }

  function renderWallboard() {
    const live = [...calls.values()].filter((c) => c.state !== "ended").sort(byCreated);
    for (const state of ["ringing", "talking", "held"]) {
      document.getElementById(`count-${state}`).textContent = live.filter((c) => c.state === state || (state === "ringing" && c.state === "dialing")).length;
    }
    document.getElementById("count-missed").textContent = missedToday;
    const rows = live.map((c) => row([stateText(c), c.direction === "in" ? "In" : "Out",
      c.remote_number_display || c.remote_number || "?", agentName(c.agent), timerText(c)], c.id));
    document.getElementById("calls").replaceChildren(...rows);
    const agentRows = [...agents.values()].map((a) => {
      const current = live.find((c) => c.agent === a.id);
      return row([a.name, a.code, a.status, current ? `${stateText(current)} ${current.remote_number_display || ""}` : "—"]);
    });
    document.getElementById("agents").replaceChildren(...agentRows);
  }

  function row(cells, callId) {
    const tr = document.createElement("tr");
    if (callId) tr.dataset.call = callId;
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text == null ? "" : String(text);
      tr.appendChild(td);
    }
    return tr;
  }

  function agentName(id) {
    const agent = agents.get(id);
    return agent ? agent.name : "—";
  }

  // --- timers -------------------------------------------------------------------------
  function timerText(card) {
    const since = Date.parse(card.answered_at || card.created_at);
    return formatDuration(Math.max(0, (Date.now() - since) / 1000));
  }

  function formatDuration(seconds) {
    const s = Math.floor(seconds);
    const m = Math.floor(s / 60);
    return `${m}:${String(s % 60).padStart(2, "0")}`;
  }

  function tick() {
    for (const el of document.querySelectorAll(".card")) {
      const card = calls.get(Number(el.dataset.call));
      if (card) el.querySelector(".timer").textContent = timerText(card);
    }
    if (document.body.dataset.page === "wallboard") renderWallboard();
  }

  const byCreated = (a, b) => a.created_at.localeCompare(b.created_at);

  // --- page controls ------------------------------------------------------------------
  function wireControls() {
    const status = document.getElementById("status");
    if (status) {
      status.addEventListener("change", async () => {
        const result = await send({ action: "set_status", status: status.value });
        notice(result.ok ? `Status set to ${status.value}.` : result.error);
      });
    }
    const dial = document.getElementById("dial");
    if (dial) {
      dial.addEventListener("submit", async (event) => {
        event.preventDefault();
        const number = dial.elements.number.value;
        const result = await send({ action: "dial", number });
        notice(result.ok ? `Calling ${number}…` : result.error);
      });
    }
    const keypad = document.getElementById("keypad");
    if (keypad) {
      keypad.querySelectorAll(".keys button").forEach((button) => button.addEventListener("click", async () => {
        const result = await send({ action: "call_action", call: Number(keypad.dataset.call), name: "send_dtmf",
          payload: { digits: button.value } });
        if (!result.ok) showCardError(Number(keypad.dataset.call), result.error);
      }));
    }
  }

  function notice(text) {
    const el = document.getElementById("notice");
    if (el) el.textContent = text || "";
  }

  document.addEventListener("DOMContentLoaded", () => {
    wireControls();
    connect();
    setInterval(tick, 1000);
  });
})();
