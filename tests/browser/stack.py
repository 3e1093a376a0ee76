"""The browser suite's stack and people (a support module, not a test module or conftest).

`WebStack` is a server (restartable on its own port, so clients reconnect to the same address)
and a worker sharing one MEDIA_ROOT; `Person` is one user in their own Chromium context, which
records every request that tries to leave the machine, every alert and every page error.
tests/browser/conftest.py builds them into fixtures; tests import the types from here.
"""

from __future__ import annotations

import os
from typing import Any, Callable
from urllib.parse import urlsplit

import httpx

from tests.env import RUN_ID
from tests.factories import TestUser
from tests.support import ROOT, Proc, ServerProc, free_port, worker_argv

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--metrics-recording-only",
                 "--no-default-browser-check", "--disable-features=Translate,MediaRouter,OptimizationHints"]
SCREENSHOTS = ROOT / "var" / "screenshots"


class WebStack:
    """A server (restartable on its port) and a worker sharing one MEDIA_ROOT."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.port = free_port()
        self.server = self._start_server()
        self.worker = Proc(f"web-worker-{RUN_ID}", worker_argv(processes=1, threads=2), env)
        self.base_url = self.server.base_url
        self.api = httpx.Client(base_url=self.base_url, timeout=20.0)

    def _start_server(self) -> ServerProc:
        return ServerProc(self.env, name=f"web-server-{RUN_ID}", port=self.port).wait_ready()

    def restart_server(self, while_down: Callable[[], None] | None = None) -> None:
        """Stop the server process, run `while_down`, then start it again on the same port."""
        self.server.stop()
        if while_down:
            while_down()
        self.server = self._start_server()

    def close(self) -> None:
        self.api.close()
        self.worker.stop()
        self.server.stop()


class Person:
    """One user in their own browser context (own sessionStorage, cookies, network)."""

    def __init__(self, browser: Any, web: WebStack, user: TestUser, viewport: dict[str, int]) -> None:
        self.user = user
        self.web = web
        self.context = browser.new_context(viewport=viewport, base_url=web.base_url)
        self.context.set_default_timeout(15000)
        self.page = self.context.new_page()
        self.outside: list[str] = []   # requests that tried to leave the machine
        self.alerts: list[str] = []    # alert() calls (an XSS payload that ran)
        self.errors: list[str] = []    # uncaught page errors
        self.page.on("request", self._on_request)
        self.page.on("dialog", self._on_dialog)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _on_request(self, request: Any) -> None:
        host = urlsplit(request.url).hostname
        if request.url.startswith(("http:", "https:", "ws:", "wss:")) and host not in ("127.0.0.1", "localhost"):
            self.outside.append(request.url)

    def _on_dialog(self, dialog: Any) -> None:
        if dialog.type == "confirm":  # leave/delete confirmations are the app's own
            dialog.accept()
            return
        self.alerts.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def login(self) -> "Person":
        page = self.page
        page.goto("/")
        page.fill("#login-form input[name=username]", self.user.username)
        page.fill("#login-form input[name=password]", self.user.password)
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("#chat-view:not([hidden])")
        page.wait_for_selector("body[data-socket=online]")
        return self

    def open_room(self, name: str) -> None:
        self.page.locator(".room-item", has_text=name).first.click()
        self.page.wait_for_selector("#room-header:not([hidden])")

    def send(self, text: str) -> None:
        box = self.page.locator("#message-input")
        box.fill(text)
        box.press("Enter")

    def bodies(self) -> list[str]:
        """Texts of the shown (acknowledged) messages, in display order."""
        return self.page.eval_on_selector_all("#messages li.msg[data-seq] .msg-body", "els => els.map(e => e.textContent)")

    def seqs(self) -> list[int]:
        return [int(s) for s in self.page.eval_on_selector_all("#messages li.msg[data-seq]", "els => els.map(e => e.dataset.seq)")]

    def close(self) -> None:
        self.context.close()
