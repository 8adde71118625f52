// The agent's voicemail on the console (Istra End User API). Plain JavaScript, no build step.
//
// console.js owns the websocket and re-dispatches every message it receives as a
// "ctihub:message" DOM event; this file only listens for "counters" (the live
// unread counts the PBX pushes) and "snapshot" (a reconnect: read the list again).
// The list itself and every action go through the /enduser/ endpoints.
"use strict";

(function () {
  // Django's catalog or static/ctihub/i18n.js (base.html loads one of them before this file) defines both.
  const gettext = (text) => window.gettext(text);
  const interpolate = (format, values) => window.interpolate(format, values, true);

  let section = null;
  let lastUnread = null;
  let loading = null;
  let loadAgain = false;

  function csrfToken() {
    const input = section.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  async function post(url, body) {
    try {
      const response = await fetch(url, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
        body: JSON.stringify(body || {}),
      });
      const data = await response.json().catch(() => ({ ok: false, error: `HTTP ${response.status}` }));
      return response.ok ? data : { ok: false, error: data.error || `HTTP ${response.status}` };
    } catch (error) {
      return { ok: false, error: gettext("ctihub cannot be reached; try again") };
    }
  }

  function showError(text) {
    section.querySelector("#vm-error").textContent = text || "";
  }

  function load() {
    // One request at a time: a burst of counter frames must not start a burst of PBX calls. But a
    // request asked for while one is in flight runs once more after it: the one in flight may have
    // read the PBX before the voicemail that asked for it, and would leave the list without it.
    if (loading) { loadAgain = true; return loading; }
    loading = fetch(section.dataset.listUrl, { credentials: "same-origin" })
      .then((response) => response.json())
      .then((data) => render(data.boxes || []))
      .catch(() => showError(gettext("Could not load your voicemail.")))
      .finally(() => {
        loading = null;
        if (loadAgain) { loadAgain = false; load(); }
      });
    return loading;
  }

  function render(boxes) {
    section.hidden = boxes.length === 0;
    const voicemails = boxes.flatMap((box) => box.voicemails);
    const errors = boxes.map((box) => box.error).filter(Boolean);
    showError(errors.join(" "));
    for (const box of boxes) if (box.counters) setCounters(box.counters);
    const list = section.querySelector("#vm-list");
    list.replaceChildren(...voicemails.map(item));
    section.querySelector("#vm-empty").hidden = voicemails.length > 0;
  }

  function setCounters(counters) {
    section.querySelector("#vm-unread-voicemails").textContent = counters.unreadVoiceMails;
    section.querySelector("#vm-unread-missed").textContent = counters.unreadMissedCalls;
    section.querySelector("#vm-unread-texts").textContent = counters.unreadTextMessages;
    // Before the first list has come back (lastUnread null) a change is a change too: the first list may
    // have been read from the PBX before the voicemail these counters announce (load() then runs once more).
    const changed = lastUnread !== counters.unreadVoiceMails;
    lastUnread = counters.unreadVoiceMails;
    return changed;
  }

  function item(vm) {
    const li = document.createElement("li");
    li.dataset.voicemail = vm.id;
    li.className = vm.read ? "read" : "unread";
    const from = document.createElement("span");
    from.className = "vm-from";
    from.textContent = vm.remote_label && vm.remote_label !== vm.remote_number
      ? `${vm.remote_label} (${vm.remote_number})` : (vm.remote_number || gettext("Unknown caller"));
    const when = document.createElement("span");
    when.className = "vm-when";
    const date = vm.received_at ? new Date(vm.received_at).toLocaleString() : "";
    const length = interpolate(gettext("%(seconds)s s"), { seconds: vm.duration });
    when.textContent = `${date} · ${length}${vm.read ? "" : " · " + gettext("new")}`;
    li.append(from, when,
      button(gettext("Play"), "play", () => play(vm, li)),
      button(vm.read ? gettext("Mark unread") : gettext("Mark read"), "toggle-read", () => setRead(vm, !vm.read)));
    // The number "ready to dial to reach the caller" (the doc's callbackNumber), dialled by console.js.
    if (vm.callback_number) li.append(button(gettext("Call back"), "call-back", (event) => callBack(vm, event.target)));
    // Only a voicemail with a playNumber can be played by phone: without one the PBX would refuse it.
    if (vm.can_play_by_phone) li.append(button(gettext("Call me to hear it"), "call-me", () => callMe(vm)));
    li.append(button(gettext("Delete"), "delete", () => remove(vm)),
      link(gettext("Download (MP4)"), vm.audio.mp4), link("AU", vm.audio.au));
    return li;
  }

  function callBack(vm, target) {
    target.disabled = true;
    document.dispatchEvent(new CustomEvent("ctihub:dial", { detail: {
      number: vm.callback_number,
      done: (result) => { target.disabled = false; showError(result.ok ? "" : result.error); },
    } }));
  }

  function button(text, action, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.dataset.vmAction = action;
    b.addEventListener("click", onClick);
    return b;
  }

  function link(text, href) {
    const a = document.createElement("a");
    a.href = `${href}?dl=true`;
    a.textContent = text;
    return a;
  }

  function play(vm, li) {
    const player = section.querySelector("#vm-player");
    player.hidden = false;
    player.dataset.voicemail = vm.id;
    player.dataset.state = "loading";
    player.src = vm.audio.ogg;
    player.play().catch((error) => { player.dataset.state = "error"; showError(interpolate(gettext("Cannot play: %(error)s"), { error: error.message })); });
    if (!vm.read) setRead(vm, true);
  }

  async function setRead(vm, read) {
    const result = await post(`/enduser/voicemails/${vm.account}/${vm.id}/read`, { read });
    if (!result.ok) { showError(result.error); return; }
    load();
  }

  async function callMe(vm) {
    const result = await post(`/enduser/voicemails/${vm.account}/${vm.id}/call-me`);
    showError(result.ok ? "" : result.error);
    const notice = document.getElementById("notice");
    if (notice && result.ok) notice.textContent = interpolate(gettext("Your phone (%(terminal)s) will ring and play the message."),
      { terminal: result.terminal });
  }

  async function remove(vm) {
    // Irreversible at the PBX: the audio file is deleted too.
    if (!window.confirm(gettext("Delete this voicemail for good? This cannot be undone."))) return;
    const result = await post(`/enduser/voicemails/${vm.account}/${vm.id}/delete`, { confirm: true });
    if (!result.ok) { showError(result.error); return; }
    load();
  }

  document.addEventListener("ctihub:message", (event) => {
    if (!section) return;
    const message = event.detail || {};
    if (message.type === "counters") {
      section.hidden = false;
      if (setCounters(message)) load();
    } else if (message.type === "snapshot") {
      load(); // (re)connected: what changed while offline is on the PBX
    }
  });

  document.addEventListener("DOMContentLoaded", () => {
    section = document.getElementById("voicemail");
    if (!section) return;
    const player = section.querySelector("#vm-player");
    player.addEventListener("playing", () => { player.dataset.state = "playing"; });
    player.addEventListener("ended", () => { player.dataset.state = "ended"; });
    player.addEventListener("error", () => { player.dataset.state = "error"; showError(gettext("The audio could not be played.")); });
    load();
  });
})();
