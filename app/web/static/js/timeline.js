// The message list of the open room: grouped by sender and day, pending sends and uploads
// at the bottom, older pages prepended without the view jumping.
"use strict";

import { h, formatSize, timeOf, dayKey, dayLabel, colourClass, initial } from "./dom.js";

const GROUP_GAP_MS = 5 * 60 * 1000;

export class Timeline {
  constructor(opts) {
    this.o = opts;
    this.list = opts.list;
    this.scroller = opts.scroller;
    this.cache = new Map(); // "m<seq>" -> element, kept while the room is open
    this.roomId = null;
    this.stick = true;
    this.scroller.addEventListener("scroll", () => {
      this.stick = this.distanceFromBottom() < 80;
      if (this.scroller.scrollTop < 150) this.o.onNearTop();
    });
  }

  distanceFromBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight;
  }

  clear() {
    this.cache.clear();
    this.list.replaceChildren();
    this.roomId = null;
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
    for (const m of msgs) {
      const d = dayKey(m.created_at);
      if (d !== day) {
        day = d;
        prev = null;
        items.push(h("li.day", { role: "separator" }, h("span", { text: dayLabel(m.created_at) })));
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
    if (this.stick) this.toBottom();
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
    const body = h("div.msg-content", {}, this.head(m.sender_id, m.created_at));
    if (m.file) body.append(this.attachment(m));
    if (m.body) body.append(h("div.msg-body", { text: m.body }));
    return h("li.msg", { dataset: { seq: m.seq, sender: m.sender_id } }, this.avatar(m.sender_id), body);
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
      h("div.msg-content", {}, me ? this.head(me.id, null) : null, h("div.msg-body", { text: p.body }), state));
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
