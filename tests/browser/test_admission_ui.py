"""The web client under admission control (docs/api.md, WebSocket): a connect closed with
1013 `retry_after_ms=<n>` comes back after n ms plus jitter, not on the backoff schedule,
and is not taken for a handshake failure. The first connect after a reload is answered with
that close by Playwright's WebSocket route (as a busy server answers); every later one
reaches the real server."""

from __future__ import annotations

import re
import time
from typing import Any, Callable

from tests.browser.stack import Person, WebStack

WAIT_MS = 1500


def test_a_try_again_later_close_reconnects_after_the_wait_it_names(person: Callable[..., Person],
                                                                    web: WebStack) -> None:
    alice = person(display_name="Alice")
    page = alice.page
    refused: list[float] = []
    passed: list[float] = []
    me_calls: list[float] = []

    def route(ws: Any) -> None:
        if not refused:
            refused.append(time.monotonic())
            ws.close(code=1013, reason=f"retry_after_ms={WAIT_MS}")
        else:
            passed.append(time.monotonic())
            ws.connect_to_server()

    page.on("request", lambda r: me_calls.append(time.monotonic()) if r.url.endswith("/users/me") else None)
    page.route_web_socket(re.compile(r".*/ws\?token=.*"), route)
    page.reload()
    page.wait_for_selector("body[data-socket=online]", timeout=20000)
    assert refused and passed
    waited = passed[0] - refused[0]
    # n ms plus the client's jitter of up to n more (and the token fetch before the socket).
    assert WAIT_MS / 1000 <= waited <= 2 * WAIT_MS / 1000 + 3, waited
    # Not a handshake failure: the client did not go checking its login in between.
    assert not [t for t in me_calls if refused[0] <= t <= passed[0]]
