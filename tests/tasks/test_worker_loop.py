"""WORKER_UVLOOP: the worker's event loop (made by Dramatiq's AsyncIO middleware) is uvloop's."""

from __future__ import annotations

import asyncio

import uvloop

from tasks.broker import FastEventLoop, broker
from dramatiq.middleware import AsyncIO


def _made_loop(enabled: bool) -> asyncio.AbstractEventLoop:
    before = asyncio.get_event_loop_policy()
    # A fresh worker process starts on the stdlib policy; earlier tests in this process
    # (Sanic's) may have left uvloop's installed.
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    try:
        FastEventLoop(enabled).before_worker_boot(None, None)
        return asyncio.new_event_loop()  # what AsyncIO's EventLoopThread calls
    finally:
        asyncio.set_event_loop_policy(before)


def test_the_worker_loop_is_uvloop_unless_turned_off() -> None:
    loop = _made_loop(True)
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
    loop = _made_loop(False)
    try:
        assert not isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_the_policy_is_set_before_asyncio_makes_its_loop() -> None:
    kinds = [type(m) for m in broker.middleware]
    assert kinds.index(FastEventLoop) < kinds.index(AsyncIO)
