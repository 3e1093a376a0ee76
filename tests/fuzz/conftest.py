"""Fuzz fixtures: one real server process for the fuzz module, with a registered user."""

from __future__ import annotations

from typing import Iterator

import httpx
import pytest

from tests.support import OwnServers, ServerProc


@pytest.fixture(scope="module")
def fuzz_server(own_server: OwnServers, tmp_path_factory: pytest.TempPathFactory) -> ServerProc:
    """A server of its own (own log, own MEDIA_ROOT), so a 5xx in its log is the fuzzer's doing."""
    return own_server(name="fuzz-server", MEDIA_ROOT=str(tmp_path_factory.mktemp("fuzz-media")))


@pytest.fixture(scope="module")
def fuzz_api(fuzz_server: ServerProc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_server.base_url, timeout=15.0) as client:
        yield client
