// Alerts for a ringing call on the console. Plain JavaScript, no build step.
//
// - A desktop notification when one of the agent's incoming calls starts ringing while this tab is
//   hidden: one per call (its tag), closed when the call is answered or ends, or the tab is shown;
//   a click on it brings the tab forward.
// - An optional ring (off unless switched on), played while a call rings, tab hidden or not, as a
//   phone rings: generated with the Web Audio API, so there is no file to serve. Browsers start no
//   sound before the user has clicked in the page, so the audio is set up on a click, never on load.
// - The count of ringing calls in the tab's title.
//
// The browser's permission is asked for only from the "Enable" button: asked on load, most browsers
// refuse it without even showing the prompt, and the agent cannot tell why. The switches are the
// agent's, saved on the server (they follow the agent to another machine).
//
// console.js owns the calls: after every change it dispatches "ctihub:calls" with every card it
// holds and the agent it shows them to; this file derives from that which of the agent's calls ring.
"use strict";

(function () {
  // Django's catalog or static/ctihub/i18n.js (base.html loads one of them before this file) defines both.
  const gettext = (text) => window.gettext(text);
  const interpolate = (format, values) => window.interpolate(format, values, true);

  const RING_PERIOD_MS = 3000;
  let root = null;
  let baseTitle = document.title;
  let ringing = new Map(); // call id -> card: the agent's incoming calls ringing now
  const seen = new Set(); // calls seen ringing: each is announced once, when it starts to ring
  const shown = new Map(); // call id -> {notification, text}

  // --- the calls ---------------------------------------------------------------------
  function onCalls(detail) {
    const me = detail.me;
    const now = new Map();
    // A supervisor sees every call: only their own ring for them.
    for (const card of detail.calls) {
      if (me && card.agent === me.id && card.direction === "in" && card.state === "ringing") now.set(card.id, card);
    }
    ringing = now;
    for (const id of [...seen]) if (!now.has(id)) seen.delete(id);
    for (const id of [...shown.keys()]) if (!now.has(id)) close(id);
    for (const [id, card] of now) {
      if (!seen.has(id)) {
        seen.add(id);
        if (tabHidden()) notify(card);
      } else if (shown.has(id)) {
        notify(card); // the customer's name came after the first ring (retailCRM's lookup): same tag, no new alert
      }
    }
    showTitle();
    ring();
  }

  function tabHidden() {
    return document.hidden || document.visibilityState !== "visible";
  }

  // --- desktop notifications ---------------------------------------------------------
  function permission() {
    if (!("Notification" in window) || window.isSecureContext === false) return "unsupported";
    return window.Notification.permission; // "default", "granted" or "denied"
  }

  function callerName(card) {
    const customer = card.crm && card.crm.customer;
    const name = customer ? [customer.firstName, customer.lastName].filter(Boolean).join(" ") : "";
    return name || card.remote_label || "";
  }

  function notificationText(card) {
    const number = card.remote_number_display || card.remote_number || gettext("Unknown number");
    const name = callerName(card);
    // The shop retailCRM knows the call is about (crm_sync's enricher), else the shop's line the PBX gave.
    const crmShop = card.crm && card.crm.shop;
    const line = card.site_code || card.external_phone || "";
    const lines = [crmShop ? interpolate(gettext("Incoming call, shop %(shop)s"), { shop: crmShop })
      : line ? interpolate(gettext("Incoming call, shop line %(shop)s"), { shop: line }) : gettext("Incoming call")];
    if (name && name !== number) lines.push(number);
    return { title: name || number, body: lines.join("\n") };
  }

  function notify(card) {
    if (!switchedOn("desktop") || permission() !== "granted") return;
    const text = notificationText(card);
    const before = shown.get(card.id);
    if (before && before.text.title === text.title && before.text.body === text.body) return;
    let notification;
    try {
      // requireInteraction: left up until the call stops ringing (closed below), not faded after a few seconds.
      notification = new window.Notification(text.title, {
        body: text.body, tag: `call-${card.id}`, renotify: false, requireInteraction: true,
      });
    } catch (error) {
      return; // a browser that only notifies through a service worker (Chrome on Android): the title still counts
    }
    notification.onclick = () => {
      window.focus();
      const el = document.querySelector(`.card[data-call="${card.id}"]`);
      if (el) el.scrollIntoView({ block: "nearest" });
      notification.close();
      close(card.id);
    };
    notification.onclose = () => {
      const entry = shown.get(card.id);
      if (entry && entry.notification === notification) shown.delete(card.id);
    };
    shown.set(card.id, { notification, text }); // the one it replaces (same tag) is gone already
  }

  function close(id) {
    const entry = shown.get(id);
    shown.delete(id);
    if (entry) entry.notification.close();
  }

  function closeAll() {
    for (const id of [...shown.keys()]) close(id);
  }

  // --- the tab's title ---------------------------------------------------------------
  function showTitle() {
    const count = ringing.size;
    const title = count ? interpolate(gettext("(%(count)s) Ringing — %(title)s"), { count, title: baseTitle }) : baseTitle;
    if (document.title !== title) document.title = title;
  }

  // --- the ring ----------------------------------------------------------------------
  let audio = null; // an AudioContext, made on a click only
  let ringTimer = null;
  let tone = null;

  function prepareAudio() {
    // Called from a click (or key press): the one moment a browser lets a page start its audio.
    if (!switchedOn("sound")) return;
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) return;
    if (!audio) {
      audio = new Context();
      audio.addEventListener("statechange", ring); // running only a moment after it is made, on some browsers
    }
    if (audio.state === "suspended") audio.resume().then(ring, () => {});
    ring();
  }

  function burst() {
    // Two short rings of 440 + 480 Hz, a phone's ringback: gently ramped, so nothing clicks.
    if (!audio || audio.state !== "running") return;
    const t0 = audio.currentTime;
    const gain = audio.createGain();
    gain.gain.setValueAtTime(0, t0);
    for (const start of [0, 0.6]) {
      gain.gain.setValueAtTime(0, t0 + start);
      gain.gain.linearRampToValueAtTime(0.12, t0 + start + 0.03);
      gain.gain.setValueAtTime(0.12, t0 + start + 0.37);
      gain.gain.linearRampToValueAtTime(0, t0 + start + 0.4);
    }
    gain.connect(audio.destination);
    const oscillators = [440, 480].map((frequency) => {
      const oscillator = audio.createOscillator();
      oscillator.frequency.value = frequency;
      oscillator.connect(gain);
      oscillator.start(t0);
      oscillator.stop(t0 + 1.0);
      return oscillator;
    });
    tone = { gain, oscillators };
  }

  function silence() {
    if (!tone) return;
    for (const oscillator of tone.oscillators) {
      try { oscillator.stop(); } catch (error) { /* stopped already */ }
    }
    tone.gain.disconnect();
    tone = null;
  }

  function ring() {
    const wanted = switchedOn("sound") && ringing.size > 0;
    const playable = Boolean(audio && audio.state === "running");
    if (wanted && playable && ringTimer === null) {
      burst();
      ringTimer = setInterval(burst, RING_PERIOD_MS);
    } else if ((!wanted || !playable) && ringTimer !== null) {
      clearInterval(ringTimer);
      ringTimer = null;
      silence();
    }
    root.dataset.sound = !wanted ? "idle" : ringTimer !== null ? "ringing" : "blocked";
    root.querySelector('[data-when="sound-blocked"]').hidden = root.dataset.sound !== "blocked";
  }

  // --- the control -------------------------------------------------------------------
  function switchedOn(name) {
    const input = root && root.querySelector(`#alerts-${name}`);
    return Boolean(input && input.checked);
  }

  function showPermission() {
    const state = permission();
    root.dataset.permission = state;
    root.querySelector("#alerts-enable").hidden = state !== "default";
    for (const hint of root.querySelectorAll(".alerts-hint:not([data-when=sound-blocked])")) {
      hint.hidden = hint.dataset.when !== state;
    }
  }

  async function askPermission() {
    if (permission() !== "default") return;
    try {
      await window.Notification.requestPermission();
    } catch (error) {
      // Old Safari takes a callback and returns nothing: its answer shows on the next check below.
    }
    showPermission();
    // The button is gone: keep a keyboard user's place in the control.
    if (root.querySelector("#alerts-enable").hidden) root.querySelector("#alerts-desktop").focus();
  }

  async function save(input, field) {
    const error = root.querySelector("#alerts-error");
    error.textContent = "";
    try {
      const response = await fetch(root.dataset.saveUrl, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": root.querySelector("input[name=csrfmiddlewaretoken]").value },
        body: JSON.stringify({ [field]: input.checked }),
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
    } catch (failure) {
      input.checked = !input.checked; // as the server still has it
      error.textContent = gettext("Your choice could not be saved; try again.");
      onSwitch();
    }
  }

  function onSwitch() {
    if (!switchedOn("desktop")) closeAll();
    ring();
  }

  function wire() {
    root = document.getElementById("alerts");
    if (!root) return;
    baseTitle = document.title;
    showPermission();
    root.querySelector("#alerts-enable").addEventListener("click", askPermission);
    // The permission changed in the browser's settings while the page is open.
    if (navigator.permissions && navigator.permissions.query) {
      navigator.permissions.query({ name: "notifications" }).then((status) => {
        status.addEventListener("change", showPermission);
      }, () => {});
    }
    const desktop = root.querySelector("#alerts-desktop");
    const sound = root.querySelector("#alerts-sound");
    desktop.disabled = permission() === "unsupported";
    desktop.addEventListener("change", () => { onSwitch(); save(desktop, "desktop"); });
    sound.addEventListener("change", () => { prepareAudio(); onSwitch(); save(sound, "sound"); });
    // Any click or key in the page lets a saved "ring sound" work from then on.
    for (const type of ["pointerdown", "keydown"]) document.addEventListener(type, prepareAudio, { capture: true });
    document.addEventListener("visibilitychange", () => { if (!tabHidden()) closeAll(); });
    window.addEventListener("pagehide", closeAll);
    ring();
  }

  document.addEventListener("ctihub:calls", (event) => { if (root) onCalls(event.detail || {}); });
  document.addEventListener("DOMContentLoaded", wire);
})();
