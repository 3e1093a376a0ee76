// The chat client: accounts, rooms, a live timeline, sends that are never lost or doubled.
"use strict";

import { Api, ApiError } from "./api.js";
import { Socket } from "./socket.js";
import { $, h, debounce, formatSize, timeOf, dayKey, dayLabel, colourClass, initial, highlightNodes, excerptOf } from "./dom.js";
import { Timeline } from "./timeline.js";

const PAGE = 50;
const SEND_TIMEOUT_MS = 15000;
const TYPING_EVERY_MS = 3000;
const TYPING_SHOWN_MS = 6000;
const SEARCH_PAGE = 20;
const JUMP_MAX_PAGES = 20; // a search hit or a quote loads at most this many older pages to reach its message

const api = new Api();
const S = {
  me: null,
  rooms: new Map(),      // room id -> room state (see roomState)
  current: null,         // id of the open room
  pending: new Map(),    // client_id -> {client_id, room_id, body, state, error, created}
  uploads: new Map(),    // local id -> {id, room_id, name, size, progress, state, fileId, reason}
  fileStatus: new Map(), // file id -> file_status that came before the upload's answer
  users: new Map(),      // user id -> {id, username, display_name}
  typing: new Map(),     // room id -> Map(user id -> until ms)
  syncing: new Set(),    // room ids with a sync in flight
  links: new Map(),      // file id -> signed links {url, thumbnail_url, expires_at}
  lastTypingSent: 0,
  replyTo: null,         // {room_id, seq, sender_id, excerpt}: the quote above the composer
  search: { q: "", cursor: null, token: 0 },
};

const socket = new Socket(api, {
  onFrame: (f) => onFrame(f),
  onState: () => renderBanner(),
  onHandshakeFailed: () => { api.req("GET", "/users/me").catch(() => {}); },
});

const timeline = new Timeline({
  list: $("#messages"), scroller: $("#timeline"), status: $("#history-status"),
  nameOf: (id) => nameOf(id), me: () => S.me, links: (f) => fileLinks(f), onImage: (m) => openImage(m),
  onRetry: (cid) => retrySend(cid), onDiscard: (cid) => discardSend(cid),
  onDiscardUpload: (id) => { S.uploads.delete(id); renderTimeline(); },
  onNearTop: () => loadOlder(),
  onScrolled: () => maybeMarkRead(),
  onAction: (name, m) => messageAction(name, m),
  onReact: (m, emoji, add) => react(m, emoji, add),
  onQuote: (seq) => jumpTo(S.current, seq),
  onEditSave: (m, body) => saveEdit(m, body),
  onEditCancel: () => cancelEdit(),
  original: (seq) => { const rs = S.rooms.get(S.current); return rs ? rs.msgs.get(seq) || null : null; },
  canModerate: () => { const rs = S.rooms.get(S.current); return !!rs && (rs.room.my_role === "owner" || rs.room.my_role === "admin"); },
});

api.onAuthLost = (message) => {
  socket.stop();
  resetState();
  showAuth(message);
};

// Read state: topSeq is the newest seq known (hello, room list, live events), lastReadSeq the
// marker; unread = topSeq - lastReadSeq, as the server counts it. lastVersion is the room's
// change counter this client has caught up to (sync's after_version); null until first known.
function roomState(room) {
  return {
    room, msgs: new Map(), loaded: false, loading: false, hasOlder: true, lastSeq: 0,
    lastActivity: room.created_at, preview: "", members: null,
    topSeq: 0, lastReadSeq: 0, mentionCount: 0, lastVersion: null, readSent: 0, dividerAfter: null,
  };
}

function unreadOf(rs) { return Math.max(0, rs.topSeq - rs.lastReadSeq); }

// Stored-form messages (live events, Lua's JSON) may lack the lifecycle fields, or carry {}
// for an empty list: every message gets them here, once, whatever path it came by.
function normalize(m) {
  if (!Array.isArray(m.reactions)) m.reactions = [];
  if (!Array.isArray(m.mentions)) m.mentions = [];
  if (m.reply_to === undefined) m.reply_to = null;
  if (m.edited_at === undefined) m.edited_at = null;
  m.deleted = !!m.deleted;
  m.version = Number(m.version) || 0;
  return m;
}

function myName() { return S.me ? S.me.username.toLowerCase() : ""; }

function mentionsMe(m) { return !!S.me && m.sender_id !== S.me.id && !m.deleted && m.mentions.includes(myName()); }

// Counts as a room listing or hello gives them (fields absent on an older server: unchanged).
function applyReadState(rs, r, authoritative) {
  if (Number.isFinite(r.last_seq)) rs.topSeq = Math.max(rs.topSeq, r.last_seq);
  if (Number.isFinite(r.last_read_seq)) {
    rs.lastReadSeq = authoritative ? r.last_read_seq : Math.max(rs.lastReadSeq, r.last_read_seq);
  } else if (Number.isFinite(r.last_seq)) {
    rs.lastReadSeq = Math.max(rs.lastReadSeq, r.last_seq); // a server without markers: history counts as read
  }
  if (Number.isFinite(r.mention_count)) rs.mentionCount = r.mention_count;
}

function resetState() {
  S.me = null; S.current = null; S.replyTo = null;
  for (const m of [S.rooms, S.pending, S.uploads, S.fileStatus, S.users, S.typing, S.links]) m.clear();
  S.syncing.clear();
  timeline.clear();
}

// ---------------------------------------------------------------- accounts

function showAuth(message) {
  $("#chat-view").hidden = true;
  $("#banner").hidden = true;
  $("#auth-view").hidden = false;
  const msg = $("#auth-message");
  msg.hidden = !message;
  msg.textContent = message || "";
  for (const d of document.querySelectorAll("dialog[open]")) d.close();
  $("#login-form input[name=username]").focus();
}

function selectTab(register) {
  $("#login-form").hidden = register;
  $("#register-form").hidden = !register;
  $("#tab-login").setAttribute("aria-selected", String(!register));
  $("#tab-register").setAttribute("aria-selected", String(register));
  (register ? $("#register-form input") : $("#login-form input")).focus();
}

function errorText(err) {
  if (!(err instanceof ApiError)) return "Something went wrong.";
  const fields = err.details && err.details.fields;
  if (fields && typeof fields === "object") {
    return `${err.message} ${Object.entries(fields).map(([k, v]) => `${k}: ${v}`).join("; ")}`;
  }
  return err.message;
}

async function submitAuth(ev, register) {
  ev.preventDefault();
  const form = ev.target;
  const data = new FormData(form);
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    if (register) await api.register(data.get("username"), data.get("password"), data.get("display_name"));
    else await api.login(data.get("username"), data.get("password"));
    form.reset();
    await enterChat();
  } catch (err) {
    const msg = $("#auth-message");
    msg.hidden = false;
    msg.textContent = err.code === "invalid_credentials" ? "Wrong username or password." : errorText(err);
  } finally {
    button.disabled = false;
  }
}

