// HTTP side of the client: tokens, JSON calls with the API's error envelope, uploads.
//
// Tokens live in sessionStorage: they survive a reload of the tab but not its closing, and
// two tabs can be two different people (handy for trying the app). localStorage would keep a
// 30-day refresh token on disk after the tab is gone. Either is readable by script on this
// origin, which is why the page runs under a strict CSP and never inserts user text as HTML.
"use strict";

const KEY = "chat.session";

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code || "http_error";
    this.details = details || {};
  }
}

export class Api {
  constructor() {
    this.session = null;
    try { this.session = JSON.parse(sessionStorage.getItem(KEY) || "null"); } catch { this.session = null; }
    this.onAuthLost = () => {};
    this.refreshing = null;
    this.timer = null;
    if (this.session) this.schedule();
  }

  get loggedIn() { return !!(this.session && this.session.refresh_token); }

  save(pair) {
    const ttl = Math.max(1, Number(pair.expires_in) || 900) * 1000;
    this.session = {
      access_token: pair.access_token, refresh_token: pair.refresh_token,
      expires_at: Date.now() + ttl, ttl,
    };
    sessionStorage.setItem(KEY, JSON.stringify(this.session));
    this.schedule();
  }

  clear() {
    this.session = null;
    sessionStorage.removeItem(KEY);
    clearTimeout(this.timer);
  }

  // Refresh when about 80% of the access token's life has passed (at least 10 s early).
  schedule() {
    clearTimeout(this.timer);
    if (!this.session) return;
    const margin = Math.max(10000, this.session.ttl * 0.2);
    const delay = Math.max(1000, this.session.expires_at - Date.now() - margin);
    this.timer = setTimeout(() => this.refresh().catch(() => {}), delay);
  }

  lost(message) {
    this.clear();
    this.onAuthLost(message);
  }

  // One refresh at a time: the refresh token rotates, a second concurrent use would be a reuse.
  refresh() {
    if (!this.refreshing) this.refreshing = this._refresh().finally(() => { this.refreshing = null; });
    return this.refreshing;
  }

  async _refresh() {
    if (!this.session) throw new ApiError(401, "not_logged_in", "Not logged in.");
    let res;
    try {
      res = await fetch("/auth/refresh", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ refresh_token: this.session.refresh_token }),
      });
    } catch (err) {
      // Offline: keep the session and try again soon; the token may still be valid.
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.refresh().catch(() => {}), 5000);
      throw new ApiError(0, "network_error", "The server cannot be reached.");
    }
    const body = await res.json().catch(() => ({}));
    if (res.ok) { this.save(body); return this.session.access_token; }
    const code = body.error && body.error.code;
    if (res.status === 401 || res.status === 403) {
      this.lost(code === "refresh_token_reused"
        ? "For your safety you were logged out: this session's refresh token was used twice (possibly from another device)."
        : "Your session has ended. Please log in again.");
      throw new ApiError(res.status, code, body.error && body.error.message);
    }
    // Anything else (503 while a backing service is down, 429): the session is still good.
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh().catch(() => {}), 5000);
    throw new ApiError(res.status, code, body.error && body.error.message);
  }

  async freshToken() {
    if (!this.session) throw new ApiError(401, "not_logged_in", "Not logged in.");
    if (this.session.expires_at - Date.now() < 30000) await this.refresh();
    return this.session.access_token;
  }

  async req(method, path, body, { auth = true, retry = true } = {}) {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (auth) headers.Authorization = `Bearer ${await this.freshToken()}`;
    let res;
    try {
      res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch {
      throw new ApiError(0, "network_error", "The server cannot be reached.");
    }
    if (res.status === 401 && auth) {
      if (retry && this.session) {
        await this.refresh();
        return this.req(method, path, body, { auth, retry: false });
      }
      this.lost("Your session has ended. Please log in again.");
    }
    if (res.status === 204) return null;
    const data = await res.json().catch(() => null);
    if (!res.ok) {
      const e = (data && data.error) || {};
      throw new ApiError(res.status, e.code, e.message, e.details);
    }
    return data;
  }

  async login(username, password) {
    this.save(await this.req("POST", "/auth/login", { username, password }, { auth: false }));
  }

  async register(username, password, displayName) {
    const body = { username, password };
    if (displayName) body.display_name = displayName;
    await this.req("POST", "/auth/register", body, { auth: false });
    await this.login(username, password);
  }

  async logout() {
    const s = this.session;
    if (s) {
      try {
        await fetch("/auth/logout", {
          method: "POST",
          headers: { "Content-Type": "application/json", Authorization: `Bearer ${s.access_token}` },
          body: JSON.stringify({ refresh_token: s.refresh_token }),
        });
      } catch { /* offline: the tokens are forgotten here anyway */ }
    }
    this.clear();
  }

  // Multipart upload with progress events (fetch has no upload progress; XHR does).
  async upload(roomId, file, { clientId, onProgress }, retry = true) {
    const token = await this.freshToken();
    const res = await new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", `/rooms/${encodeURIComponent(roomId)}/files`);
      xhr.setRequestHeader("Authorization", `Bearer ${token}`);
      xhr.upload.onprogress = (ev) => { if (ev.lengthComputable) onProgress(ev.loaded / ev.total); };
      xhr.onload = () => resolve(xhr);
      xhr.onerror = () => reject(new ApiError(0, "network_error", "The upload failed: the server cannot be reached."));
      const form = new FormData();
      if (clientId) form.append("client_id", clientId);
      form.append("file", file, file.name);
      xhr.send(form);
    });
    let data = null;
    try { data = JSON.parse(res.responseText); } catch { data = null; }
    if (res.status === 401 && retry) { await this.refresh(); return this.upload(roomId, file, { clientId, onProgress }, false); }
    if (res.status === 401) this.lost("Your session has ended. Please log in again.");
    if (res.status < 200 || res.status >= 300) {
      const e = (data && data.error) || {};
      throw new ApiError(res.status, e.code, e.message || `Upload failed (HTTP ${res.status}).`, e.details);
    }
    return data;
  }
}
