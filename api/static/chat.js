// chatlane's chat page: plain JavaScript over the public HTTP API only.
//
//   POST   /v1/sessions/{id}/turns            send a message (202 + the queued turn)
//   GET    /v1/sessions/{id}/turns?order=desc  the recent turns: which ones are settled
//   GET    /v1/sessions/{id}/messages          the history (a 404: no such session yet)
//   GET    /v1/sessions/{id}/turns/{turn}      a turn seen on the stream but not sent here
//   GET    /v1/sessions/{id}/events            one EventSource per open conversation
//   DELETE /v1/sessions/{id}                   clear the conversation
//
// How a reload shows every message exactly once: the recent turns are read first, then
// the history. Every turn that was already finished when the list was read (listed as
// finished, or older than the oldest unfinished one: a session's turns finish in order)
// is shown from the history (or, failed or cancelled, from the list) and its replayed
// stream events are ignored; later turns are shown from the stream. Each turn has one
// element, found by its id, so a turn reached by two routes is still shown once. A
// `clear` turn that completes while the page is open removes the turns before it.
"use strict";

(() => {
  const SESSION_ID = /^[A-Za-z0-9._:-]{1,128}$/;
  const STORE_KEY = "chatlane.sessions";
  const MAX_KNOWN = 50;
  const RECENT_TURNS = 100; // the API's page size limit for turns
  const HISTORY_PAGE = 1000; // the API's page size limit for messages
  const TERMINAL = new Set(["completed", "failed", "cancelled"]);
  const STICK_PX = 80; // "at the bottom" when this close to it

  const $ = (id) => document.getElementById(id);
  const ui = {
    connection: $("connection"),
    newSession: $("new-session"),
    sessionForm: $("session-form"),
    sessionInput: $("session-input"),
    knownSessions: $("known-sessions"),
    sessionList: $("session-list"),
    noSessions: $("no-sessions"),
    current: $("current-session"),
    clear: $("clear-button"),
    error: $("error"),
    errorText: $("error-text"),
    errorDismiss: $("error-dismiss"),
    messages: $("messages"),
    empty: $("empty"),
    form: $("message-form"),
    input: $("message-input"),
    send: $("send-button"),
  };

  // One open conversation at a time; `gen` makes the answers of an earlier one stale.
  let conv = null;
  let gen = 0;

  function newConversation(id) {
    return {
      id,
      gen: ++gen,
      exists: false, // the server knows the session (it has at least one turn)
      settledSeq: -1, // turns up to this seq had finished when the page loaded them
      settledIds: new Set(), // turns shown from the history or the turn list
      turns: new Map(), // turn id -> record (see turnRecord)
      source: null,
      lastEventId: null,
      retryMs: 1000,
      retryTimer: null,
      pendingSends: 0,
      historyOrder: 0, // orders history turns whose seq is unknown (older than the list)
    };
  }

  // ---- small helpers ---------------------------------------------------------------

  function el(tag, attrs = {}, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === undefined || value === null) continue;
      if (name === "className") node.className = value;
      else node.setAttribute(name, String(value));
    }
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function randomHex(bytes) {
    const buf = new Uint8Array(bytes);
    crypto.getRandomValues(buf);
    return Array.from(buf, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function api(id, path = "") {
    return `/v1/sessions/${encodeURIComponent(id)}${path}`;
  }

  class ApiError extends Error {
    constructor(status, title, detail, body) {
      super(detail ? `${title}: ${detail}` : title);
      this.status = status;
      this.title = title;
      this.detail = detail;
      this.body = body;
    }
  }

  // fetch + JSON; any non-2xx becomes an ApiError from its problem document.
  async function call(method, url, body) {
    const init = { method, headers: { accept: "application/json" } };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (err) {
      throw new ApiError(0, "The server could not be reached", String(err.message || err));
    }
    let doc = null;
    const text = await response.text();
    if (text) {
      try {
        doc = JSON.parse(text);
      } catch {
        doc = null;
      }
    }
    if (!response.ok) {
      const title = (doc && doc.title) || `HTTP ${response.status}`;
      let detail = (doc && doc.detail) || (doc ? "" : text.slice(0, 200));
      if (doc && Array.isArray(doc.errors) && doc.errors.length) {
        const first = doc.errors[0];
        const where = Array.isArray(first.loc) ? first.loc.join(".") : "";
        detail = `${detail} ${where}: ${first.msg}`.trim();
      }
      throw new ApiError(response.status, title, detail, doc);
    }
    return doc;
  }

  function showError(message) {
    ui.errorText.textContent = message;
    ui.error.hidden = false;
  }

  function hideError() {
    ui.error.hidden = true;
    ui.errorText.textContent = "";
  }

  function setConnection(state, text) {
    ui.connection.dataset.state = state;
    ui.connection.textContent = text;
  }

  // ---- known sessions (localStorage) -----------------------------------------------

  function loadKnown() {
    try {
      const list = JSON.parse(localStorage.getItem(STORE_KEY) || "[]");
      return Array.isArray(list) ? list.filter((s) => s && SESSION_ID.test(s.id)) : [];
    } catch {
      return [];
    }
  }

  function saveKnown(list) {
    try {
      localStorage.setItem(STORE_KEY, JSON.stringify(list.slice(0, MAX_KNOWN)));
    } catch {
      // storage full or disabled: the list is a convenience only
    }
  }

  function remember(id, label) {
    const list = loadKnown();
    const found = list.find((s) => s.id === id);
    const entry = { id, label: (found && found.label) || label || "", at: Date.now() };
    if (label && !entry.label) entry.label = label;
    saveKnown([entry, ...list.filter((s) => s.id !== id)]);
    renderKnown();
  }

  function forget(id) {
    saveKnown(loadKnown().filter((s) => s.id !== id));
    renderKnown();
  }

  function renderKnown() {
    const list = loadKnown();
    ui.sessionList.replaceChildren();
    ui.knownSessions.replaceChildren();
    for (const s of list) {
      const current = conv && conv.id === s.id;
      const item = el("li", { className: "session-item", "data-testid": "session-item" });
      item.dataset.sessionId = s.id;
      const open = el("button", {
        type: "button",
        className: "session-open",
        "data-testid": "session-link",
        "aria-current": current ? "true" : null,
        title: s.id,
      });
      open.append(el("span", { className: "session-label" }, s.label || s.id));
      if (s.label) open.append(el("span", { className: "session-sub" }, s.id));
      open.addEventListener("click", () => openSession(s.id));
      const drop = el("button", {
        type: "button",
        className: "session-forget ghost",
        "data-testid": "session-forget",
        "aria-label": `Forget ${s.id} on this browser`,
        title: "Forget on this browser (the server keeps it)",
      }, "✕");
      drop.addEventListener("click", () => forget(s.id));
      item.append(open, drop);
      ui.sessionList.append(item);
      ui.knownSessions.append(el("option", { value: s.id }));
    }
    ui.noSessions.hidden = list.length > 0;
  }

  // ---- rendering turns -------------------------------------------------------------

  // A turn is one <article>: the user's message, then the reply (or a status, or an error).
  function turnRecord(id) {
    let rec = conv.turns.get(id);
    if (!rec) {
      rec = {
        id,
        seq: undefined,
        kind: undefined,
        status: undefined,
        attempt: 0,
        user: undefined,
        text: "",
        node: null,
        lookup: false,
      };
      conv.turns.set(id, rec);
    }
    return rec;
  }

  function sortKey(rec) {
    return rec.seq === undefined ? Number.POSITIVE_INFINITY : rec.seq;
  }

  function lastKey() {
    let last = 0;
    for (const other of ui.messages.querySelectorAll(":scope > .turn")) {
      const key = Number(other.dataset.sortKey);
      if (Number.isFinite(key)) last = Math.max(last, key);
    }
    return last;
  }

  function buildNode(rec) {
    const node = el("article", { className: "turn", "data-testid": "turn" });
    const user = el("div", { className: "msg user", "data-testid": "message", "data-role": "user" });
    user.append(el("span", { className: "who visually-hidden" }, "You: "));
    user.append(el("p", { className: "text", "data-testid": "message-text" }));
    const reply = el("div", {
      className: "msg assistant",
      "data-testid": "message",
      "data-role": "assistant",
    });
    reply.append(el("span", { className: "who visually-hidden" }, "Assistant: "));
    reply.append(el("p", { className: "text", "data-testid": "message-text" }));
    reply.append(el("p", { className: "status", "data-testid": "turn-status" }));
    node.append(user, reply);
    rec.node = node;
    return node;
  }

  // Put the turn's element where its seq says (a turn without one goes last).
  function place(rec) {
    if (!rec.node) buildNode(rec);
    const key = sortKey(rec);
    rec.node.dataset.sortKey = String(key);
    let before = null;
    for (const other of ui.messages.querySelectorAll(":scope > .turn")) {
      if (other === rec.node) continue;
      if (Number(other.dataset.sortKey) > key) {
        before = other;
        break;
      }
    }
    if (rec.node.parentNode !== ui.messages || rec.node.nextElementSibling !== before) {
      ui.messages.insertBefore(rec.node, before);
    }
    ui.empty.hidden = true;
  }

  const STATUS_TEXT = {
    sending: "Sending…",
    queued: "Queued…",
    running: "Thinking…",
    cancelled: "Cancelled.",
  };

  function render(rec) {
    if (rec.kind === "clear") return;
    const stick = atBottom();
    if (!rec.node || !rec.node.isConnected) place(rec);
    const node = rec.node;
    node.dataset.turnId = rec.id;
    node.dataset.status = rec.status || "";
    if (rec.seq !== undefined) node.dataset.seq = String(rec.seq);
    const [user, reply] = node.querySelectorAll(":scope > .msg");
    user.dataset.turnId = rec.id;
    reply.dataset.turnId = rec.id;
    user.querySelector(".text").textContent = rec.user === undefined ? "…" : rec.user;
    user.hidden = rec.user === undefined && rec.kind !== "message";

    const streaming = rec.status === "queued" || rec.status === "running" || rec.status === "sending";
    const replyText = reply.querySelector(".text");
    replyText.textContent = rec.text;
    replyText.hidden = rec.text === "";
    reply.setAttribute("aria-busy", streaming ? "true" : "false");
    reply.dataset.status = rec.status || "";
    reply.classList.toggle("failed", rec.status === "failed" || rec.status === "unsent");

    const status = reply.querySelector(".status");
    let line = "";
    if (rec.status === "failed" || rec.status === "unsent") {
      line = rec.error || "The turn failed.";
    } else if (streaming && !(rec.status === "running" && rec.text)) {
      line = STATUS_TEXT[rec.status] || "";
      if (rec.status === "running" && rec.attempt > 1) line = `Retrying (attempt ${rec.attempt})…`;
    } else if (rec.status === "cancelled") {
      line = STATUS_TEXT.cancelled;
    }
    status.textContent = line;
    status.hidden = line === "";
    status.setAttribute("role", rec.status === "failed" || rec.status === "unsent" ? "alert" : "status");
    reply.hidden = rec.status === undefined && rec.text === "";
    if (stick) scrollToEnd();
  }

  function atBottom() {
    const m = ui.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < STICK_PX;
  }

  function scrollToEnd() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function notice(text) {
    const stick = atBottom();
    ui.messages.append(el("p", { className: "notice", "data-testid": "notice" }, text));
    if (stick) scrollToEnd();
  }

  function removeTurnsBefore(seq) {
    for (const rec of conv.turns.values()) {
      if (rec.node && sortKey(rec) < seq) rec.node.remove();
    }
    const stale = ':scope > .notice, :scope > .turn[data-status="unsent"]';
    for (const n of ui.messages.querySelectorAll(stale)) n.remove();
  }

  // Apply a whole turn (from the list, a lookup, a POST answer or a final event).
  function applyTurn(turn) {
    const rec = turnRecord(turn.id);
    rec.seq = turn.seq;
    rec.kind = turn.kind;
    rec.attempt = turn.attempt;
    if (turn.input && typeof turn.input.content === "string") rec.user = turn.input.content;
    // A stale answer (a POST's "queued") never takes back a later status.
    if (!(TERMINAL.has(rec.status) && !TERMINAL.has(turn.status))) {
      if (!(rec.status === "running" && turn.status === "queued")) rec.status = turn.status;
    }
    if (turn.status === "completed" && turn.output) rec.text = turn.output.content;
    if (turn.status === "failed") {
      rec.error = turn.error ? turn.error.message : "The turn failed.";
      if (turn.error && turn.error.code) rec.error = `${rec.error} (${turn.error.code})`;
    }
    return rec;
  }

  // ---- loading a conversation ------------------------------------------------------

  async function openSession(id, { fresh = false } = {}) {
    if (!SESSION_ID.test(id)) {
      showError(`“${id}” is not a session id: use 1–128 letters, digits or . _ : -`);
      return;
    }
    closeStream();
    hideError();
    conv = newConversation(id);
    const mine = conv;
    for (const n of ui.messages.querySelectorAll(":scope > .turn, :scope > .notice")) n.remove();
    ui.empty.hidden = false;
    ui.empty.textContent = fresh ? "New conversation: say something." : "Loading…";
    ui.current.textContent = id;
    ui.clear.disabled = true;
    document.title = `${id} · chatlane`;
    if (location.hash.slice(1) !== id) history.replaceState(null, "", `#${id}`);
    remember(id);
    ui.input.focus();
    if (fresh) {
      setConnection("idle", "New conversation");
      return;
    }
    setConnection("loading", "Loading…");
    try {
      await loadConversation(mine);
    } catch (err) {
      if (mine !== conv) return;
      showError(`Could not load the conversation. ${err.message}`);
      setConnection("error", "Not connected");
      ui.empty.textContent = "Could not load this conversation.";
    }
  }

  async function loadConversation(mine) {
    let recent;
    try {
      recent = await call("GET", api(mine.id, `/turns?order=desc&limit=${RECENT_TURNS}`));
    } catch (err) {
      if (err.status !== 404) throw err;
      recent = null; // no such session yet: an empty conversation
    }
    if (mine !== conv) return;
    if (!recent) {
      ui.empty.textContent = "No messages yet: say something.";
      setConnection("idle", "New conversation");
      return;
    }
    const turns = recent.data || [];
    // Settled: every turn below the oldest unfinished one (turns finish in order), and
    // every finished turn listed (one could be cancelled out of order).
    let lastClear = -1;
    let lastDone = -1;
    let firstOpen = Number.POSITIVE_INFINITY;
    for (const t of turns) {
      if (TERMINAL.has(t.status)) {
        lastDone = Math.max(lastDone, t.seq);
        mine.settledIds.add(t.id);
      } else {
        firstOpen = Math.min(firstOpen, t.seq);
      }
      if (t.kind === "clear" && t.status === "completed") lastClear = Math.max(lastClear, t.seq);
    }
    mine.settledSeq = Math.min(lastDone, firstOpen - 1);
    const listed = new Map(turns.map((t) => [t.id, t]));
    const history = await loadHistory(mine);
    if (mine !== conv) return;

    // The history, turn by turn (message ids are "<turn id>:user" / "<turn id>:assistant").
    for (const msg of history) {
      const data = msg.data || {};
      const full = typeof data.id === "string" ? data.id : "";
      const cut = full.lastIndexOf(":");
      const turnId = cut > 0 ? full.slice(0, cut) : `history-${mine.historyOrder}`;
      const rec = turnRecord(turnId);
      const known = listed.get(turnId);
      rec.seq = known ? known.seq : -1e12 + mine.historyOrder;
      mine.historyOrder += 1;
      rec.kind = "message";
      rec.status = "completed";
      const content = typeof data.content === "string" ? data.content : JSON.stringify(data.content);
      if (msg.type === "human") rec.user = content;
      else rec.text = content;
      mine.settledIds.add(turnId);
      render(rec);
    }
    // Failed or cancelled turns since the last clear (they are not in the history), and
    // turns still queued or running (the stream fills them in).
    const inHistory = new Set(mine.turns.keys());
    for (const t of turns.slice().reverse()) {
      if (t.kind !== "message" || t.seq <= lastClear || inHistory.has(t.id)) continue;
      if (t.status === "completed") continue; // not in the history: a later clear removed it
      render(applyTurn(t));
    }
    mine.exists = true;
    ui.clear.disabled = false;
    if (!ui.messages.querySelector(":scope > .turn")) ui.empty.textContent = "No messages yet: say something.";
    scrollToEnd();
    openStream(mine);
  }

  async function loadHistory(mine) {
    try {
      let page = await call("GET", api(mine.id, `/messages?limit=${HISTORY_PAGE}`));
      if (page.has_more && page.total > HISTORY_PAGE) {
        // A long history: show its newest part (starting at a user message).
        let offset = page.total - HISTORY_PAGE;
        if (offset % 2) offset += 1;
        page = await call("GET", api(mine.id, `/messages?offset=${offset}&limit=${HISTORY_PAGE}`));
        if (mine === conv) notice(`Older messages (${offset}) are not shown.`);
      }
      return page.data || [];
    } catch (err) {
      if (err.status === 404) return [];
      throw err;
    }
  }

  // ---- the event stream ------------------------------------------------------------

  function openStream(mine) {
    if (mine !== conv || mine.source) return;
    clearTimeout(mine.retryTimer);
    let url = api(mine.id, "/events");
    if (mine.lastEventId) url += `?last_event_id=${encodeURIComponent(mine.lastEventId)}`;
    const source = new EventSource(url);
    mine.source = source;
    setConnection("connecting", "Connecting…");
    source.addEventListener("open", () => {
      if (mine !== conv) return;
      mine.retryMs = 1000;
      setConnection("live", "Live");
    });
    source.addEventListener("error", () => {
      if (mine !== conv || mine.source !== source) return;
      if (source.readyState === EventSource.CLOSED) {
        // Refused (not a 200): the browser gives up, so retry by hand from the last id.
        source.close();
        mine.source = null;
        setConnection("error", "Disconnected: retrying…");
        mine.retryTimer = setTimeout(() => openStream(mine), mine.retryMs);
        mine.retryMs = Math.min(mine.retryMs * 2, 30000);
      } else {
        setConnection("connecting", "Reconnecting…"); // the browser resumes by itself
      }
    });
    for (const name of ["status", "delta", "reset", "completed", "failed", "cancelled"]) {
      source.addEventListener(name, (event) => {
        if (mine !== conv) return;
        if (event.lastEventId) mine.lastEventId = event.lastEventId;
        if (ui.connection.dataset.state !== "live") setConnection("live", "Live");
        let data;
        try {
          data = JSON.parse(event.data);
        } catch {
          return;
        }
        onEvent(mine, name, data);
      });
    }
  }

  function closeStream() {
    if (!conv) return;
    clearTimeout(conv.retryTimer);
    if (conv.source) conv.source.close();
    conv.source = null;
    setConnection("idle", "Not connected");
  }

  function settled(mine, rec) {
    if (mine.settledIds.has(rec.id)) return true;
    return rec.seq !== undefined && rec.seq <= mine.settledSeq;
  }

  function onEvent(mine, name, data) {
    const id = data.turn_id || data.id;
    if (!id) return;
    const rec = turnRecord(id); // kept even when ignored: later events carry no seq
    if (typeof data.seq === "number" && rec.seq === undefined) rec.seq = data.seq;
    if (settled(mine, rec)) return;
    switch (name) {
      case "status":
        if (!TERMINAL.has(rec.status)) {
          if (!(rec.status === "running" && data.status === "queued")) rec.status = data.status;
          rec.attempt = data.attempt;
        }
        break;
      case "delta":
        if (TERMINAL.has(rec.status)) return;
        rec.kind = "message";
        rec.status = "running";
        rec.text += data.text;
        break;
      case "reset":
        if (TERMINAL.has(rec.status)) return;
        rec.text = "";
        break;
      default: // completed, failed, cancelled: the whole turn
        applyTurn(data);
        if (data.kind === "clear" && data.status === "completed") {
          removeTurnsBefore(data.seq);
          notice("The conversation was cleared.");
          if (!ui.messages.querySelector(":scope > .turn")) ui.empty.hidden = false;
          return;
        }
    }
    if (rec.kind === undefined || rec.user === undefined) lookUp(mine, rec);
    if (rec.kind === "message" || rec.node) render(rec);
  }

  // A turn this page did not send (another tab, or the answer to our POST is still on
  // its way): ask for it once, to learn its kind and the user's message.
  function lookUp(mine, rec) {
    if (rec.lookup) return;
    rec.lookup = true;
    const wait = mine.pendingSends > 0 ? 1500 : 150;
    setTimeout(async () => {
      if (mine !== conv || (rec.kind !== undefined && rec.user !== undefined)) return;
      if (rec.kind === "clear") return;
      try {
        const turn = await call("GET", api(mine.id, `/turns/${encodeURIComponent(rec.id)}`));
        if (mine !== conv) return;
        const status = rec.status;
        const text = rec.text;
        applyTurn(turn);
        if (!TERMINAL.has(turn.status)) {
          rec.status = status || turn.status; // the stream is newer than this answer
          rec.text = text;
        }
        if (rec.kind === "message") render(rec);
      } catch {
        rec.lookup = false; // the final event carries the input anyway
      }
    }, wait);
  }

  // ---- sending ---------------------------------------------------------------------

  async function send(content) {
    if (!conv) await openSession(newId(), { fresh: true });
    const mine = conv;
    hideError();
    const local = {
      id: `local-${randomHex(6)}`,
      seq: undefined,
      kind: "message",
      status: "sending",
      attempt: 0,
      user: content,
      text: "",
      node: null,
      lookup: true,
    };
    render(local);
    scrollToEnd();
    mine.pendingSends += 1;
    let turn;
    try {
      turn = await call("POST", api(mine.id, "/turns"), { content });
    } catch (err) {
      if (mine !== conv) return;
      local.status = "unsent";
      local.error = `Not sent. ${err.message}`;
      local.seq = lastKey() + 0.01; // stays where it was, before later turns
      render(local);
      place(local);
      showError(err.message);
      if (!ui.input.value) {
        ui.input.value = content;
        updateSend();
      }
      return;
    } finally {
      mine.pendingSends -= 1;
    }
    if (mine !== conv) return;
    const rec = turnRecord(turn.id);
    if (rec.node) {
      local.node.remove(); // the stream got there first: keep its element
    } else {
      rec.node = local.node;
    }
    applyTurn(turn);
    rec.user = content;
    render(rec);
    place(rec);
    scrollToEnd();
    if (!mine.exists) {
      mine.exists = true;
      ui.clear.disabled = false;
      remember(mine.id, content.slice(0, 60));
      openStream(mine);
    } else {
      remember(mine.id, content.slice(0, 60));
    }
  }

  async function clearConversation() {
    if (!conv || !conv.exists) return;
    if (!window.confirm("Clear this conversation's history on the server?")) return;
    const mine = conv;
    hideError();
    try {
      await call("DELETE", api(mine.id));
    } catch (err) {
      if (mine === conv) showError(`Could not clear the conversation. ${err.message}`);
    }
    // The clear turn's `completed` event empties the view when its turn comes.
  }

  function newId() {
    return `chat-${randomHex(8)}`;
  }

  function updateSend() {
    ui.send.disabled = ui.input.value.trim() === "";
  }

  // ---- wiring ----------------------------------------------------------------------

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const content = ui.input.value;
    if (content.trim() === "") return;
    ui.input.value = "";
    updateSend();
    send(content);
  });
  ui.input.addEventListener("input", updateSend);
  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.form.requestSubmit();
    }
  });
  ui.newSession.addEventListener("click", () => openSession(newId(), { fresh: true }));
  ui.sessionForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const id = ui.sessionInput.value.trim();
    if (!SESSION_ID.test(id)) {
      ui.sessionInput.setAttribute("aria-invalid", "true");
      showError(`“${id}” is not a session id: use 1–128 letters, digits or . _ : -`);
      ui.sessionInput.focus();
      return;
    }
    ui.sessionInput.removeAttribute("aria-invalid");
    ui.sessionInput.value = "";
    openSession(id);
  });
  ui.clear.addEventListener("click", clearConversation);
  ui.errorDismiss.addEventListener("click", hideError);
  function hashId() {
    try {
      return decodeURIComponent(location.hash.slice(1)).trim();
    } catch {
      return location.hash.slice(1);
    }
  }

  window.addEventListener("hashchange", () => {
    const id = hashId();
    if (id && (!conv || conv.id !== id)) openSession(id);
  });
  window.addEventListener("pagehide", closeStream);
  window.addEventListener("pageshow", (event) => {
    if (event.persisted && conv && conv.exists) openStream(conv); // back from the bfcache
  });

  renderKnown();
  updateSend();
  const fromHash = hashId();
  if (fromHash) openSession(fromHash);
  else {
    const last = loadKnown()[0];
    if (last) openSession(last.id);
    else setConnection("idle", "Not connected");
  }
})();
