"""A burst of concurrent HTTP sends: every one accepted, seqs gap-free (no 503 from pool limits)."""

from __future__ import annotations

import asyncio

import httpx

from tests.factories import make_room, make_user


async def test_300_concurrent_http_sends_are_all_accepted(api: httpx.Client, server) -> None:
    owner = make_user(api)
    room = make_room(api, owner)["id"]
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30, limits=limits) as client:
        async def send(n: int) -> httpx.Response:
            return await client.post(f"/rooms/{room}/messages", json={"body": f"m{n}", "client_id": f"b{n}"},
                                     headers=owner.headers)

        replies = await asyncio.gather(*(send(n) for n in range(300)))
    assert [r.status_code for r in replies] == [201] * 300, {r.status_code: r.text for r in replies}
    assert sorted(r.json()["seq"] for r in replies) == list(range(1, 301))