async function enterChat() {
  $("#auth-view").hidden = true;
  $("#chat-view").hidden = false;
  try {
    S.me = await api.req("GET", "/users/me");
  } catch (err) {
    if (api.loggedIn) showAuth(errorText(err));
    return;
  }
  S.users.set(S.me.id, S.me);
  $("#me-name").textContent = S.me.display_name;
  $("#me-username").textContent = `@${S.me.username}`;
  const av = $("#me-avatar");
  av.textContent = initial(S.me.display_name);
  av.className = `avatar ${colourClass(S.me.id)}`;
  showRoom(null);
  await loadRooms();
  restorePending();
  socket.start();
  const last = sessionStorage.getItem("chat.room");
  if (last && S.rooms.has(last)) openRoom(last);
}

async function logout() {
  socket.stop();
  S.pending.clear();
  savePending();
  await api.logout();
  resetState();
  showAuth("You are logged out.");
}

// ---------------------------------------------------------------- rooms

async function loadRooms() {
  const seen = new Set();
  let cursor = null;
  try {
    do {
      const q = new URLSearchParams({ scope: "joined", limit: "200" });
      if (cursor) q.set("cursor", cursor);
      const page = await api.req("GET", `/rooms?${q}`);
      for (const room of page.items) { seen.add(room.id); addRoom(room); }
      cursor = page.next_cursor;
    } while (cursor);
  } catch (err) {
    return;
  }
  for (const id of [...S.rooms.keys()]) if (!seen.has(id)) dropRoom(id, "You are no longer a member of this room.");
  renderSidebar();
  // The newest message of each room: its time orders the sidebar, its text is the preview.
  await Promise.all([...S.rooms.values()].filter((rs) => !rs.previewLoaded).map(loadPreview));
  renderSidebar();
}

async function loadPreview(rs) {
  rs.previewLoaded = true;
  try {
    const page = await api.req("GET", `/rooms/${rs.room.id}/messages?limit=1`);
    const last = page.items[page.items.length - 1];
    if (last) noteActivity(rs, last);
  } catch { /* the sidebar still shows the room */ }
}

function addRoom(room) {
  let rs = S.rooms.get(room.id);
  if (rs) rs.room = room;
  else { rs = roomState(room); S.rooms.set(room.id, rs); }
  applyReadState(rs, room, false);
  return rs;
}

async function fetchRoom(id) {
  try {
    const rs = addRoom(await api.req("GET", `/rooms/${id}`));
    await loadPreview(rs);
    renderSidebar();
    if (S.current === id) renderHeader();
    return rs;
  } catch { return null; }
}

// Kicked, banned, left, or the room is gone: out of the sidebar, its timeline stops.
function dropRoom(id, why) {
  if (!S.rooms.delete(id)) return;
  S.typing.delete(id);
  S.syncing.delete(id);
  for (const [cid, p] of S.pending) if (p.room_id === id) S.pending.delete(cid);
  savePending();
  for (const [lid, u] of S.uploads) if (u.room_id === id) S.uploads.delete(lid);
  if (S.current === id) showRoom(null, why);
  renderSidebar();
  renderBanner();
}

function noteActivity(rs, m) {
  if (!rs.lastActivity || m.created_at > rs.lastActivity) rs.lastActivity = m.created_at;
  if (m.seq >= (rs.previewSeq || 0)) {
    rs.previewSeq = m.seq;
    rs.preview = m.deleted ? `${nameOf(m.sender_id)}: message deleted`
      : m.kind === "text" ? `${nameOf(m.sender_id)}: ${m.body}`
      : m.kind === "system" ? m.body : `${nameOf(m.sender_id)} sent ${m.file ? m.file.name : "a file"}`;
  }
}

function renderSidebar() {
  const list = $("#room-list");
  const rooms = [...S.rooms.values()].sort((a, b) => (b.lastActivity || "").localeCompare(a.lastActivity || ""));
  list.replaceChildren(...rooms.map((rs) => {
    const r = rs.room;
    const unread = unreadOf(rs);
    const btn = h("button.room-item", {
      type: "button", onclick: () => openRoom(r.id),
      "aria-current": S.current === r.id ? "page" : null, dataset: { roomId: r.id, unread: String(unread) },
    },
    h(`span.room-icon.${colourClass(r.id)}`, { "aria-hidden": "true" }, r.is_private ? "\u{1F512}" : "#"),
    h("span.room-text", {}, h("span.room-item-name", { text: r.name }), h("span.room-preview", { text: rs.preview || r.topic || "" })),
    rs.mentionCount > 0 ? h("span.badge.mention-badge", { title: `${rs.mentionCount} mention${rs.mentionCount === 1 ? "" : "s"}`, "aria-label": `${rs.mentionCount} mentions` }, "@") : null,
    unread ? h("span.badge.unread-badge", { "aria-label": `${unread} unread` }, String(unread > 99 ? "99+" : unread)) : null);
    return h("li", {}, btn);
  }));
  $("#no-rooms").hidden = rooms.length > 0;
}

function showRoom(id, notice) {
  S.current = id;
  const rs = id ? S.rooms.get(id) : null;
  $("#chat-view").classList.toggle("room-open", !!rs);
  $("#empty-state").hidden = !!rs;
  $("#empty-text").textContent = notice || "Pick a room on the left, or create one.";
  $("#empty-state").classList.toggle("notice", !!notice);
  $("#room-header").hidden = !rs;
  $("#timeline").hidden = !rs;
  $("#composer").hidden = !rs;
  $("#typing").textContent = "";
  timeline.clear();
  if (!rs) { renderSidebar(); return; }
  renderHeader();
  renderSidebar();
}

function renderHeader() {
  const rs = S.rooms.get(S.current);
  if (!rs) return;
  const r = rs.room;
  $("#room-name").textContent = r.name;
  $("#room-topic").textContent = r.topic || `${r.member_count} member${r.member_count === 1 ? "" : "s"}${r.is_private ? " \u00b7 private" : ""}`;
  $("#settings-btn").hidden = !(r.my_role === "owner" || r.my_role === "admin");
  $("#message-input").placeholder = `Message ${r.name}`;
  document.title = `${r.name} \u00b7 Chat`;
}

async function openRoom(id) {
  const rs = S.rooms.get(id);
  if (!rs) return;
  sessionStorage.setItem("chat.room", id); // a reload comes back to this room
  if (S.replyTo && S.replyTo.room_id !== id) setReply(null);
  showRoom(id);
  // The "new messages" line stays where the marker was when the room was opened.
  timeline.dividerAfter = unreadOf(rs) > 0 ? rs.lastReadSeq : null;
  timeline.stickToBottom();
  renderTimeline();
  $("#message-input").focus();
  if (!rs.members) loadMembers(rs);
  if (!rs.loaded) await loadNewest(rs);
  if (S.current !== id) return;
  renderTimeline();
  timeline.toDivider();
  maybeMarkRead();
}

async function loadNewest(rs) {
  if (rs.loading) return;
  rs.loading = true;
  try {
    const page = await api.req("GET", `/rooms/${rs.room.id}/messages?limit=${PAGE}`);
    rs.loaded = true;
    rs.hasOlder = page.has_more;
    // The contiguous high-water mark restarts from this page; a sync then fills the rest.
    rs.lastSeq = page.items.length ? page.items[0].seq - 1 : 0;
    if (rs.lastVersion === null && Number.isFinite(page.last_version)) rs.lastVersion = page.last_version;
    addMessages(rs, page.items, false);
    // Anything that arrived live beyond the page is joined up by a sync (no banner: routine).
    if (socket.online) syncRoom(rs, true);
  } catch (err) {
    timeline.setStatus(`Could not load messages: ${errorText(err)}`);
  } finally {
    rs.loading = false;
  }
}

