// The WebSocket: opened with a fresh token, reopened after any drop with exponential backoff
// and jitter, and watched with pings so a silently dead connection is noticed.
"use strict";

export class Socket {
  constructor(api, handlers) {
    this.api = api;
    this.h = handlers; // {onFrame, onState, onHandshakeFailed}
    this.ws = null;
    this.attempt = 0;
    this.stopped = true;
    this.state = "offline";
    this.nextRetryAt = 0;
    window.addEventListener("online", () => this.reconnectNow());
  }

  start() { this.stopped = false; this.open(); }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.pingTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws) { ws.onclose = null; ws.onmessage = null; try { ws.close(1000); } catch { /* closed */ } }
    this.setState("offline");
  }

  setState(state) {
    this.state = state;
    this.h.onState(state);
  }

  async open() {
    if (this.stopped || this.ws) return;
    clearTimeout(this.retryTimer);
    this.setState("connecting");
    let token;
    try {
      token = await this.api.freshToken();
    } catch {
      if (this.api.loggedIn) this.scheduleRetry();
      return;
    }
    if (this.stopped || this.ws) return;
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/ws?token=${encodeURIComponent(token)}`);
    this.ws = ws;
    this.greeted = false;
    this.lastFrame = Date.now();
    ws.onmessage = (ev) => {
      this.lastFrame = Date.now();
      let frame;
      try { frame = JSON.parse(ev.data); } catch { return; }
      if (frame.type === "hello") {
        this.greeted = true;
        this.attempt = 0;
        this.startPing(frame.heartbeat_s);
        this.setState("online");
      }
      this.h.onFrame(frame);
    };
    ws.onclose = (ev) => this.closed(ws, ev.code, ev.reason);
  }

  closed(ws, code, reason = "") {
    if (this.ws !== ws) return;
    this.ws = null;
    clearInterval(this.pingTimer);
    if (this.stopped) return;
    const greeted = this.greeted;
    this.setState("offline");
    if (code === 4401) {
      // The access token expired while connected: a new one, then straight back.
      this.api.refresh().then(() => this.open(), () => { if (this.api.loggedIn) this.scheduleRetry(); });
      return;
    }
    if (code === 1013) {
      // The server is busy setting up other connections (a reconnect storm): come back after
      // the wait it names, plus jitter of up to as much again, so refused clients spread out.
      const m = /retry_after_ms=(\d+)/.exec(reason || "");
      if (m) {
        const wait = Number(m[1]);
        this.retryIn(wait + Math.random() * wait);
        return;
      }
    }
    if (!greeted) this.h.onHandshakeFailed();
    this.scheduleRetry();
  }

  retryIn(delay) {
    clearTimeout(this.retryTimer);
    this.nextRetryAt = Date.now() + delay;
    this.setState("offline");
    this.retryTimer = setTimeout(() => this.open(), delay);
  }

  // 0.5 s, 1 s, 2 s ... capped at 30 s; each wait is randomised to between half and all of it,
  // so a restarted server is not hit by every client in the same instant.
  scheduleRetry() {
    clearTimeout(this.retryTimer);
    const base = Math.min(30000, 500 * 2 ** this.attempt);
    this.attempt += 1;
    this.retryIn(base / 2 + Math.random() * base / 2);
  }

  startPing(heartbeatS) {
    clearInterval(this.pingTimer);
    const every = Math.max(2, Number(heartbeatS) || 25) * 1000;
    this.pingTimer = setInterval(() => {
      const ws = this.ws;
      if (!ws) return;
      if (Date.now() - this.lastFrame > every * 2.5) {
        // Nothing heard for too long (sleep, lost network): give up on it now.
        ws.onclose = null;
        try { ws.close(4000, "stale"); } catch { /* already gone */ }
        this.closed(ws, 1006);
        return;
      }
      this.send({ type: "ping" });
    }, every);
  }

  get online() { return this.state === "online" && this.ws && this.ws.readyState === WebSocket.OPEN; }

  send(frame) {
    if (!this.online) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  reconnectNow() {
    if (this.stopped || this.ws) return;
    this.attempt = 0;
    this.open();
  }
}
