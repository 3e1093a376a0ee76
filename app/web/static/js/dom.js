// Tiny DOM helpers. User text only ever goes in through textContent (never innerHTML).
"use strict";

export const $ = (sel, root = document) => root.querySelector(sel);

// h("li.msg", {dataset: {seq: 1}, onclick}, child, "text", ...): strings become text nodes.
export function h(tag, props = {}, ...children) {
  const [name, ...classes] = tag.split(".");
  const el = document.createElement(name || "div");
  if (classes.length) el.className = classes.join(" ");
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function debounce(fn, ms) {
  let t = null;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

export function formatSize(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function timeOf(iso) {
  return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export function dayKey(iso) {
  const d = new Date(iso);
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

export function dayLabel(iso) {
  const d = new Date(iso);
  const today = new Date();
  const yesterday = new Date(Date.now() - 86400000);
  if (dayKey(d) === dayKey(today)) return "Today";
  if (dayKey(d) === dayKey(yesterday)) return "Yesterday";
  return d.toLocaleDateString([], { weekday: "long", year: "numeric", month: "long", day: "numeric" });
}

// A stable colour class per user id, so avatars are recognisable without inline styles.
export function colourClass(id) {
  let n = 0;
  for (const ch of String(id)) n = (n * 31 + ch.charCodeAt(0)) >>> 0;
  return `c${n % 8}`;
}

export function initial(name) {
  const ch = (name || "?").trim().charAt(0);
  return ch ? ch.toUpperCase() : "?";
}

// A body as text nodes with each @mention in a span (the rule of app/mentions.py: not after a
// word character, 3-32 username characters, trailing . and - are punctuation, not the name).
const MENTION = /(?<![\p{L}\p{N}_@])@([A-Za-z0-9_.-]{3,32})/gu;

export function bodyNodes(text, myName) {
  const out = [];
  let at = 0;
  for (const m of text.matchAll(MENTION)) {
    const name = m[1].replace(/[.-]+$/, "");
    if (name.length < 3) continue;
    if (m.index > at) out.push(document.createTextNode(text.slice(at, m.index)));
    const mine = !!myName && name.toLowerCase() === myName;
    out.push(h(`span.mention${mine ? ".mention-self" : ""}`, { text: `@${name}` }));
    at = m.index + 1 + name.length;
  }
  if (at < text.length) out.push(document.createTextNode(text.slice(at)));
  return out;
}

// A search snippet with its highlights as <mark> nodes, built from the server's offsets
// (never from HTML the server sends). Offsets count code points, as Python does; ranges
// that overlap, run backwards or fall outside the text are clipped or dropped.
export function highlightNodes(text, ranges) {
  const chars = Array.from(text);
  const spans = (Array.isArray(ranges) ? ranges : [])
    .filter((r) => Array.isArray(r) && Number.isInteger(r[0]) && Number.isInteger(r[1]))
    .map(([a, b]) => [Math.max(0, a), Math.min(chars.length, b)])
    .filter(([a, b]) => b > a)
    .sort((x, y) => x[0] - y[0]);
  const out = [];
  let at = 0;
  for (const [a0, b] of spans) {
    const a = Math.max(a0, at);
    if (b <= a) continue;
    if (a > at) out.push(document.createTextNode(chars.slice(at, a).join("")));
    out.push(h("mark", { text: chars.slice(a, b).join("") }));
    at = b;
  }
  if (at < chars.length) out.push(document.createTextNode(chars.slice(at).join("")));
  return out;
}

// What a quote of a message shows: its text, else its file's name (as the server's excerpt).
export function excerptOf(m, max = 120) {
  if (!m || m.deleted) return "";
  const text = m.body || (m.file ? m.file.name : "");
  const chars = Array.from(text);
  return chars.length > max ? chars.slice(0, max).join("") : text;
}