async function loadOlder() {
  const rs = S.rooms.get(S.current);
  if (!rs || !rs.loaded || rs.loading || !rs.hasOlder) return;
  const oldest = Math.min(...rs.msgs.keys());
  if (!Number.isFinite(oldest) || oldest <= 1) { rs.hasOlder = false; renderTimeline(); return; }
  rs.loading = true;
  timeline.setStatus("Loading older messages\u2026");
  try {
    const page = await api.req("GET", `/rooms/${rs.room.id}/messages?before=${oldest}&limit=${PAGE}`);
    if (S.current !== rs.room.id) return;
    rs.hasOlder = page.has_more && page.items.length > 0;
    timeline.keepPosition(() => { addMessages(rs, page.items, false); renderTimeline(); });
  } catch (err) {
    timeline.setStatus(`Could not load older messages: ${errorText(err)}`);
  } finally {
    rs.loading = false;
  }
}

// ---------------------------------------------------------------- people

function nameOf(id) {
  const u = S.users.get(id);
  if (u) return u.display_name || u.username;
  for (const rs of S.rooms.values()) {
    const m = rs.members && rs.members.get(id);
    if (m) return m.username;
  }
  return "Someone";
}

async function loadMembers(rs) {
  try {
    const members = new Map();
    let cursor = null;
    do {
      const q = new URLSearchParams({ limit: "200" });
      if (cursor) q.set("cursor", cursor);
      const page = await api.req("GET", `/rooms/${rs.room.id}/members?${q}`);
      for (const m of page.items) members.set(m.user_id, m);
      cursor = page.next_cursor;
    } while (cursor && members.size < 1000);
    rs.members = members;
    timeline.renameAll();
    renderTyping();
    await resolveNames([...members.values()].slice(0, 50));
  } catch { /* names fall back to usernames */ }
}

// Display names are not in memberships: look each username up once (GET /users?q=).
async function resolveNames(memberships) {
  const todo = memberships.filter((m) => !S.users.has(m.user_id));
  for (let i = 0; i < todo.length; i += 4) {
    await Promise.all(todo.slice(i, i + 4).map(async (m) => {
      try {
        const page = await api.req("GET", `/users?q=${encodeURIComponent(m.username)}&limit=10`);
        for (const u of page.items) S.users.set(u.id, u);
      } catch { /* keep the username */ }
    }));
  }
  timeline.renameAll();
  renderTyping();
  renderSidebar();
}

function rememberUsers(users) {
  for (const u of users) S.users.set(u.id, u);
}

// ---------------------------------------------------------------- timeline

function addMessages(rs, messages, live) {
  let added = 0;
  for (const m of messages) {
    normalize(m);
    const mine = !!S.me && m.sender_id === S.me.id;
    if (m.seq > rs.topSeq) {
      // New to this client: counts once, whichever path (live, sync, page) brought it first.
      if (live && m.seq > rs.lastReadSeq && mentionsMe(m)) rs.mentionCount += 1;
      rs.topSeq = m.seq;
    }
    // Sending moves the sender's own marker to the message (the server does the same).
    if (mine && m.seq > rs.lastReadSeq) { rs.lastReadSeq = m.seq; if (m.seq >= rs.topSeq) rs.mentionCount = 0; }
    if (S.pending.has(m.client_id) && mine) { S.pending.delete(m.client_id); savePending(); }
    if (m.file) {
      for (const [lid, u] of S.uploads) if (u.fileId === m.file.id) S.uploads.delete(lid);
    }
    const typing = S.typing.get(rs.room.id);
    if (typing && live) typing.delete(m.sender_id);
    noteActivity(rs, m);
    if (!rs.loaded) { rs.lastSeq = Math.max(rs.lastSeq, m.seq); continue; }
    if (rs.msgs.has(m.seq)) { replaceMessage(rs, m); continue; } // seq is the identity: shown once
    rs.msgs.set(m.seq, m);
    added += 1;
    if (live && S.current === rs.room.id && !mine) announce(m);
  }
  if (rs.loaded) {
    while (rs.msgs.has(rs.lastSeq + 1)) rs.lastSeq += 1;
  }
  return added;
}

function announce(m) {
  const live = $("#live");
  const text = m.kind === "text" ? m.body : m.kind === "system" ? m.body : `sent ${m.file ? m.file.name : "a file"}`;
  live.append(h("p", { text: `${nameOf(m.sender_id)}: ${text}` }));
  while (live.childNodes.length > 5) live.firstChild.remove();
}

function renderTimeline() {
  const rs = S.rooms.get(S.current);
  if (!rs) return;
  const msgs = [...rs.msgs.values()].sort((a, b) => a.seq - b.seq);
  const pending = [...S.pending.values()].filter((p) => p.room_id === rs.room.id);
  const uploads = [...S.uploads.values()].filter((u) => u.room_id === rs.room.id);
  timeline.render(rs.room.id, msgs, pending, uploads);
  if (!rs.loaded) timeline.setStatus("Loading\u2026");
  else if (rs.hasOlder) timeline.setStatus("");
  else timeline.setStatus(msgs.length ? `This is the beginning of ${rs.room.name}.` : "No messages yet. Say hello!");
  renderTyping();
}

function onLiveMessage(m) {
  const rs = S.rooms.get(m.room_id);
  if (!rs) return;
  const before = rs.lastSeq;
  addMessages(rs, [m], true);
  // A seq beyond the next one means something was missed: fetch the gap.
  if (rs.loaded && m.seq > before + 1 && rs.lastSeq < m.seq) syncRoom(rs);
  if (S.current === m.room_id) { renderTimeline(); maybeMarkRead(); }
  renderSidebar();
}

// A newer state of a message held (edit, delete, reaction): replaced by seq, never by an older one.
function replaceMessage(rs, m) {
  const old = rs.msgs.get(m.seq);
  // Same version = same state (an event and the HTTP answer of one change; a page and a sync).
  if (!old || m.version <= old.version) return false;
  rs.msgs.set(m.seq, m);
  timeline.invalidate(m.seq);
  // Replies quoting it show its new text (or that it is gone).
  for (const other of rs.msgs.values()) if (other.reply_to && other.reply_to.seq === m.seq) timeline.invalidate(other.seq);
  const shown = S.current === rs.room.id;
  if (shown && m.deleted && timeline.editing && timeline.editing.seq === m.seq) timeline.editing = null;
  if (shown && m.deleted && timeline.picking === m.seq) timeline.picking = null;
  if (m.deleted && S.replyTo && S.replyTo.room_id === rs.room.id && S.replyTo.seq === m.seq) setReply(null);
  if (m.seq === rs.previewSeq) noteActivity(rs, m);
  return true;
}

