"""New backups refused while the appliance is degraded: the health side of admission.

The datastore asks one admission policy before it opens a new session. The daemon's policy
is this one in front of the watermarks (capacity/watermarks.Admission): a missing or failing
data disk refuses with 503 before the disk's fill level is even read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..store.errors import Unavailable


class RefuseWhileDegraded:
    """Refuses (503) while DEGRADED (reason -> message, kept current by the daemon's
    watchers) has an entry; otherwise asks THEN (the watermarks: 507 past the hard one)."""

    def __init__(self, degraded: Mapping[str, str], then: Callable[[], None] | None) -> None:
        self.degraded = degraded
        self.then = then

    def __call__(self) -> None:
        if self.degraded:
            raise Unavailable("degraded", "the appliance is degraded: "
                              + "; ".join(self.degraded.values())
                              + ". New backups are refused until it recovers")
        if self.then is not None:
            self.then()
