"""A new agent against an older appliance (rdr_agent/compat.py): only the older appliance's
refusal of a field it does not know makes the agent commit again without that field."""

from __future__ import annotations

import asyncio

import pytest

from rdr_agent import compat
from rdr_agent.errors import ApplianceError


class _Client:
    """Refuses every field in `unknown` as the appliance before sources did, then commits."""

    def __init__(self, unknown: set[str], other: ApplianceError | None = None) -> None:
        self.unknown, self.other, self.bodies = unknown, other, []

    async def commit(self, sid: str, body: dict) -> dict:
        self.bodies.append(dict(body))
        if self.other is not None:
            raise self.other
        extra = sorted(set(body) & self.unknown)
        if extra:
            raise ApplianceError(400, "bad_field", f"unknown field {extra[0]!r}")
        return {"snapshot": "S1"}


BODY = {"catalog": {}, "source": ["/etc"], "source_name": "nightly"}


def test_the_older_appliance_refusal_is_retried_without_source_name() -> None:
    c = _Client({"source_name"})
    assert asyncio.run(compat.commit(c, "sid", BODY)) == {"snapshot": "S1"}
    assert [sorted(b) for b in c.bodies] == [sorted(BODY), ["catalog", "source"]]
    assert BODY["source_name"] == "nightly"  # the caller's body is left alone


def test_a_current_appliance_commits_once() -> None:
    c = _Client(set())
    asyncio.run(compat.commit(c, "sid", BODY))
    assert c.bodies == [BODY]


@pytest.mark.parametrize("exc", [
    ApplianceError(400, "bad_field", "field 'source_name' must be a source name"),
    ApplianceError(400, "bad_field", "unknown field 'catalog'"),
    ApplianceError(409, "bad_field", "unknown field 'source_name'"),
    ApplianceError(400, "unproven_chunks", "unknown field 'source_name'"),
])
def test_other_refusals_are_not_retried(exc: ApplianceError) -> None:
    c = _Client(set(), other=exc)
    with pytest.raises(ApplianceError):
        asyncio.run(compat.commit(c, "sid", BODY))
    assert len(c.bodies) == 1