// Apply one changed message (a message_updated event, a sync change, an HTTP answer).
function applyChange(roomId, msg) {
  const rs = S.rooms.get(roomId);
  if (!rs || !msg) return;
  normalize(msg);
  if (msg.deleted && msg.seq > rs.lastReadSeq && rs.loaded && rs.msgs.has(msg.seq) && mentionsMe(rs.msgs.get(msg.seq))) {
    rs.mentionCount = Math.max(0, rs.mentionCount - 1); // a deleted mention no longer counts
  }
  if (rs.loaded) replaceMessage(rs, msg);
  else if (msg.seq === rs.previewSeq) noteActivity(rs, msg);
  if (S.current === roomId) renderTimeline();
  renderSidebar();
}

// Live change events: the room's change counter is gap-free, so a jump means changes were
// missed (a dropped event): a sync with after_version fetches their latest states.
function onMessageUpdated(f) {
  const rs = S.rooms.get(f.room_id);
  if (!rs || !f.message) return;
  const v = Number(f.message.version) || 0;
  applyChange(f.room_id, f.message);
  if (rs.lastVersion === null || !rs.loaded) { rs.lastVersion = Math.max(rs.lastVersion || 0, v); return; }
  if (v === rs.lastVersion + 1) rs.lastVersion = v;
  else if (v > rs.lastVersion + 1) syncRoom(rs, true);
}

// ---------------------------------------------------------------- sending

function sendText(body) {
  const rs = S.rooms.get(S.current);
  if (!rs || !body.trim()) return;
  const p = { client_id: crypto.randomUUID(), room_id: rs.room.id, body, state: "pending", created: Date.now() };
  if (S.replyTo && S.replyTo.room_id === rs.room.id) {
    const { seq, sender_id, excerpt } = S.replyTo;
    p.reply = { seq, sender_id, excerpt, deleted: false };
    setReply(null);
  }
  S.pending.set(p.client_id, p);
  savePending();
  timeline.stickToBottom();
  transmit(p);
  renderTimeline();
}

// Over the socket when it is up; otherwise it waits, and goes out again (same client_id)
// when the socket reconnects. The server answers a repeated client_id with the first message.
function transmit(p) {
  p.state = "pending";
  p.error = null;
  clearTimeout(p.timer);
  const frame = { type: "send", room_id: p.room_id, body: p.body, client_id: p.client_id };
  if (p.reply) frame.reply_to = p.reply.seq;
  if (socket.send(frame)) {
    p.timer = setTimeout(() => {
      if (S.pending.get(p.client_id) === p && p.state === "pending" && socket.online) {
        p.state = "failed"; p.error = "No answer from the server.";
        renderTimeline();
      }
    }, SEND_TIMEOUT_MS);
  }
}

function retrySend(cid) {
  const p = S.pending.get(cid);
  if (p) { transmit(p); renderTimeline(); }
}

function discardSend(cid) {
  const p = S.pending.get(cid);
  if (p) { clearTimeout(p.timer); S.pending.delete(cid); savePending(); renderTimeline(); }
}

// Unacknowledged sends survive a reload of the tab (same sessionStorage): they go out again
// with their client_id, so a message typed just before a reload is neither lost nor doubled.
function pendingKey() { return S.me ? `chat.pending.${S.me.id}` : null; }

function savePending() {
  const key = pendingKey();
  if (!key) return;
  const rows = [...S.pending.values()].map(({ client_id, room_id, body, created, reply }) => ({ client_id, room_id, body, created, reply }));
  if (rows.length) sessionStorage.setItem(key, JSON.stringify(rows)); else sessionStorage.removeItem(key);
}

function restorePending() {
  let rows = [];
  try { rows = JSON.parse(sessionStorage.getItem(pendingKey()) || "[]"); } catch { rows = []; }
  for (const r of rows) if (S.rooms.has(r.room_id) && !S.pending.has(r.client_id)) S.pending.set(r.client_id, { ...r, state: "pending" });
}

function resendPending() {
  const all = [...S.pending.values()].sort((a, b) => a.created - b.created);
  for (const p of all) if (p.state === "pending") transmit(p);
}

// ---------------------------------------------------------------- socket events

function onFrame(f) {
  switch (f.type) {
    case "hello": return onHello(f);
    case "message": return onLiveMessage(f.message);
    case "ack": {
      const p = S.pending.get(f.client_id);
      if (p) clearTimeout(p.timer);
      return onLiveMessage(f.message);
    }
    case "sync": return onSync(f);
    case "message_updated": return onMessageUpdated(f);
    case "read": return onRead(f);
    case "typing": return onTyping(f);
    case "member_joined": return onMemberJoined(f.membership);
    case "member_left": return onMemberLeft(f.room_id, f.user_id);
    case "room_updated": {
      if (S.rooms.has(f.room.id)) fetchRoom(f.room.id); // my_role is per viewer: ask for ours
      return;
    }
    case "room_deleted": return dropRoom(f.room_id, "This room was deleted.");
    case "file_status": return onFileStatus(f.file);
    case "resync": return onResync(f);
    case "error": return onError(f);
    default: return;
  }
}

function onHello(f) {
  const known = new Set(f.rooms.map((r) => r.room_id));
  let unknown = false;
  for (const r of f.rooms) {
    const rs = S.rooms.get(r.room_id);
    if (!rs) { unknown = true; continue; }
    // The server's marker is the truth on each connection (a read sent just before a drop may be lost).
    applyReadState(rs, r, true);
    rs.readSent = 0;
    // A room not loaded is fetched fresh when opened: its change cursor can start at the present.
    if (Number.isFinite(r.last_version) && (rs.lastVersion === null || !rs.loaded)) rs.lastVersion = r.last_version;
    if (!rs.loaded && r.last_seq > rs.lastSeq) {
      rs.lastSeq = r.last_seq;
      rs.previewLoaded = false;
      loadPreview(rs).then(renderSidebar);
    }
  }
  // Rooms joined or left while away: the HTTP list is the authority (a hello computed just
  // before a room was created must not drop it), so only a difference triggers a reload.
  if (unknown || [...S.rooms.keys()].some((id) => !known.has(id))) loadRooms();
  for (const rs of S.rooms.values()) if (rs.loaded) syncRoom(rs);
  resendPending();
  renderSidebar();
  renderBanner();
  maybeMarkRead();
}

function syncRoom(rs, quiet = false) {
  if (!rs.loaded) return;
  const frame = { type: "sync", room_id: rs.room.id, after_seq: rs.lastSeq, limit: 200 };
  // Without a counter from the hello, the highest version among the messages held is a safe
  // start: each was loaded as it was then, so every later change has a higher version.
  if (rs.lastVersion === null) rs.lastVersion = Math.max(0, ...[...rs.msgs.values()].map((m) => m.version));
  frame.after_version = rs.lastVersion;
  if (socket.send(frame) && !quiet) {
    S.syncing.add(rs.room.id);
    renderBanner();
  }
}

