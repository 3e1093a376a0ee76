// The message list of the open room: grouped by sender and day, pending sends and uploads
// at the bottom, older pages prepended without the view jumping.
"use strict";

import { h, formatSize, timeOf, dayKey, dayLabel, colourClass, initial, bodyNodes, excerptOf } from "./dom.js";

const GROUP_GAP_MS = 5 * 60 * 1000;
// The picker's handful; anything else is typed into its box.
export const COMMON_EMOJI = ["\u{1F44D}", "\u2764\uFE0F", "\u{1F602}", "\u{1F389}", "\u{1F62E}", "\u{1F622}", "\u{1F440}", "\u{1F64F}"];

export class Timeline {
  constructor(opts) {
    this.o = opts;
    this.list = opts.list;
    this.scroller = opts.scroller;
    this.cache = new Map(); // "m<seq>" -> element, kept while the room is open
    this.roomId = null;
    this.stick = true;
    this.editing = null;     // {seq, draft, saving, error}: the inline edit box
    this.picking = null;     // seq whose reaction picker is open
    this.dividerAfter = null; // "new messages" line after this seq (the read marker at opening)
    this.scroller.addEventListener("scroll", () => {
      this.stick = this.distanceFromBottom() < 80;
      if (this.scroller.scrollTop < 150) this.o.onNearTop();
      this.o.onScrolled();
    });
  }

  atBottom() { return this.distanceFromBottom() < 80; }

  // A message changed (edit, delete, reaction, a quote's original): built again next render.
  invalidate(seq) { this.cache.delete(`m${seq}`); }

  distanceFromBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight;
  }

  clear() {
    this.cache.clear();
    this.list.replaceChildren();
    this.roomId = null;
    this.editing = null;
    this.picking = null;
    this.dividerAfter = null;
    this.setStatus("");
  }

  setStatus(text) { this.o.status.textContent = text; }

  stickToBottom() { this.stick = true; }

  toBottom() { this.scroller.scrollTop = this.scroller.scrollHeight; }

  // Run fn (which prepends older messages) keeping what the reader looks at in place.
  keepPosition(fn) {
    const s = this.scroller;
    const fromBottom = s.scrollHeight - s.scrollTop;
    const stick = this.stick;
    this.stick = false;
    fn();
    s.scrollTop = s.scrollHeight - fromBottom;
    this.stick = stick;
  }

  render(roomId, msgs, pending, uploads) {
    if (roomId !== this.roomId) { this.cache.clear(); this.roomId = roomId; }
    const me = this.o.me();
    const items = [];
    let prev = null;
    let day = null;
    let divided = this.dividerAfter === null;
    // A rebuilt message must not steal the caret from an edit box or the picker's input.
    const active = document.activeElement;
    const focusKey = active && this.list.contains(active) ? active.dataset.fk : null;
    const sel = focusKey && "selectionStart" in active ? [active.selectionStart, active.selectionEnd] : null;
    for (const m of msgs) {
      const d = dayKey(m.created_at);
      if (d !== day) {
        day = d;
        prev = null;
        items.push(h("li.day", { role: "separator" }, h("span", { text: dayLabel(m.created_at) })));
      }
      if (!divided && m.seq > this.dividerAfter) {
        divided = true;
        items.push(h("li.new-divider", { role: "separator", "aria-label": "New messages" }, h("span", { text: "New messages" })));
        prev = null;
      }
      let el = this.cache.get(`m${m.seq}`);
      if (!el) { el = this.message(m); this.cache.set(`m${m.seq}`, el); }
      const cont = prev && prev.kind !== "system" && m.kind !== "system" && prev.sender_id === m.sender_id
        && Date.parse(m.created_at) - Date.parse(prev.created_at) < GROUP_GAP_MS;
      el.classList.toggle("cont", !!cont);
      el.classList.toggle("mine", !!me && m.sender_id === me.id);
      items.push(el);
      prev = m;
    }
    for (const p of pending) items.push(this.pendingItem(p, me));
    for (const u of uploads) items.push(this.uploadItem(u));
    this.list.replaceChildren(...items);
    if (focusKey && !active.isConnected) {
      const again = this.list.querySelector(`[data-fk="${CSS.escape(focusKey)}"]`);
      if (again) { again.focus(); if (sel && "setSelectionRange" in again) again.setSelectionRange(sel[0], sel[1]); }
    }
    if (this.stick) this.toBottom();
  }

  // Bring one message into view (a quote's original, a search hit) and flash it.
  focusMessage(seq) {
    const el = this.list.querySelector(`li.msg[data-seq="${Number(seq)}"]`);
    if (!el) return false;
    this.stick = false;
    el.scrollIntoView({ block: "center" });
    el.classList.remove("flash");
    void el.offsetWidth; // restart the animation
    el.classList.add("flash");
    setTimeout(() => el.classList.remove("flash"), 2000);
    return true;
  }

  // Opening a room with unread messages: the "new messages" line near the top, unless all fits.
  toDivider() {
    const d = this.list.querySelector(".new-divider");
    if (!d) { this.toBottom(); return; }
    const s = this.scroller;
    const top = d.getBoundingClientRect().top - s.getBoundingClientRect().top + s.scrollTop - 48;
    s.scrollTop = Math.min(Math.max(0, top), s.scrollHeight);
    this.stick = this.atBottom();
  }

  head(senderId, createdAt) {
    return h("div.msg-head", {},
      h("span.sender", { dataset: { uid: senderId }, text: this.o.nameOf(senderId) }),
      createdAt ? h("time", { datetime: createdAt, title: new Date(createdAt).toLocaleString(), text: timeOf(createdAt) }) : null);
  }

  avatar(senderId) {
    return h(`span.avatar.${colourClass(senderId)}`, { "aria-hidden": "true", dataset: { uid: senderId } },
      initial(this.o.nameOf(senderId)));
  }

  message(m) {
    if (m.kind === "system") {
      return h("li.msg.system", { dataset: { seq: m.seq } },
        h("span.msg-body", { text: m.body }), h("time", { datetime: m.created_at, text: timeOf(m.created_at) }));
    }
    const me = this.o.me();
    const myName = me ? me.username.toLowerCase() : null;
    if (m.deleted) {
      return h("li.msg.deleted", { dataset: { seq: m.seq, sender: m.sender_id } }, this.avatar(m.sender_id),
        h("div.msg-content", {}, this.head(m.sender_id, m.created_at),
          h("div.msg-tombstone", { text: "message deleted" })));
    }
    const body = h("div.msg-content", {}, this.head(m.sender_id, m.created_at));
    if (m.reply_to) body.append(this.quote(m.reply_to));
    if (m.file) body.append(this.attachment(m));
    const editing = this.editing && this.editing.seq === m.seq ? this.editing : null;
    if (editing) body.append(this.editBox(m, editing));
    else if (m.body || m.edited_at) {
      // The mark sits after the text (not in the head, which a grouped message hides).
      body.append(h("div.msg-text", {}, h("span.msg-body", {}, ...bodyNodes(m.body, myName)),
        m.edited_at ? h("span.edited", { title: `Edited ${new Date(m.edited_at).toLocaleString()}`, text: " (edited)" }) : null));
    }
    if (m.reactions.length) body.append(this.reactions(m));
    if (this.picking === m.seq) body.append(this.picker(m));
    const mentioned = !!myName && m.mentions.includes(myName) && m.sender_id !== me.id;
    return h(`li.msg${mentioned ? ".mention-me" : ""}`, { dataset: { seq: m.seq, sender: m.sender_id } },
      this.avatar(m.sender_id), body, this.actions(m));
  }

  // The message's menu: what this viewer may do with it (edit/delete own, delete any as a moderator).
  actions(m) {
    const me = this.o.me();
    const own = !!me && m.sender_id === me.id;
    const act = (name, label, icon) => h(`button.msg-action.act-${name}`, {
      type: "button", title: label, "aria-label": label, dataset: { action: name },
      onclick: (e) => { e.stopPropagation(); this.o.onAction(name, m); },
    }, h("span", { "aria-hidden": "true" }, icon));
    return h("div.msg-actions", { role: "toolbar", "aria-label": "Message actions" },
      act("react", "Add a reaction", "\u263A"),
      act("reply", "Reply", "\u21A9"),
      own && m.kind === "text" ? act("edit", "Edit", "\u270E") : null,
      own || this.o.canModerate() ? act("delete", "Delete", "\u2715") : null);
  }

  quote(q) {
    const original = this.o.original(q.seq);
    // The loaded original is fresher than the quote a live event carried (taken at send time).
    const deleted = original ? !!original.deleted : !!q.deleted;
    const text = original ? excerptOf(original) : q.excerpt;
    return h(`button.quote${deleted ? ".gone" : ""}`, {
      type: "button", dataset: { replySeq: q.seq }, title: "Show the original message",
      onclick: () => this.o.onQuote(q.seq),
    },
    h("span.quote-name", { text: deleted ? "" : this.o.nameOf(q.sender_id) }),
    h("span.quote-text", { text: deleted ? "deleted message" : text }));
  }

  reactions(m) {
    const me = this.o.me();
    return h("ul.reactions", { "aria-label": "Reactions" }, ...m.reactions.map((r) => {
      const mine = reactedByMe(r, me);
      const who = (r.user_ids || []).map((id) => this.o.nameOf(id)).join(", ");
      return h("li", {}, h(`button.reaction${mine ? ".mine" : ""}`, {
        type: "button", "aria-pressed": String(mine), dataset: { emoji: r.emoji },
        title: who ? `${who} reacted with ${r.emoji}` : r.emoji,
        onclick: () => this.o.onReact(m, r.emoji, !mine),
      }, h("span.reaction-emoji", { text: r.emoji }), h("span.reaction-count", { text: String(r.count) })));
    }), h("li", {}, h("button.reaction.reaction-add", {
      type: "button", title: "Add a reaction", "aria-label": "Add a reaction", onclick: () => this.o.onAction("react", m),
    }, "+")));
  }

  picker(m) {
    const input = h("input.picker-input", {
      type: "text", maxlength: "32", placeholder: "Any emoji", "aria-label": "Emoji", autocomplete: "off",
      dataset: { fk: `pick-${m.seq}` },
    });
    const close = () => this.o.onAction("react", m); // toggles the picker shut
    const form = h("form.picker-form", {
      onsubmit: (e) => { e.preventDefault(); const v = input.value.trim(); if (v) this.o.onReact(m, v, true); },
    }, input, h("button.small", { type: "submit" }, "Add"));
    return h("div.picker", {
      role: "group", "aria-label": "Pick a reaction",
      onkeydown: (e) => { if (e.key === "Escape") { e.preventDefault(); close(); } },
    },
    ...COMMON_EMOJI.map((emoji) => h("button.picker-emoji", {
      type: "button", "aria-label": `React with ${emoji}`, dataset: { emoji }, onclick: () => this.o.onReact(m, emoji, true),
    }, emoji)), form);
  }

  editBox(m, ed) {
    const box = h("textarea.edit-input", {
      rows: "2", maxlength: "4000", "aria-label": "Edit message", dataset: { fk: `edit-${m.seq}` }, disabled: ed.saving,
    });
    box.value = ed.draft;
    box.addEventListener("input", () => { ed.draft = box.value; });
    box.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); this.o.onEditSave(m, box.value); }
      else if (e.key === "Escape") { e.preventDefault(); this.o.onEditCancel(); }
    });
    return h("div.edit", {}, box,
      h("div.edit-hint", {},
        ed.error ? h("span.edit-error", { role: "alert", text: `${ed.error} ` }) : null,
        ed.saving ? h("span", { text: "Saving\u2026" }) : h("span", {},
          "Enter to ", h("button.link-btn", { type: "button", onclick: () => this.o.onEditSave(m, box.value) }, "save"),
          " \u00b7 Esc to ", h("button.link-btn", { type: "button", onclick: () => this.o.onEditCancel() }, "cancel"))));
  }

  attachment(m) {
    const f = m.file;
    if (f.expired) {
      return h("div.file.expired", {}, h("span.file-icon", { "aria-hidden": "true" }, "\u231b"),
        h("span", { text: `${f.name} \u00b7 expired` }));
    }
    if (m.kind === "image" && f.thumbnail_url) {
      const img = h("img.thumb", { alt: f.name });
      img.addEventListener("load", () => { if (this.stick) this.toBottom(); });
      this.o.links(f).then((l) => { if (l.thumbnail_url) img.src = l.thumbnail_url; }, () => { img.alt = `${f.name} (unavailable)`; });
      return h("button.thumb-btn", { type: "button", "aria-label": `Open image ${f.name}`, onclick: () => this.o.onImage(m) }, img);
    }
    const link = h("a.file", { href: "#", download: f.name },
      h("span.file-icon", { "aria-hidden": "true" }, "\u{1F4C4}"),
      h("span.file-name", { text: f.name }), h("span.muted", { text: ` ${formatSize(f.size)}` }));
    let fresh = null;
    const refresh = () => this.o.links(f).then((l) => { link.href = l.url; fresh = l; return l; });
    refresh().catch(() => {});
    link.addEventListener("click", async (e) => {
      // A link still valid for a while is followed as it is (a download); an expired one
      // is renewed first, then clicked again.
      if (fresh && Date.parse(fresh.expires_at) - Date.now() > 10000) return;
      e.preventDefault();
      try { await refresh(); link.click(); } catch { /* shown as is */ }
    });
    return link;
  }

  pendingItem(p, me) {
    const state = p.state === "failed"
      ? h("span.send-state.failed", {}, h("span", { text: `Not sent${p.error ? `: ${p.error}` : ""}. ` }),
        h("button.link-btn", { type: "button", onclick: () => this.o.onRetry(p.client_id) }, "Retry"),
        " \u00b7 ",
        h("button.link-btn", { type: "button", onclick: () => this.o.onDiscard(p.client_id) }, "Discard"))
      : h("span.send-state", { text: "Sending\u2026" });
    return h("li.msg.pending.mine", { dataset: { clientId: p.client_id } },
      me ? this.avatar(me.id) : null,
      h("div.msg-content", {}, me ? this.head(me.id, null) : null, p.reply ? this.quote(p.reply) : null,
        h("div.msg-body", { text: p.body }), state));
  }

  uploadItem(u) {
    const labels = { uploading: `Uploading\u2026 ${Math.round(u.progress * 100)}%`, processing: "Processing\u2026" };
    const text = u.state === "rejected" ? `Rejected: ${u.reason}` : u.state === "failed" ? `Upload failed: ${u.reason}`
      : labels[u.state] || u.state;
    const done = u.state === "rejected" || u.state === "failed";
    return h("li.msg.upload.mine", { dataset: { uploadId: u.id } },
      h("div.msg-content", {},
        h("div.file", {}, h("span.file-icon", { "aria-hidden": "true" }, "\u2b06"),
          h("span.file-name", { text: u.name }), h("span.muted", { text: ` ${formatSize(u.size)}` })),
        u.state === "uploading" ? h("progress", { max: "1", value: String(u.progress) }) : null,
        h(`span.upload-state${done ? ".failed" : ""}`, { text: text }),
        done ? h("button.link-btn", { type: "button", onclick: () => this.o.onDiscardUpload(u.id) }, " Discard") : null));
  }

  updateUpload(u) {
    const li = this.list.querySelector(`li[data-upload-id="${CSS.escape(u.id)}"]`);
    if (!li) return;
    const bar = li.querySelector("progress");
    if (bar) bar.value = u.progress;
    const st = li.querySelector(".upload-state");
    if (st && u.state === "uploading") st.textContent = `Uploading\u2026 ${Math.round(u.progress * 100)}%`;
  }

  // Display names became known: update them in place (images are not reloaded).
  renameAll() {
    for (const el of this.list.querySelectorAll(".sender[data-uid]")) el.textContent = this.o.nameOf(el.dataset.uid);
    for (const el of this.list.querySelectorAll(".avatar[data-uid]")) el.textContent = initial(this.o.nameOf(el.dataset.uid));
  }
}

// Stored-form reactions (live events) carry no `me`: the user ids say it.
export function reactedByMe(r, me) {
  if (Array.isArray(r.user_ids) && me) return r.user_ids.includes(me.id);
  return !!r.me;
}
