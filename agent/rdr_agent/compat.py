"""Talking to an appliance of an older release than the agent.

An agent is updated on its own schedule, host by host, and often before the appliance: a
new agent must keep working against the appliance it finds. The appliance checks a commit's
fields strictly (an unknown field is a 400 ``bad_field``, so a typo never passes silently),
so a field a newer release added is refused by an older one. Each such field is listed here
with what the agent does without it.
"""

from __future__ import annotations

import logging

from rdr_agent.client import ApplianceClient
from rdr_agent.errors import ApplianceError

log = logging.getLogger("rdr.agent.backup")

#: Commit fields newer than some appliances, with what is lost when one is dropped. The
#: appliance before backup sources (issue 22) refuses ``source_name``; it derives nothing,
#: so the snapshot is kept with its paths only (the appliance's later upgrade gives it a
#: source from them: docs/FORMATS.md, "Backup sources"). The appliance before ransomware
#: detection (issue 26) refuses ``compression``, the per-extension compression summary.
OPTIONAL_COMMIT_FIELDS = {
    "source_name": "the appliance predates backup sources: the snapshot is kept without "
                   "its source name (retention and 'latest' there are per host)",
    "compression": "the appliance takes no compression summary: committing without it "
                   "(its ransomware check, if any, goes without the compression signal)",
}


def refused_field(exc: ApplianceError) -> str | None:
    """The optional commit field an older appliance refused as unknown, if that is what
    `exc` is (400 bad_field, "unknown field 'NAME'")."""
    if exc.status != 400 or exc.code != "bad_field":
        return None
    for name in OPTIONAL_COMMIT_FIELDS:
        if f"unknown field {name!r}" in exc.message:
            return name
    return None


async def commit(client: ApplianceClient, sid: str, body: dict) -> dict:
    """Commit the session; when the appliance refuses an optional field as unknown (it is
    older than the agent), commit again without it, saying once what that loses. The first
    refusal changed nothing on the appliance (the body is checked before anything is
    written), so the session is still open for the second commit."""
    while True:
        try:
            return await client.commit(sid, body)
        except ApplianceError as exc:
            name = refused_field(exc)
            if name is None or name not in body:
                raise
            log.warning("%s", OPTIONAL_COMMIT_FIELDS[name])
            body = {k: v for k, v in body.items() if k != name}