function onSync(f) {
  const rs = S.rooms.get(f.room_id);
  S.syncing.delete(f.room_id);
  if (rs) {
    const before = rs.lastSeq;
    const beforeVersion = rs.lastVersion;
    addMessages(rs, f.messages || [], true);
    // Older messages changed while away: their latest states, replaced by seq, paged by version.
    const changes = Array.isArray(f.changes) ? f.changes : [];
    for (const c of changes) applyChange(rs.room.id, c);
    if (f.changes_has_more && changes.length) {
      rs.lastVersion = Math.max(rs.lastVersion || 0, ...changes.map((c) => c.version));
    } else if (Number.isFinite(f.last_version)) {
      rs.lastVersion = Math.max(rs.lastVersion || 0, f.last_version);
    }
    if ((f.has_more && rs.lastSeq > before) || (f.changes_has_more && rs.lastVersion > (beforeVersion || 0))) syncRoom(rs);
    if (S.current === rs.room.id) { renderTimeline(); maybeMarkRead(); }
    renderSidebar();
  }
  renderBanner();
}

function onResync(f) {
  const rooms = f.room_id ? [S.rooms.get(f.room_id)].filter(Boolean) : [...S.rooms.values()];
  for (const rs of rooms) {
    if (f.reason === "redis_rollback" && rs.loaded) {
      // The room's seqs were re-assigned: what we hold may be wrong, load it afresh.
      rs.msgs.clear(); rs.loaded = false; rs.lastSeq = 0; rs.hasOlder = true;
      if (S.current === rs.room.id) { timeline.clear(); loadNewest(rs).then(renderTimeline); }
    } else {
      syncRoom(rs);
    }
  }
}

function onError(f) {
  const p = f.ref && S.pending.get(f.ref);
  if (p) {
    clearTimeout(p.timer);
    p.state = "failed";
    p.error = f.message || f.code;
    if (S.current === p.room_id) renderTimeline();
  }
}

function onTyping(f) {
  if (!S.me || f.user_id === S.me.id) return;
  let m = S.typing.get(f.room_id);
  if (!m) { m = new Map(); S.typing.set(f.room_id, m); }
  m.set(f.user_id, Date.now() + TYPING_SHOWN_MS);
  renderTyping();
  setTimeout(renderTyping, TYPING_SHOWN_MS + 100);
}

function renderTyping() {
  const m = S.typing.get(S.current);
  const now = Date.now();
  const names = [];
  if (m) for (const [uid, until] of m) { if (until > now) names.push(nameOf(uid)); else m.delete(uid); }
  $("#typing").textContent = names.length === 0 ? ""
    : names.length === 1 ? `${names[0]} is typing\u2026`
      : names.length === 2 ? `${names[0]} and ${names[1]} are typing\u2026` : "Several people are typing\u2026";
}

function onMemberJoined(ms) {
  if (S.me && ms.user_id === S.me.id && !S.rooms.has(ms.room_id)) { fetchRoom(ms.room_id); return; }
  const rs = S.rooms.get(ms.room_id);
  if (!rs) return;
  if (rs.members) { rs.members.set(ms.user_id, ms); resolveNames([ms]); }
  fetchRoom(ms.room_id);
  if ($("#members-dialog").open && S.current === ms.room_id) renderMembers();
}

function onMemberLeft(roomId, userId) {
  if (S.me && userId === S.me.id) {
    // Our own leave: its member_left event may arrive before the HTTP answer does.
    const rs = S.rooms.get(roomId);
    const why = S.leaving === roomId && rs ? `You left ${rs.room.name}.` : "You are no longer a member of this room.";
    dropRoom(roomId, why);
    return;
  }
  const rs = S.rooms.get(roomId);
  if (!rs) return;
  if (rs.members) rs.members.delete(userId);
  fetchRoom(roomId);
  if ($("#members-dialog").open && S.current === roomId) renderMembers();
}

// ---------------------------------------------------------------- read markers

// Read = the newest messages are on screen in a focused window: then the marker moves there
// (a `read` frame; the server tells every tab of this user, this one included). A burst of
// messages, or of scroll events, makes one frame, not one each.
function maybeMarkRead() {
  if (maybeMarkRead.timer) return;
  maybeMarkRead.timer = setTimeout(() => { maybeMarkRead.timer = null; markRead(); }, 150);
}

function markRead() {
  const rs = S.rooms.get(S.current);
  if (!rs || !rs.loaded || !S.me) return;
  if (document.hidden || !document.hasFocus() || !timeline.atBottom()) return;
  const seq = rs.lastSeq;
  if (seq <= rs.lastReadSeq || seq <= rs.readSent) return;
  if (!socket.send({ type: "read", room_id: rs.room.id, seq })) return;
  rs.readSent = seq;
  // Shown at once; the server's `read` event brings the exact counts.
  rs.lastReadSeq = seq;
  if (seq >= rs.topSeq) rs.mentionCount = 0;
  renderSidebar();
}

function onRead(f) {
  const rs = S.rooms.get(f.room_id);
  if (!rs) return;
  if (Number.isFinite(f.last_read_seq)) {
    rs.lastReadSeq = Math.max(rs.lastReadSeq, f.last_read_seq);
    if (Number.isFinite(f.unread_count)) rs.topSeq = Math.max(rs.topSeq, f.last_read_seq + f.unread_count);
  }
  if (Number.isFinite(f.mention_count)) rs.mentionCount = f.mention_count;
  renderSidebar();
}

// ---------------------------------------------------------------- edits, deletes, reactions, replies

function toast(text) {
  const t = $("#toast");
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 5000);
}

function messageAction(name, m) {
  const rs = S.rooms.get(S.current);
  if (!rs) return;
  if (name === "edit") {
    timeline.picking = null;
    timeline.editing = { seq: m.seq, draft: m.body, saving: false, error: null };
    timeline.invalidate(m.seq);
    renderTimeline();
    const box = $(`#messages li[data-seq="${m.seq}"] .edit-input`);
    if (box) { box.focus(); box.setSelectionRange(box.value.length, box.value.length); }
  } else if (name === "delete") {
    if (!confirm(m.sender_id === S.me.id ? "Delete this message?" : `Delete this message by ${nameOf(m.sender_id)}?`)) return;
    change(rs, "DELETE", `/rooms/${rs.room.id}/messages/${m.seq}`);
  } else if (name === "react") {
    const open = timeline.picking === m.seq;
    if (timeline.picking !== null) timeline.invalidate(timeline.picking);
    timeline.picking = open ? null : m.seq;
    timeline.invalidate(m.seq);
    renderTimeline();
    if (!open) { const first = $(`#messages li[data-seq="${m.seq}"] .picker-emoji`); if (first) first.focus(); }
  } else if (name === "reply") {
    setReply({ room_id: rs.room.id, seq: m.seq, sender_id: m.sender_id, excerpt: excerptOf(m) });
    $("#message-input").focus();
  }
}

// One change over HTTP: its answer is the message as it is now (the live event follows too).
async function change(rs, method, path, body) {
  try {
    const msg = await api.req(method, path, body);
    applyChange(rs.room.id, msg);
    return msg;
  } catch (err) {
    toast(errorText(err));
    throw err;
  }
}

async function react(m, emoji, add) {
  const rs = S.rooms.get(S.current);
  if (!rs) return;
  if (timeline.picking === m.seq) { timeline.picking = null; timeline.invalidate(m.seq); renderTimeline(); }
  const path = `/rooms/${rs.room.id}/messages/${m.seq}/reactions/${encodeURIComponent(emoji)}`;
  try { await change(rs, add ? "PUT" : "DELETE", path); } catch { /* told in the toast */ }
}

