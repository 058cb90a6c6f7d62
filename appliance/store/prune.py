"""Prune: apply each host's retention plan, per backup source, under guards that keep what
must not go.

The policy counts per (host, source) (rdr_format.sources): a host that backs up its paths
daily and a database dump weekly keeps D-W-M of each, so the frequent kind never pushes the
rare kind out. The plan (retention.plan) says which snapshots the contract keeps; the guards
only ever add keeps: the newest snapshot of each source, snapshots an admin protected,
snapshots the caller holds (``held``: a feature's reason, such as the clean snapshots before
a suspicious one; ``force`` does not override it), and --
when replication is on -- snapshots not yet replicated to the data center (``force``
overrides only that guard, with the reason saying so). Every decision carries its reason
and its source, because "why is last Tuesday gone?" is a question the provider must be able
to answer.
"""

from __future__ import annotations

from collections.abc import Collection
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
    source: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def decide(rows: list[SnapshotRow], policy: Policy, tz: str, *, replication_required: bool,
           force: bool = False, held: Collection[tuple[str, str]] = ()) -> list[Decision]:
    """Decisions for one host's snapshots: per source, each oldest first."""
    by_source: dict[str, list[SnapshotRow]] = {}
    for r in rows:
        by_source.setdefault(r.source or "", []).append(r)
    out: list[Decision] = []
    for source in sorted(by_source):
        out += _decide_source(by_source[source], policy, tz,
                              replication_required=replication_required, force=force,
                              held=held)
    return out


def _decide_source(rows: list[SnapshotRow], policy: Policy, tz: str, *,
                   replication_required: bool, force: bool,
                   held: Collection[tuple[str, str]] = ()) -> list[Decision]:
    """Decisions for the snapshots of one source of one host (oldest first)."""
    times = {r.snapshot: datetime.fromtimestamp(r.received_at, UTC) for r in rows}
    verdict = plan(list(times.values()), policy, tz)
    newest = max(rows, key=lambda r: (r.received_at, r.snapshot)).snapshot
    out = []
    for r in sorted(rows, key=lambda r: (r.received_at, r.snapshot)):
        rule = verdict[times[r.snapshot]]
        when = times[r.snapshot].isoformat()
        if rule != REMOVE:
            keep, reason = True, f"kept by the {rule} rule of {policy}"
        elif r.snapshot == newest:
            keep, reason = True, "the newest snapshot of a source is never removed"
        elif r.protected:
            keep, reason = True, "protected by an admin"
        elif (r.host, r.snapshot) in held:
            keep, reason = True, ("held until an admin lifts the hold (a suspicious "
                                  "snapshot, or a clean one before it)")
        elif replication_required and r.replicated_at is None and not force:
            keep, reason = True, "not replicated to the data center yet"
        elif replication_required and r.replicated_at is None:
            keep, reason = False, (f"outside {policy}; NOT replicated yet, removed because "
                                   "of --force")
        else:
            keep, reason = False, f"outside {policy}"
        out.append(Decision(r.host, r.snapshot, when, keep, rule, reason, r.source or ""))
    return out


def per_source(decisions: list[Decision]) -> list[dict]:
    """What a prune keeps of each (host, source), in decision order: `rdr prune`'s headings
    and the prune job's record (a scheduled prune says it too)."""
    out: dict[tuple[str, str], dict] = {}
    for d in decisions:
        g = out.setdefault((d.host, d.source), {"host": d.host, "source": d.source,
                                                 "kept": 0, "of": 0})
        g["kept"] += d.keep
        g["of"] += 1
    return list(out.values())


class Pruner:
    def __init__(self, store, *, default_policy: str, tz: str,
                 replication_required: bool,
                 held: Collection[tuple[str, str]] = frozenset()) -> None:
        """`held`: (host, snapshot) ids kept whatever the policy says (the caller's
        feature decides which; the engine only keeps them)."""
        self.store = store
        self.held = held
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
                          replication_required=self.replication_required, force=force,
                          held=self.held)
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
