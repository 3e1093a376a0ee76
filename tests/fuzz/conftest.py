"""Fuzz fixtures: one real server process for the fuzz module, with a registered user."""

from __future__ import annotations

from typing import Iterator

import httpx
import pytest

from tests.env import RUN_ID, TEST_ENV
from tests.support import ServerProc


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """A server of its own (own log, own MEDIA_ROOT), so a 5xx in its log is the fuzzer's doing."""
    env = {**TEST_ENV, "MEDIA_ROOT": str(tmp_path_factory.mktemp("fuzz-media"))}
    with ServerProc(env, name=f"fuzz-server-{RUN_ID}") as proc:
        yield proc


@pytest.fixture(scope="module")
def fuzz_api(fuzz_server: ServerProc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_server.base_url, timeout=15.0) as client:
        yield client