async function saveEdit(m, body) {
  const rs = S.rooms.get(S.current);
  const ed = timeline.editing;
  if (!rs || !ed || ed.seq !== m.seq || ed.saving) return;
  if (!body.trim() || body === m.body) { cancelEdit(); return; }
  ed.saving = true; ed.error = null; ed.draft = body;
  timeline.invalidate(m.seq); renderTimeline();
  try {
    const msg = await api.req("PATCH", `/rooms/${rs.room.id}/messages/${m.seq}`, { body });
    if (timeline.editing === ed) timeline.editing = null;
    timeline.invalidate(m.seq);
    applyChange(rs.room.id, msg);
    $("#message-input").focus();
  } catch (err) {
    ed.saving = false; ed.error = errorText(err);
    if (err.code === "message_deleted" && timeline.editing === ed) { timeline.editing = null; toast(errorText(err)); }
    timeline.invalidate(m.seq); renderTimeline();
  }
}

function cancelEdit() {
  const ed = timeline.editing;
  if (!ed) return;
  timeline.editing = null;
  timeline.invalidate(ed.seq);
  renderTimeline();
  $("#message-input").focus();
}

// Arrow up in an empty composer edits your newest text message (as in most chat apps).
function editLastOwn() {
  const rs = S.rooms.get(S.current);
  if (!rs || !S.me) return false;
  const own = [...rs.msgs.values()].filter((m) => m.sender_id === S.me.id && m.kind === "text" && !m.deleted);
  if (!own.length) return false;
  messageAction("edit", own.reduce((a, b) => (b.seq > a.seq ? b : a)));
  return true;
}

function setReply(reply) {
  S.replyTo = reply;
  $("#reply-bar").hidden = !reply;
  $("#reply-name").textContent = reply ? nameOf(reply.sender_id) : "";
  $("#reply-excerpt").textContent = reply ? reply.excerpt : "";
}

// Show one message of a room: opened if needed, older pages loaded until it is there.
async function jumpTo(roomId, seq) {
  if (!S.rooms.has(roomId)) { toast("You are not in that room any more."); return; }
  if (S.current !== roomId) await openRoom(roomId);
  const rs = S.rooms.get(roomId);
  if (!rs || S.current !== roomId) return;
  for (let i = 0; i < JUMP_MAX_PAGES && !rs.msgs.has(seq) && rs.hasOlder; i += 1) {
    const oldest = Math.min(...rs.msgs.keys());
    if (Number.isFinite(oldest) && oldest <= seq) break;
    await loadOlder();
    if (S.current !== roomId) return;
  }
  renderTimeline();
  if (!timeline.focusMessage(seq)) toast("That message is not available any more.");
}

// ---------------------------------------------------------------- search

async function runSearch(more = false) {
  const q = $("#search-q").value.trim();
  const sr = S.search;
  const token = ++sr.token;
  $("#search-panel").hidden = !q;
  $("#rooms-panel").hidden = !!q;
  if (!q) { $("#search-results").replaceChildren(); sr.q = ""; sr.cursor = null; return; }
  const params = new URLSearchParams({ q, limit: String(SEARCH_PAGE) });
  if (more && sr.cursor) params.set("cursor", sr.cursor);
  $("#search-status").textContent = "Searching\u2026";
  $("#search-more").hidden = true;
  try {
    const page = await api.req("GET", `/search?${params}`);
    if (token !== sr.token) return; // a newer query was typed meanwhile
    sr.q = q; sr.cursor = page.next_cursor || null;
    const list = $("#search-results");
    const rows = page.items.map(searchItem);
    if (more) list.append(...rows); else list.replaceChildren(...rows);
    $("#search-status").textContent = list.childNodes.length ? "" : "No messages match.";
    $("#search-more").hidden = !sr.cursor;
  } catch (err) {
    if (token !== sr.token) return;
    $("#search-status").textContent = errorText(err);
  }
}

function searchItem(item) {
  const m = normalize(item.message);
  const rs = S.rooms.get(item.room_id);
  const snippet = typeof item.snippet === "string" ? item.snippet : m.body;
  return h("li", {}, h("button.search-hit", {
    type: "button", dataset: { roomId: item.room_id, seq: m.seq },
    onclick: () => jumpTo(item.room_id, m.seq),
  },
  h("span.hit-meta", {},
    h("span.hit-room", { text: `# ${rs ? rs.room.name : "a room"}` }),
    h("span.hit-who", { text: ` \u00b7 ${nameOf(m.sender_id)} \u00b7 ${dayLabel(m.created_at)} ${timeOf(m.created_at)}` })),
  h("span.hit-snippet", {}, ...highlightNodes(snippet, item.highlights))));
}

function clearSearch() {
  $("#search-q").value = "";
  runSearch();
}

// ---------------------------------------------------------------- banner

function renderBanner() {
  const banner = $("#banner");
  const text = $("#banner-text");
  const retry = $("#banner-retry");
  document.body.dataset.socket = socket.state; // also what the browser tests wait on
  if (!S.me) { banner.hidden = true; return; }
  clearTimeout(renderBanner.timer);
  if (socket.state === "online") {
    banner.hidden = S.syncing.size === 0;
    banner.className = "banner syncing";
    text.textContent = "Catching up on missed messages\u2026";
    retry.hidden = true;
  } else if (socket.state === "connecting") {
    banner.hidden = false;
    banner.className = "banner offline";
    text.textContent = "Connecting\u2026";
    retry.hidden = true;
  } else {
    banner.hidden = false;
    banner.className = "banner offline";
    const s = Math.max(0, Math.ceil((socket.nextRetryAt - Date.now()) / 1000));
    text.textContent = `You are offline. Messages you send will go out when the connection is back. Reconnecting${s ? ` in ${s} s` : ""}\u2026`;
    retry.hidden = false;
    renderBanner.timer = setTimeout(renderBanner, 1000);
  }
}

// ---------------------------------------------------------------- files

async function fileLinks(file) {
  const cached = S.links.get(file.id);
  if (cached && Date.parse(cached.expires_at) - Date.now() > 30000) return cached;
  const links = await api.req("GET", `/files/${file.id}/url`);
  S.links.set(file.id, links);
  return links;
}

function uploadFiles(files) {
  const rs = S.rooms.get(S.current);
  if (!rs) return;
  for (const file of files) {
    const u = { id: crypto.randomUUID(), room_id: rs.room.id, name: file.name, size: file.size, progress: 0, state: "uploading" };
    S.uploads.set(u.id, u);
    timeline.stickToBottom();
    api.upload(rs.room.id, file, {
      clientId: u.id,
      onProgress: (p) => { u.progress = p; timeline.updateUpload(u); },
    }).then((meta) => {
      u.fileId = meta.id;
      u.state = meta.status;
      const early = S.fileStatus.get(meta.id);
      if (early) applyFileStatus(u, early);
      // The file's message may already be here.
      for (const r of S.rooms.values()) for (const m of r.msgs.values()) if (m.file && m.file.id === meta.id) S.uploads.delete(u.id);
      renderTimeline();
    }, (err) => {
      u.state = "failed";
      u.reason = errorText(err);
      renderTimeline();
    });
  }
  renderTimeline();
}

