"""shared.retention.drain: a round goes on page after page until nothing is left, and never loops on what stays."""

from __future__ import annotations

from shared.retention import drain


async def test_drain_goes_on_until_no_page_is_left() -> None:
    todo = list(range(250))
    handled: list[int] = []

    async def fetch() -> list[int]:
        return todo[:100]

    async def handle(item: int) -> None:
        todo.remove(item)
        handled.append(item)

    assert await drain(fetch, handle) == 250
    assert handled == list(range(250))
    assert todo == []


async def test_drain_ends_the_round_on_what_cannot_be_done() -> None:
    stuck = {3, 7}
    todo = list(range(10))
    attempts: list[int] = []

    async def fetch() -> list[int]:
        return todo[:5]

    async def handle(item: int) -> None:
        attempts.append(item)
        if item not in stuck:
            todo.remove(item)

    assert await drain(fetch, handle) == 10
    assert todo == [3, 7]
    assert sorted(attempts) == list(range(10))  # each tried once, none for ever
