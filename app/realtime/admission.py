"""Admission control for WebSocket connects: a storm becomes a queue, not a pegged core (spec F).

Per server process, at most WS_ADMIT_CONCURRENCY connects are being set up at once (from the
upgrade until their `hello` is queued: the room list, the hello's reads); up to WS_ADMIT_QUEUE
more wait for a slot, in arrival order. A connect beyond that is accepted and closed at once
with 1013 (Try Again Later) and the reason `retry_after_ms=<n>`: n is WS_ADMIT_RETRY_MS plus
random jitter up to as much again, so refused clients do not all come back in the same instant
(docs/api.md, WebSocket). Refusing costs one close frame: far less than a set-up.
"""

from __future__ import annotations

import asyncio
import random

CLOSE_TRY_AGAIN = 1013


class Admission:
    """A bounded set-up slot pool with a bounded wait queue (one per process, one event loop)."""

    __slots__ = ("slots", "queue", "retry_ms", "waiting", "refused")

    def __init__(self, concurrency: int, queue: int, retry_ms: int) -> None:
        self.slots = asyncio.Semaphore(concurrency)  # fair: waiters are served in arrival order
        self.queue = queue
        self.retry_ms = retry_ms
        self.waiting = 0
        self.refused = 0  # connects told to retry (a counter for logs and tests)

    async def enter(self) -> bool:
        """Take a set-up slot, waiting in the queue if need be; False when the queue is full
        (then close with `retry_reason()`). A True must be paired with one `leave()`."""
        if self.slots.locked() and self.waiting >= self.queue:
            self.refused += 1
            return False
        self.waiting += 1
        try:
            await self.slots.acquire()  # a waiter cancelled (client gone) leaves the queue
        finally:
            self.waiting -= 1
        return True

    def leave(self) -> None:
        self.slots.release()

    def retry_reason(self) -> str:
        return f"retry_after_ms={self.retry_ms + random.randint(0, self.retry_ms)}"