function applyFileStatus(u, file) {
  if (file.status === "ready") S.uploads.delete(u.id); // its message shows it from now on
  else if (file.status === "rejected") { u.state = "rejected"; u.reason = file.reason || "The file was rejected."; }
  else u.state = file.status;
}

function onFileStatus(file) {
  const u = [...S.uploads.values()].find((x) => x.fileId === file.id);
  if (!u) { S.fileStatus.set(file.id, file); return; }
  applyFileStatus(u, file);
  renderTimeline();
}

async function openImage(m) {
  const dlg = $("#image-dialog");
  const img = $("#image-full");
  img.removeAttribute("src");
  img.alt = m.file.name;
  $("#image-caption").textContent = `${m.file.name} \u00b7 ${formatSize(m.file.size)}`;
  dlg.showModal();
  try {
    const links = await fileLinks(m.file);
    img.src = links.url;
    $("#image-open").href = links.url;
  } catch (err) {
    $("#image-caption").textContent = errorText(err);
  }
}

// ---------------------------------------------------------------- dialogs

function dialogError(dlg, err) {
  const p = dlg.querySelector(".form-error");
  p.hidden = !err;
  p.textContent = err ? errorText(err) : "";
}

function userSearch(input, results, onPick) {
  const run = debounce(async () => {
    const q = input.value.trim();
    if (!q) { results.replaceChildren(); return; }
    try {
      const page = await api.req("GET", `/users?q=${encodeURIComponent(q)}&limit=8`);
      rememberUsers(page.items);
      results.replaceChildren(...page.items.filter((u) => u.id !== S.me.id).map((u) => h("li", {},
        h("button.result", { type: "button", onclick: () => onPick(u) },
          h(`span.avatar.small.${colourClass(u.id)}`, { "aria-hidden": "true" }, initial(u.display_name)),
          h("span.result-name", { text: u.display_name }), h("span.muted", { text: ` @${u.username}` })))));
      if (!results.childNodes.length) results.append(h("li.muted.pad", { text: "Nobody found." }));
    } catch (err) {
      results.replaceChildren(h("li.muted.pad", { text: errorText(err) }));
    }
  }, 200);
  input.addEventListener("input", run);
}

const invited = new Map();
function renderChips() {
  $("#create-chips").replaceChildren(...[...invited.values()].map((u) => h("li.chip", {},
    h("span", { text: u.display_name }),
    h("button.chip-x", { type: "button", "aria-label": `Remove ${u.username}`, onclick: () => { invited.delete(u.id); renderChips(); } }, "\u00d7"))));
}

function openCreate() {
  const dlg = $("#create-dialog");
  $("#create-form").reset();
  invited.clear(); renderChips();
  $("#create-results").replaceChildren();
  dialogError(dlg, null);
  dlg.showModal();
  $("#create-form input[name=name]").focus();
}

async function submitCreate(ev) {
  ev.preventDefault();
  const dlg = $("#create-dialog");
  const data = new FormData(ev.target);
  try {
    const room = await api.req("POST", "/rooms", {
      name: data.get("name"), topic: data.get("topic") || "", is_private: data.get("is_private") === "on",
      member_ids: [...invited.keys()],
    });
    addRoom(room);
    dlg.close();
    renderSidebar();
    openRoom(room.id);
  } catch (err) { dialogError(dlg, err); }
}

const browseSearch = debounce(() => runBrowse(), 200);
async function runBrowse() {
  const dlg = $("#browse-dialog");
  const q = $("#browse-q").value.trim();
  try {
    const page = await api.req("GET", `/rooms?scope=public&limit=50${q ? `&q=${encodeURIComponent(q)}` : ""}`);
    dialogError(dlg, null);
    const list = $("#browse-list");
    list.replaceChildren(...page.items.map((r) => {
      const joined = S.rooms.has(r.id);
      return h("li.browse-item", {},
        h(`span.room-icon.${colourClass(r.id)}`, { "aria-hidden": "true" }, "#"),
        h("span.room-text", {}, h("span.room-item-name", { text: r.name }),
          h("span.room-preview", { text: `${r.member_count} member${r.member_count === 1 ? "" : "s"}${r.topic ? ` \u00b7 ${r.topic}` : ""}` })),
        h("button", { type: "button", class: joined ? "ghost small" : "primary small", onclick: () => joinRoom(r.id) }, joined ? "Open" : "Join"));
    }));
    if (!page.items.length) list.append(h("li.muted.pad", { text: q ? "No public room matches." : "No public rooms yet." }));
  } catch (err) { dialogError(dlg, err); }
}

async function joinRoom(id) {
  const dlg = $("#browse-dialog");
  try {
    if (!S.rooms.has(id)) {
      await api.req("POST", `/rooms/${id}/join`);
      addRoom(await api.req("GET", `/rooms/${id}`));
    }
    dlg.close();
    renderSidebar();
    openRoom(id);
  } catch (err) { dialogError(dlg, err); }
}

function canManage(myRole, target) {
  if (!target || target.user_id === S.me.id) return false;
  if (myRole === "owner") return true;
  return myRole === "admin" && target.role === "member";
}

async function openMembers() {
  const rs = S.rooms.get(S.current);
  if (!rs) return;
  const dlg = $("#members-dialog");
  dialogError(dlg, null);
  $("#members-results").replaceChildren();
  $("#members-invite").value = "";
  $("#invite-box").hidden = !(rs.room.my_role === "owner" || rs.room.my_role === "admin");
  renderMembers();
  dlg.showModal();
  await loadMembers(rs);
  renderMembers();
}

function renderMembers() {
  const rs = S.rooms.get(S.current);
  if (!rs) return;
  const my = rs.room.my_role;
  const order = { owner: 0, admin: 1, member: 2 };
  const members = [...(rs.members ? rs.members.values() : [])].sort((a, b) => order[a.role] - order[b.role] || a.username.localeCompare(b.username));
  $("#members-title").textContent = `Members of ${rs.room.name}`;
  $("#members-list").replaceChildren(...members.map((m) => {
    const controls = [];
    if (my === "owner" && m.user_id !== S.me.id && m.role !== "owner") {
      const sel = h("select", { "aria-label": `Role of ${m.username}`, onchange: (e) => memberAction(() => api.req("PATCH", `/rooms/${rs.room.id}/members/${m.user_id}`, { role: e.target.value })) },
        h("option", { value: "member", selected: m.role === "member" }, "member"),
        h("option", { value: "admin", selected: m.role === "admin" }, "admin"));
      controls.push(sel);
    }
    if (canManage(my, m) && m.role !== "owner") {
      controls.push(h("button.ghost.small", { type: "button", onclick: () => memberAction(() => api.req("DELETE", `/rooms/${rs.room.id}/members/${m.user_id}?ban=false`)) }, "Kick"));
      controls.push(h("button.danger.small", { type: "button", onclick: () => memberAction(() => api.req("DELETE", `/rooms/${rs.room.id}/members/${m.user_id}?ban=true`)) }, "Ban"));
    }
    const u = S.users.get(m.user_id);
    return h("li.member", { dataset: { userId: m.user_id, username: m.username } },
      h(`span.avatar.small.${colourClass(m.user_id)}`, { "aria-hidden": "true" }, initial(u ? u.display_name : m.username)),
      h("span.member-names", {}, h("span.result-name", { text: u ? u.display_name : m.username }), h("span.muted", { text: ` @${m.username}` })),
      controls.length && controls[0].tagName === "SELECT" ? null : h(`span.role.role-${m.role}`, { text: m.role }),
      h("span.member-controls", {}, ...controls));
  }));
}

