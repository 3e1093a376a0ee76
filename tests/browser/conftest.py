"""Browser suite: Debian's Chromium driven by Playwright against a real server and worker.

Never `playwright install` (it downloads a browser): the system Chromium is used, with the
flags that stop it from calling out to the internet. The server runs on a fixed free port so
a test can restart it in place (the clients then reconnect to the same address).
The stack and the browser-side person live in tests/browser/stack.py (tests import them there).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.browser.stack import CHROMIUM, CHROMIUM_ARGS, Person, WebStack
from tests.env import TEST_ENV
from tests.factories import TestUser, make_user

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser" in str(item.fspath):
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebStack]:
    media = tmp_path_factory.mktemp("web-media")
    # A server message limit below the textarea's (4000): lets a test see a refused send.
    stack = WebStack({**TEST_ENV, "MEDIA_ROOT": str(media), "MESSAGE_MAX_CHARS": "1000"})
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(f"Chromium is not installed at {CHROMIUM} (.ci/run installs the `chromium` package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def person(chromium: Any, web: WebStack) -> Iterator[Callable[..., Person]]:
    made: list[Person] = []

    def make(display_name: str | None = None, user: TestUser | None = None,
             viewport: dict[str, int] | None = None, login: bool = True) -> Person:
        u = user or make_user(web.api, display_name=display_name)
        p = Person(chromium, web, u, viewport or {"width": 1280, "height": 800})
        made.append(p)
        return p.login() if login else p

    yield make
    for p in made:
        try:
            assert not p.errors, f"uncaught errors in {p.user.username}'s page: {p.errors}"
        finally:
            p.close()

