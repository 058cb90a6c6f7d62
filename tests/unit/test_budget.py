"""The upload budget: many concurrent holders never exceed it, and all of them finish."""

from __future__ import annotations

import asyncio

from appliance.api.budget import ByteBudget


async def test_concurrent_holders_stay_within_the_budget() -> None:
    budget = ByteBudget(10)
    inside = 0
    most = 0

    async def upload(n: int) -> None:
        nonlocal inside, most
        async with budget.hold(n):
            inside += n
            most = max(most, inside)
            await asyncio.sleep(0.001)
            inside -= n

    await asyncio.gather(*(upload(n) for n in [4, 3, 5, 2, 6, 1] * 20))
    assert most <= 10 and budget.peak <= 10 and budget.used == 0


async def test_an_oversized_request_runs_alone_instead_of_waiting_forever() -> None:
    budget = ByteBudget(10)
    async with budget.hold(50):
        assert budget.used == 10
    assert budget.used == 0
