// chatlane's chat page: plain JavaScript over the public HTTP API only.
//
//   POST   /v1/sessions/{id}/turns            send a message (202 + the queued turn)
//   GET    /v1/sessions/{id}/turns?order=desc  the recent turns: which ones are settled
//   GET    /v1/sessions/{id}/messages          the history (a 404: no such session yet)
//   GET    /v1/sessions/{id}/turns/{turn}      a turn seen on the stream but not sent here
//   GET    /v1/sessions/{id}/events            one event stream per open conversation
//   POST   /v1/sessions/{id}/turns/{turn}/cancel  Stop: end a queued or running turn
//   DELETE /v1/sessions/{id}                   clear the conversation
//
// Every request goes through fetch, so each can carry the API key (`Authorization:
// Bearer`), the event stream too (read by hand: EventSource cannot send headers). A 401
// shows the key form; the key given is kept in sessionStorage (it leaves with the tab)
// and every refused request is sent again with it.
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
  const PROBLEM = "urn:chatlane:problem:"; // how the API's problem types begin

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
    stop: $("stop-button"),
    keyForm: $("key-form"),
    keyReason: $("key-reason"),
    keyInput: $("key-input"),
    keyStatus: $("key-status"),
    forgetKey: $("forget-key"),
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
      stream: null, // the AbortController of the event stream's connection
      opened: false, // a connection was made once (later ones are reconnections)
      lastEventId: "", // sent as Last-Event-ID: the stream resumes after it
      reconnectMs: 1000, // after a dropped connection (the stream's `retry:` sets it)
      retryMs: 1000, // after a refused or failed one: doubles up to 30 s
      retryTimer: null,
      pendingSends: 0,
      sending: new Set(), // the local records of messages whose POST is not answered yet
      stopping: 0, // Stop's cancel requests not answered yet
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

  // A request whose answer is refused for want of a valid API key is sent again once a
  // key has been given (see keyRefused): a 401 never reaches the caller.
  async function call(method, url, body) {
    for (;;) {
      const sentKey = apiKey;
      try {
        return await request(method, url, body);
      } catch (err) {
        if (err.status !== 401) throw err;
        await keyRefused(err.body, sentKey);
      }
    }
  }

  // fetch + JSON; any non-2xx becomes an ApiError from its problem document.
  async function request(method, url, body) {
    const init = { method, headers: withKey({ accept: "application/json" }) };
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

  // ---- the API key (sessionStorage: it leaves with the tab) ---------------------------

  const KEY_STORE = "chatlane.apiKey";
  let apiKey = readKey();
  let keyWanted = null; // while the key form is shown: { promise, resolve }

  function readKey() {
    try {
      return sessionStorage.getItem(KEY_STORE) || "";
    } catch {
      return "";
    }
  }

  function storeKey(key) {
    apiKey = key;
    try {
      if (key) sessionStorage.setItem(KEY_STORE, key);
      else sessionStorage.removeItem(KEY_STORE);
    } catch {
      // storage disabled: the key lasts as long as the page
    }
    ui.keyStatus.hidden = !key;
  }

  // The request's headers, with the key when there is one.
  function withKey(headers) {
    if (apiKey) headers.authorization = `Bearer ${apiKey}`;
    return headers;
  }

  // A request sent with `sentKey` was refused (401, its problem document `doc`): resolves
  // when it may be sent again. At once if the key changed since it was sent; else once
  // the key form is answered. Every request refused meanwhile waits for the same answer.
  function keyRefused(doc, sentKey) {
    if (apiKey !== sentKey) return Promise.resolve();
    if (sentKey) storeKey(""); // refused: not worth keeping
    const reason = (doc && (doc.detail || doc.title)) || "This server needs an API key.";
    ui.keyReason.textContent = reason;
    if (sentKey) ui.keyInput.setAttribute("aria-invalid", "true");
    else ui.keyInput.removeAttribute("aria-invalid");
    setConnection("error", "API key needed");
    if (!keyWanted) {
      let resolve;
      const promise = new Promise((done) => {
        resolve = done;
      });
      keyWanted = { promise, resolve };
      ui.keyForm.hidden = false;
      ui.keyInput.value = "";
      ui.keyInput.focus();
    }
    return keyWanted.promise;
  }

  function submitKey(event) {
    event.preventDefault();
    const key = ui.keyInput.value.trim();
    if (!key) {
      ui.keyReason.textContent = "Enter an API key.";
      ui.keyInput.setAttribute("aria-invalid", "true");
      ui.keyInput.focus();
      return;
    }
    ui.keyInput.value = "";
    ui.keyInput.removeAttribute("aria-invalid");
    storeKey(key);
    ui.keyForm.hidden = true;
    ui.input.focus();
    const wanted = keyWanted;
    keyWanted = null;
    if (wanted) wanted.resolve();
  }

  // Forget the key: what was loaded with it goes too (the conversation is loaded again,
  // which asks for a key when the server needs one).
  function forgetKey() {
    storeKey("");
    if (conv) openSession(conv.id);
    else checkAccess();
  }

  // Nothing to open: ask once whether this server needs a key, so that its form shows
  // now rather than at the first message. (A 404 for a session: the caller is served.)
  async function checkAccess() {
    try {
      await call("GET", api("chatlane.key-check"));
    } catch {
      // a 404 (served), or unreachable: the first real request says more
    }
    if (!conv) setConnection("idle", "Not connected");
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
    updateStop();
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
    updateStop();
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
    updateStop();
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

  // The event stream format, as the HTML standard's server-sent events parse it: lines
  // end in CRLF, LF or CR; a blank line dispatches the event; `data` lines are joined
  // with "\n" (an event without any is not dispatched); a line starting with ":" is a
  // comment; one space after a field's colon is dropped; `id` sets the id a reconnection
  // resumes after (kept from event to event; one holding a NUL is ignored); `retry` sets
  // the reconnection delay; other fields are ignored; an event cut off by the end of the
  // stream is dropped. (A leading BOM is dropped by the TextDecoder.)
  class EventStreamParser {
    constructor(lastEventId, dispatch) {
      this.dispatch = dispatch; // called with { type, data, lastEventId }
      this.lastEventId = lastEventId;
      this.idBuffer = lastEventId;
      this.retry = null;
      this.type = "";
      this.data = [];
      this.rest = ""; // the start of a line still unfinished
      this.afterCR = false; // the text so far ended in CR: a LF next belongs to it
    }

    feed(text) {
      if (this.afterCR && text.startsWith("\n")) text = text.slice(1);
      if (!text) return;
      this.afterCR = text.endsWith("\r");
      const lines = (this.rest + text).split(/\r\n|\r|\n/);
      this.rest = lines.pop();
      for (const line of lines) this.line(line);
    }

    line(line) {
      if (line === "") {
        this.end();
        return;
      }
      if (line.startsWith(":")) return;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") this.type = value;
      else if (field === "data") this.data.push(value);
      else if (field === "id" && !value.includes("\0")) this.idBuffer = value;
      else if (field === "retry" && /^[0-9]+$/.test(value)) this.retry = Number(value);
    }

    end() {
      this.lastEventId = this.idBuffer;
      const event = { type: this.type || "message", data: this.data.join("\n") };
      const any = this.data.length > 0;
      this.type = "";
      this.data = [];
      if (any) this.dispatch({ ...event, lastEventId: this.lastEventId });
    }
  }

  const STREAM_EVENTS = new Set(["status", "delta", "reset", "completed", "failed", "cancelled"]);

  // Follow the conversation's events: one connection at a time, resumed from the last
  // event seen after a drop (in `reconnectMs`), after a refusal or a failure to connect
  // (backing off, up to 30 s), or at once when a key was asked for and given.
  function openStream(mine) {
    if (mine !== conv || mine.stream) return;
    clearTimeout(mine.retryTimer);
    const stream = new AbortController();
    mine.stream = stream;
    setConnection("connecting", mine.opened ? "Reconnecting…" : "Connecting…");
    follow(mine, stream).then((ended) => {
      if (mine !== conv || mine.stream !== stream) return; // closed meanwhile
      mine.stream = null;
      if (ended === "keyed") {
        openStream(mine);
      } else if (ended === "dropped") {
        setConnection("connecting", "Reconnecting…");
        mine.retryTimer = setTimeout(() => openStream(mine), mine.reconnectMs);
      } else {
        setConnection("error", "Disconnected: retrying…");
        mine.retryTimer = setTimeout(() => openStream(mine), mine.retryMs);
        mine.retryMs = Math.min(mine.retryMs * 2, 30000);
      }
    });
  }

  // One connection, read to its end: "dropped" (it was open), "failed" (it never was),
  // or "keyed" (refused for its key, and a key has been given since).
  async function follow(mine, stream) {
    const current = () => mine === conv && mine.stream === stream;
    const sentKey = apiKey;
    const headers = withKey({ accept: "text/event-stream" });
    if (mine.lastEventId) headers["last-event-id"] = mine.lastEventId;
    let response;
    try {
      response = await fetch(api(mine.id, "/events"), {
        headers,
        cache: "no-store",
        signal: stream.signal,
      });
    } catch {
      return "failed";
    }
    if (response.status === 401) {
      const doc = await response.json().catch(() => null);
      if (!current()) return "failed";
      await keyRefused(doc, sentKey);
      return "keyed";
    }
    const type = response.headers.get("content-type") || "";
    if (!response.ok || !type.startsWith("text/event-stream")) {
      response.body?.cancel().catch(() => {});
      return "failed";
    }
    if (!current()) return "failed";
    mine.opened = true;
    mine.retryMs = 1000;
    setConnection("live", "Live");
    const parser = new EventStreamParser(mine.lastEventId, (event) => {
      if (!current()) return;
      mine.lastEventId = event.lastEventId;
      if (!STREAM_EVENTS.has(event.type)) return;
      if (ui.connection.dataset.state !== "live") setConnection("live", "Live");
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      try {
        onEvent(mine, event.type, data);
      } catch (err) {
        reportError(err); // as an EventSource listener's would be; the stream goes on
      }
    });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch {
        break; // cut off (or closed here): as a drop
      }
      if (chunk.done) {
        parser.feed(decoder.decode());
        break;
      }
      parser.feed(decoder.decode(chunk.value, { stream: true }));
    }
    if (current()) {
      mine.lastEventId = parser.lastEventId;
      if (parser.retry !== null) mine.reconnectMs = parser.retry;
    }
    return "dropped";
  }

  function closeStream() {
    if (!conv) return;
    clearTimeout(conv.retryTimer);
    if (conv.stream) conv.stream.abort();
    conv.stream = null;
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
    mine.sending.add(local);
    render(local);
    scrollToEnd();
    mine.pendingSends += 1;
    let turn;
    try {
      turn = await call("POST", api(mine.id, "/turns"), { content });
    } catch (err) {
      mine.sending.delete(local);
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
    mine.sending.delete(local);
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
    if (local.stopWanted && !TERMINAL.has(rec.status)) stopTurns(mine, [rec]); // Stop came first
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

  // ---- stopping --------------------------------------------------------------------

  // The turns Stop ends: every message turn shown as queued or running, newest first (so
  // that none still queued starts when the one before it ends). A session's turns run in
  // order: there are some exactly while its latest turn is queued or running.
  function openTurns(mine) {
    const open = [];
    for (const rec of mine.turns.values()) {
      if (rec.kind !== "message" || !rec.node || !rec.node.isConnected) continue;
      if (rec.status === "queued" || rec.status === "running") open.push(rec);
    }
    return open.sort((a, b) => sortKey(b) - sortKey(a));
  }

  // Stop shows while a turn is queued or running, or a message is on its way; it says
  // "Stopping…" (and does nothing more) until its requests are answered.
  function updateStop() {
    const mine = conv;
    const busy = mine !== null && (mine.sending.size > 0 || openTurns(mine).length > 0);
    const stopping =
      busy && (mine.stopping > 0 || [...mine.sending].some((local) => local.stopWanted));
    if (!busy && !ui.stop.hidden && document.activeElement === ui.stop) ui.input.focus();
    ui.stop.hidden = !busy;
    ui.stop.textContent = stopping ? "Stopping…" : "Stop";
    if (stopping) ui.stop.setAttribute("aria-disabled", "true");
    else ui.stop.removeAttribute("aria-disabled");
  }

  function stop() {
    const mine = conv;
    if (!mine || mine.stopping > 0) return;
    for (const local of mine.sending) local.stopWanted = true; // cancelled once answered
    stopTurns(mine, openTurns(mine));
    updateStop();
  }

  async function stopTurns(mine, targets) {
    if (!targets.length) return;
    mine.stopping += 1;
    updateStop();
    try {
      for (const rec of targets) await cancelTurn(mine, rec.id);
    } finally {
      mine.stopping -= 1;
      if (mine === conv) updateStop();
    }
  }

  // Cancel one turn: it shows as cancelled (the stream's `cancelled` event says the same).
  // One that finished first (409 turn-finished) shows as it finished, and nothing is said.
  async function cancelTurn(mine, id) {
    const url = api(mine.id, `/turns/${encodeURIComponent(id)}`);
    let turn;
    try {
      turn = await call("POST", `${url}/cancel`);
    } catch (err) {
      if (mine !== conv) return;
      if (err.status !== 409 || !err.body || err.body.type !== `${PROBLEM}turn-finished`) {
        showError(`Could not stop the reply. ${err.message}`);
        return;
      }
      try {
        turn = await call("GET", url); // its final event shows it too, once the stream has it
      } catch {
        return;
      }
    }
    if (mine !== conv || !turn || !TERMINAL.has(turn.status)) return;
    const rec = applyTurn(turn);
    if (rec.node || rec.kind === "message") render(rec);
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
  ui.stop.addEventListener("click", stop);
  ui.errorDismiss.addEventListener("click", hideError);
  ui.keyForm.addEventListener("submit", submitKey);
  ui.forgetKey.addEventListener("click", forgetKey);
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
  ui.keyStatus.hidden = !apiKey;
  const fromHash = hashId();
  if (fromHash) openSession(fromHash);
  else {
    const last = loadKnown()[0];
    if (last) openSession(last.id);
    else checkAccess();
  }
})();
