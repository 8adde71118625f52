// ctihub console and wallboard. Plain JavaScript, no build step.
//
// The server is the truth: on every (re)connect it sends a snapshot, which
// replaces what the page shows; live cards then update it. Every card has a
// version, so an update older than the one shown is dropped, and cards are
// keyed by call id, so a reload or a reconnect never shows a call twice.
"use strict";

(function () {
  // Django's catalog or static/ctihub/i18n.js (base.html loads one of them before this file) defines both.
  const gettext = (text) => window.gettext(text);
  const interpolate = (format, values) => window.interpolate(format, values, true);

  // Codes after which retrying cannot help. Any other code reconnects with backoff, 4013 among them
  // (the server's "try again later": a snapshot it could not send in time).
  const CLOSE_REASONS = {
    4401: gettext("Your session has ended. Log in again to see your calls."),
    4403: gettext("This page was opened from a site that is not ctihub, so the live feed was refused."),
    4400: gettext("Your account is not set up as an agent. Ask your admin."),
  };
  const ACTION_LABELS = {
    answer: gettext("Answer"), hold: gettext("Hold"), resume: gettext("Resume"), redirect: gettext("Transfer…"),
    transfer: gettext("Connect to…"), merge: gettext("Merge with…"), add_party: gettext("Add party…"),
    send_dtmf: gettext("Keypad"), hangup: gettext("Hang up"), leave: gettext("Leave"),
    // Telepo's own actions.
    alternate: gettext("Swap calls"), park: gettext("Park"), pickup: gettext("Pick up"), mute: gettext("Mute"),
    unmute: gettext("Unmute"), move: gettext("Move to device…"), conference_add: gettext("Conference with…"),
  };
  const STATE_LABELS = {
    ringing: gettext("Ringing"), dialing: gettext("Dialling"), talking: gettext("Talking"), held: gettext("On hold"),
    ended: gettext("Ended"),
  };

  const STATUS_LABELS = { free: gettext("Free"), busy: gettext("Busy"), dinner: gettext("Dinner"), break: gettext("Break") };
  ACTION_LABELS.conference_remove = gettext("Remove party…"); // Telepo: a conference's card (controls.remove_party)

  // The state, and the PBX's own word when it sent one we do not know (the call stays in its last known state).
  function stateText(card) {
    const label = STATE_LABELS[card.state] || card.state;
    return card.pbx_state ? interpolate(gettext("%(state)s (PBX: %(pbx_state)s)"), { state: label, pbx_state: card.pbx_state }) : label;
  }

  const calls = new Map(); // call id -> card
  let me = null;
  let socket = null;
  let requestSeq = 0;
  const pending = new Map();
  let controls = {}; // account id -> what its PBX's call control offers (console.controls in the snapshot)

  // --- connection ------------------------------------------------------------------
  const SNAPSHOT_TIMEOUT_MS = 10000;
  // Keep-alive: once it has its snapshot the page pings every pingEveryMs and drops the socket when the
  // pong is not back within pongWithinMs. A web process that hangs rather than dies (stopped, its loop
  // stuck) keeps its sockets open and the page would wait for cards forever; with these, it is noticed
  // within 7 s and the page is on another process with its snapshot within 10 s. 4 s, not less: in a
  // connect storm of 1,000 consoles a healthy daphne's pongs took up to 3 s (bench.popup_latency
  // --keepalive-storm), and a page that drops a healthy socket adds to the storm. A ping costs daphne about
  // what a card does, hence not more often. The consumer answers without a database query
  // (telephony/consumers.py, PING). window.ctihubKeepAlive (set before this script) overrides them;
  // { pingEveryMs: 0 } turns the keep-alive off (the tests check it is what saves a page).
  const KEEP_ALIVE = { pingEveryMs: 3000, pongWithinMs: 4000, ...(window.ctihubKeepAlive || {}) };
  const PING = '{"type":"ping"}';
  let pingNow = () => {}; // the live socket's ping
  // A hidden tab's timers are slowed by the browser (to once a minute after a while, in Chromium): when the
  // agent comes back to it, its socket is checked at once rather than at its next slowed tick.
  document.addEventListener("visibilitychange", () => { if (!document.hidden) pingNow(); });
  let attempt = 0;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    setConnection("connecting", attempt ? gettext("Reconnecting…") : gettext("Connecting…"));
    socket = new WebSocket(`${scheme}://${location.host}/ws/console/`);
    const opened = socket;
    // A server that accepted us but never sends the snapshot (its channel layer stuck) is no
    // connection at all: drop it and reconnect, as for any other loss.
    let snapshotTimer = null;
    let pingTimer = null;
    let pongTimer = null;
    // This socket is done with (closed, or given up on): the page reconnects, once. Given up on, it is closed
    // without waiting for its close event: a hung server never completes the closing handshake and the
    // browser waits a minute or more for it. Whatever it still delivers later is ignored.
    function lost(code) {
      if (socket !== opened) return;
      socket = null;
      clearTimeout(snapshotTimer);
      clearInterval(pingTimer);
      clearTimeout(pongTimer);
      if (CLOSE_REASONS[code]) {
        setConnection("refused", CLOSE_REASONS[code]);
        return; // retrying cannot help
      }
      if (opened.readyState !== WebSocket.CLOSED) opened.close();
      const delay = Math.min(30000, 500 * 2 ** attempt) * (0.5 + Math.random() / 2);
      attempt += 1;
      setConnection("offline", interpolate(gettext("Connection lost. Retrying in %(seconds)s s…"), { seconds: Math.round(delay / 1000) }));
      setTimeout(connect, delay);
    }
    function ping() {
      if (socket !== opened || pongTimer !== null) return; // given up, or the last ping's timer is running
      opened.send(PING);
      pongTimer = setTimeout(() => lost(), KEEP_ALIVE.pongWithinMs);
    }
    function keepAlive() {
      if (!(KEEP_ALIVE.pingEveryMs > 0)) return;
      pingTimer = setInterval(ping, KEEP_ALIVE.pingEveryMs);
      pingNow = ping;
    }
    opened.addEventListener("open", () => {
      if (socket !== opened) return;
      setConnection("connecting", gettext("Loading…"));
      snapshotTimer = setTimeout(() => lost(), SNAPSHOT_TIMEOUT_MS);
    });
    opened.addEventListener("message", (event) => {
      if (socket !== opened) return; // given up on: its process came back, but the page has moved on
      const message = JSON.parse(event.data);
      if (message.type === "pong") {
        clearTimeout(pongTimer);
        pongTimer = null;
        return;
      }
      if (message.type === "snapshot" && snapshotTimer !== null) {
        clearTimeout(snapshotTimer);
        snapshotTimer = null;
        attempt = 0;
        setConnection("live", gettext("Live"));
        keepAlive();
      }
      handle(message);
    });
    opened.addEventListener("close", (event) => lost(event.code));
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
        resolve({ ok: false, error: gettext("not connected; try again in a moment") });
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
      controls = message.controls || {};
      render();
    } else if (message.type === "card") {
      applyCard(message.card);
    } else if (message.type === "agent_status") {
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
    calls.set(card.id, card);
    render();
  }

  // --- rendering ----------------------------------------------------------------------
  function render() {
    if (document.body.dataset.page === "console") renderConsole();
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
    el.setAttribute("aria-label", gettext("Call"));
    el.innerHTML = `
      <header><span class="direction"></span><span class="state"></span><span class="timer"></span></header>
      <p class="number"></p><p class="label"></p><p class="shop"></p><p class="crm"></p>
      <div class="actions" role="group"></div>
      <p class="card-error" role="alert"></p>`;
    // Attributes set apart from the markup: a translation is text, never HTML.
    el.querySelector(".timer").setAttribute("aria-label", gettext("Duration"));
    el.querySelector(".actions").setAttribute("aria-label", gettext("Call actions"));
    return el;
  }

  function fillCard(el, card) {
    el.dataset.state = card.state;
    el.dataset.version = card.version;
    el.querySelector(".direction").textContent = card.direction === "in" ? gettext("Incoming") : gettext("Outgoing");
    el.querySelector(".state").textContent = stateText(card);
    el.querySelector(".number").textContent = card.remote_number_display || card.remote_number || gettext("Unknown number");
    el.querySelector(".label").textContent = card.remote_label || "";
    const crmShop = card.crm && card.crm.shop; // the shop retailCRM knows the call is about
    el.querySelector(".shop").textContent = crmShop ? interpolate(gettext("Shop %(shop)s"), { shop: crmShop })
      : card.external_phone ? interpolate(gettext("Shop line %(shop)s"), { shop: card.site_code || card.external_phone }) : "";
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
    customerLink: gettext("Customer in retailCRM"), newCustomerLink: gettext("New customer"),
    newOrderLink: gettext("New order"), lastOrderLink: gettext("Last order"),
  };

  // retailCRM's manager lookup: the customer (an object), and links to open in the CRM.
  function fillCrm(el, crm) {
    const customer = crm && crm.customer;
    const name = customer ? [customer.firstName, customer.lastName].filter(Boolean).join(" ") || interpolate(gettext("Customer #%(id)s"), { id: customer.id }) : "";
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
      const destination = prompt(action === "redirect" ? gettext("Number or extension to transfer to")
        : gettext("Number or extension to add"));
      if (!destination) return;
      payload.destination = destination;
    } else if (action === "move") {
      const device = prompt(gettext("Device to move the call to"));
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

  // A recent call: its time, who and how it ended, and a call-back button (the console's own "dial").
  function summaryItem(card) {
    const li = document.createElement("li");
    const time = document.createElement("time");
    time.dateTime = card.created_at;
    time.textContent = new Date(card.created_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const text = document.createElement("span");
    const outcome = card.answered
      ? interpolate(gettext("answered, talked %(duration)s"), { duration: formatDuration((card.talking_ms || 0) / 1000) })
      : gettext("missed");
    const number = card.remote_number_display || card.remote_number || gettext("unknown");
    const who = card.remote_label ? `${number} (${card.remote_label})` : number;
    text.textContent = ` ${interpolate(card.direction === "in" ? gettext("From %(who)s: %(outcome)s")
      : gettext("To %(who)s: %(outcome)s"), { who, outcome })} `;
    li.append(time, text);
    if (me && card.remote_number) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "call-back";
      button.textContent = gettext("Call back");
      button.addEventListener("click", async () => {
        button.disabled = true;
        await dial(card.remote_number, card.remote_number_display);
        button.disabled = false;
      });
      li.append(button);
    }
    li.dataset.call = card.id;
    li.className = card.answered ? "answered" : "missed";
    return li;
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
  }

  const byCreated = (a, b) => a.created_at.localeCompare(b.created_at);

  // --- page controls ------------------------------------------------------------------
  function wireControls() {
    const status = document.getElementById("status");
    if (status) {
      status.addEventListener("change", async () => {
        const result = await send({ action: "set_status", status: status.value });
        notice(result.ok ? interpolate(gettext("Status set to %(status)s."), { status: STATUS_LABELS[status.value] || status.value })
          : result.error);
      });
    }
    const dial = document.getElementById("dial");
    if (dial) {
      dial.addEventListener("submit", async (event) => {
        event.preventDefault();
        const number = dial.elements.number.value;
        const result = await send({ action: "dial", number });
        notice(result.ok ? interpolate(gettext("Calling %(number)s…"), { number }) : result.error);
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

  // Another script asks to dial a number from the agent's phone (voicemail.js: call a caller back), on this
  // socket like the recent calls' "Call back"; the result shows in the same notice.
  document.addEventListener("ctihub:dial", async (event) => {
    const number = event.detail && event.detail.number;
    if (!number) return;
    const result = await dial(number);
    if (event.detail.done) event.detail.done(result);
  });

  // Dial a number from the agent's phone and say so in the notice (shown as ``display`` when given).
  async function dial(number, display) {
    const result = await send({ action: "dial", number });
    notice(result.ok ? interpolate(gettext("Calling %(number)s…"), { number: display || number }) : result.error);
    return result;
  }

  // Another script asks for a fresh snapshot on the open socket (wallboard.js: today's figures at midnight).
  document.addEventListener("ctihub:refresh", async () => {
    const result = await send({ action: "snapshot" });
    if (result.ok && result.result && result.result.type === "snapshot") handle(result.result);
  });

  document.addEventListener("DOMContentLoaded", () => {
    wireControls();
    connect();
    setInterval(tick, 1000);
  });
})();
