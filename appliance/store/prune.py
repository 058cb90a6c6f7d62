"""Prune: apply each host's retention plan, under guards that keep what must not go.

The plan (retention.plan) says which snapshots the contract keeps; the guards only ever add
keeps: a host's newest snapshot, snapshots an admin protected, and -- when replication is on --
snapshots not yet replicated to the data center (``force`` overrides only that guard, with the
reason saying so). Every decision carries its reason, because "why is last Tuesday gone?" is a
question the provider must be able to answer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from .index import SnapshotRow
from .progress import Progress
from .retention import REMOVE, Policy, plan


@dataclass(slots=True)
class Decision:
    host: str
    snapshot: str
    received_at: str
    keep: bool
    rule: str  # "daily" | "weekly" | "monthly" | "remove"
    reason: str

    def to_json(self) -> dict:
        return asdict(self)


def decide(rows: list[SnapshotRow], policy: Policy, tz: str, *, replication_required: bool,
           force: bool = False) -> list[Decision]:
    """Decisions for one host's snapshots (oldest first)."""
    if not rows:
        return []
    times = {r.snapshot: datetime.fromtimestamp(r.received_at, UTC) for r in rows}
    verdict = plan(list(times.values()), policy, tz)
    newest = max(rows, key=lambda r: (r.received_at, r.snapshot)).snapshot
    out = []
    for r in sorted(rows, key=lambda r: (r.received_at, r.snapshot)):
        rule = verdict[times[r.snapshot]]
        when = times[r.snapshot].isoformat()
        if rule != REMOVE:
            d = Decision(r.host, r.snapshot, when, True, rule, f"kept by the {rule} rule of "
                         f"{policy}")
        elif r.snapshot == newest:
            d = Decision(r.host, r.snapshot, when, True, rule,
                         "the newest snapshot of a host is never removed")
        elif r.protected:
            d = Decision(r.host, r.snapshot, when, True, rule, "protected by an admin")
        elif replication_required and r.replicated_at is None and not force:
            d = Decision(r.host, r.snapshot, when, True, rule,
                         "not replicated to the data center yet")
        elif replication_required and r.replicated_at is None:
            d = Decision(r.host, r.snapshot, when, False, rule,
                         f"outside {policy}; NOT replicated yet, removed because of --force")
        else:
            d = Decision(r.host, r.snapshot, when, False, rule, f"outside {policy}")
        out.append(d)
    return out


class Pruner:
    def __init__(self, store, *, default_policy: str, tz: str,
                 replication_required: bool) -> None:
        self.store = store
        self.default_policy = default_policy
        self.tz = tz
        self.replication_required = replication_required

    def policy_for(self, host: str) -> Policy:
        """The host's retention; a removed host's snapshots (`rdr hosts remove`) the
        default's."""
        idx = self.store.index
        own = idx.host_policy(host) if idx.host_exists(host) else None
        return Policy.parse(own or self.default_policy)

    def plan(self, hosts: list[str] | None = None, force: bool = False) -> list[Decision]:
        idx = self.store.index
        out: list[Decision] = []
        every = sorted({*idx.host_names(), *(r.host for r in idx.snapshots())})
        for host in hosts if hosts is not None else every:
            out += decide(idx.snapshots(host), self.policy_for(host), self.tz,
                          replication_required=self.replication_required, force=force)
        return out

    def run(self, progress: Progress, hosts: list[str] | None = None, dry_run: bool = False,
            force: bool = False) -> list[Decision]:
        if not dry_run:
            self.store.finish_removals()  # what a killed prune left half done
        decisions = self.plan(hosts, force)
        doomed = [d for d in decisions if not d.keep]
        if not dry_run:
            for i, d in enumerate(doomed):
                if self.store.remove_snapshot(d.host, d.snapshot, keep_protected=True):
                    progress((i + 1) / len(doomed), f"removed {d.host}/{d.snapshot}")
                elif self.store.index.snapshot(d.host, d.snapshot) is not None:
                    # Protected since the plan was made: the row's delete re-checks it.
                    d.keep, d.reason = True, "protected by an admin while prune ran"
        return decisions