async function memberAction(call) {
  const rs = S.rooms.get(S.current);
  try {
    await call();
    dialogError($("#members-dialog"), null);
    await loadMembers(rs);
    renderMembers();
    fetchRoom(rs.room.id);
  } catch (err) { dialogError($("#members-dialog"), err); }
}

function openSettings() {
  const rs = S.rooms.get(S.current);
  if (!rs) return;
  const dlg = $("#settings-dialog");
  const form = $("#settings-form");
  form.elements.name.value = rs.room.name;
  form.elements.topic.value = rs.room.topic || "";
  form.elements.is_private.checked = rs.room.is_private;
  $("#delete-room-btn").hidden = rs.room.my_role !== "owner";
  dialogError(dlg, null);
  dlg.showModal();
}

async function submitSettings(ev) {
  ev.preventDefault();
  const rs = S.rooms.get(S.current);
  const dlg = $("#settings-dialog");
  const form = ev.target;
  try {
    const room = await api.req("PATCH", `/rooms/${rs.room.id}`, {
      name: form.elements.name.value, topic: form.elements.topic.value, is_private: form.elements.is_private.checked,
    });
    rs.room = { ...rs.room, ...room };
    dlg.close();
    renderHeader(); renderSidebar();
  } catch (err) { dialogError(dlg, err); }
}

async function deleteRoom() {
  const rs = S.rooms.get(S.current);
  if (!rs || !confirm(`Delete ${rs.room.name} for everyone? This cannot be undone.`)) return;
  try {
    await api.req("DELETE", `/rooms/${rs.room.id}`);
    $("#settings-dialog").close();
    dropRoom(rs.room.id, "The room was deleted.");
  } catch (err) { dialogError($("#settings-dialog"), err); }
}

async function leaveRoom() {
  const rs = S.rooms.get(S.current);
  if (!rs || !confirm(`Leave ${rs.room.name}?`)) return;
  S.leaving = rs.room.id;
  try {
    await api.req("POST", `/rooms/${rs.room.id}/leave`);
    dropRoom(rs.room.id, `You left ${rs.room.name}.`);
  } catch (err) { alert(errorText(err)); }
  finally { S.leaving = null; }
}

// ---------------------------------------------------------------- wiring

function wire() {
  $("#tab-login").addEventListener("click", () => selectTab(false));
  $("#tab-register").addEventListener("click", () => selectTab(true));
  $("#login-form").addEventListener("submit", (e) => submitAuth(e, false));
  $("#register-form").addEventListener("submit", (e) => submitAuth(e, true));
  $("#logout-btn").addEventListener("click", logout);
  $("#banner-retry").addEventListener("click", () => socket.reconnectNow());
  $("#new-room-btn").addEventListener("click", openCreate);
  $("#create-form").addEventListener("submit", submitCreate);
  userSearch($("#create-invite"), $("#create-results"), (u) => {
    invited.set(u.id, u); renderChips();
    $("#create-invite").value = ""; $("#create-results").replaceChildren(); $("#create-invite").focus();
  });
  $("#browse-btn").addEventListener("click", () => {
    $("#browse-q").value = ""; dialogError($("#browse-dialog"), null);
    $("#browse-dialog").showModal(); runBrowse(); $("#browse-q").focus();
  });
  $("#browse-q").addEventListener("input", browseSearch);
  $("#members-btn").addEventListener("click", openMembers);
  userSearch($("#members-invite"), $("#members-results"), (u) => {
    const rs = S.rooms.get(S.current);
    $("#members-invite").value = ""; $("#members-results").replaceChildren();
    memberAction(() => api.req("POST", `/rooms/${rs.room.id}/members`, { user_id: u.id }));
  });
  $("#settings-btn").addEventListener("click", openSettings);
  $("#settings-form").addEventListener("submit", submitSettings);
  $("#delete-room-btn").addEventListener("click", deleteRoom);
  $("#leave-btn").addEventListener("click", leaveRoom);
  $("#back-btn").addEventListener("click", () => showRoom(null));
  $("#reply-cancel").addEventListener("click", () => { setReply(null); $("#message-input").focus(); });
  const search = debounce(() => runSearch(), 300);
  $("#search-q").addEventListener("input", search);
  $("#search-q").addEventListener("keydown", (e) => { if (e.key === "Escape") { e.preventDefault(); clearSearch(); } });
  $("#search-form").addEventListener("submit", (e) => { e.preventDefault(); runSearch(); });
  $("#search-more").addEventListener("click", () => runSearch(true));
  window.addEventListener("focus", () => maybeMarkRead());
  document.addEventListener("visibilitychange", () => maybeMarkRead());
  for (const btn of document.querySelectorAll("dialog [data-close]")) {
    btn.addEventListener("click", () => btn.closest("dialog").close());
  }

  const input = $("#message-input");
  const grow = () => { input.style.height = "auto"; input.style.height = `${Math.min(input.scrollHeight, 200)}px`; };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("#composer").requestSubmit();
    } else if (e.key === "Escape" && S.replyTo) {
      e.preventDefault();
      setReply(null);
    } else if (e.key === "ArrowUp" && !input.value && editLastOwn()) {
      e.preventDefault();
    }
  });
  input.addEventListener("input", () => {
    grow();
    const now = Date.now();
    if (input.value && S.current && now - S.lastTypingSent > TYPING_EVERY_MS) {
      if (socket.send({ type: "typing", room_id: S.current })) S.lastTypingSent = now;
    }
  });
  $("#composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const body = input.value;
    if (!body.trim()) return;
    input.value = "";
    grow();
    S.lastTypingSent = 0;
    sendText(body);
  });
  $("#file-input").addEventListener("change", (e) => {
    uploadFiles([...e.target.files]);
    e.target.value = "";
  });

  const pane = $("#room-pane");
  const overlay = $("#drop-overlay");
  let depth = 0;
  const hasFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes("Files");
  pane.addEventListener("dragenter", (e) => { if (!S.current || !hasFiles(e)) return; depth += 1; overlay.hidden = false; });
  pane.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) overlay.hidden = true; });
  pane.addEventListener("dragover", (e) => { if (S.current && hasFiles(e)) e.preventDefault(); });
  pane.addEventListener("drop", (e) => {
    depth = 0; overlay.hidden = true;
    if (!S.current || !hasFiles(e)) return;
    e.preventDefault();
    uploadFiles([...e.dataTransfer.files]);
  });
}

wire();
if (api.loggedIn) enterChat(); else showAuth();
