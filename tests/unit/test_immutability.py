"""Object Lock bookkeeping and the audit log without a server: lock dates from the retention
policies, generations, what a locking pass writes and never deletes, the audit chain (the
real store with Object Lock is tests/integration/test_immutability.py)."""

from __future__ import annotations

import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from appliance import wiring
from appliance.audit.log import AuditLog, verify_chain
from appliance.dcobjects import tombstone_name
from appliance.errors import BadRequest
from appliance.health.metrics import ApplianceCollector, LiveState
from appliance.replication.engine import Replicator
from appliance.replication.locks import DAY, LockBook, LockSettings, horizon_days
from appliance.replication.targets import DirTarget
from appliance.restores.ledger import RestoreLedger
from appliance.store.datastore import Datastore
from rdr_format.objects import ObjectCipher, snapshot_names

from ..conftest import make_config
from .test_lifecycle import commit_files
from .test_replication import KEY, files


def test_horizon_from_the_retention_policies() -> None:
    """The oldest snapshot a policy keeps with daily backups: days + 7 weeks + 31 months."""
    assert horizon_days(["8-5-4"]) == 8 + 35 + 124 == 167
    assert horizon_days(["7-0-0"]) == 7 and horizon_days(["30-0-0"]) == 30
    assert horizon_days(["7-0-0", "8-5-4", "30-0-0"]) == 167  # the longest in use
    s = LockSettings(167 * DAY, 30 * DAY, 10 * DAY)
    gen = s.generation(1000 * DAY + 3)
    assert gen == 100 and s.until(gen) == (101 * 10 + 167 + 30) * DAY
    # due once fewer than horizon + one generation are left
    assert s.due_before(1000 * DAY) == (1000 + 167 + 10) * DAY


def test_lock_book_generations(tmp_path: Path) -> None:
    st = Datastore(tmp_path / "data", reserve_bytes=0)
    try:
        book = LockBook(st.index)
        s = LockSettings(100.0, 20.0, 10.0)
        gen, until = book.current(s, now=1005.0)
        assert (gen, until) == (100, 1010.0 + 120.0)
        # A generation's date is fixed when first used (a setting changed later applies to
        # the next generation).
        assert book.current(LockSettings(1.0, 1.0, 10.0), now=1009.0) == (100, 1130.0)
        book.record([("c/a", "c:1"), ("c/b", "c:2"), ("k/x", "s:h/s")], gen)
        assert book.stats() == {"objects": 3, "earliest_retain_until": 1130.0}
        assert book.due(1130.0) == [] and book.due(1130.5) == [(100, 1130.0)]
        assert book.members(100, "", 2) == [("c/a", "c:1"), ("c/b", "c:2")]
        book.move(["c/a"], 101)
        book.drop_refs(["s:h/s"])
        book.drop(["c/b"])
        assert book.members(100) == [] and book.members(101) == [("c/a", "c:1")]
        book.forget_empty_generations(101)
        assert book.due(1e12) == []  # 100 is gone; 101 has no date row yet
        # Objects a seed disk brought: due at once, so the next pass extends them.
        book.adopt([("c/s", "c:3")])
        assert book.due(0.5) == [(-1, 0.0)] and book.members(-1) == [("c/s", "c:3")]
    finally:
        st.close()


class LockingDir(DirTarget):
    """A directory that pretends to lock: records each object's date, refuses deletes."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.locks: dict[str, float] = {}
        self.extended: list[str] = []

    async def object_lock(self) -> bool:
        return True

    async def put(self, name: str, data: bytes, retain_until: float | None = None) -> None:
        assert retain_until is not None, f"{name} written without a lock"
        self.locks[name] = retain_until
        await super().put(name, data)

    async def extend(self, name: str, retain_until: float) -> None:
        assert retain_until >= self.locks[name]
        self.locks[name] = retain_until
        self.extended.append(name)

    async def delete(self, name: str) -> None:
        raise AssertionError(f"deleted {name} from a locked bucket")


def replicator(store: Datastore, target, pool, policy: str = "8-5-4") -> Replicator:
    cfg = make_config(store.root)
    cfg.retention.policy = policy
    return wiring.replicator(cfg, store, wiring.replication_state(store), wiring.samples(store),
                             wiring.pending_seed(store), pool, target)


async def test_a_locking_pass_locks_everything_and_releases_instead_of_deleting(
        tmp_path: Path) -> None:
    st = Datastore(tmp_path / "data", reserve_bytes=0)
    st.add_host("web01")
    (tmp_path / "data" / "replication.key").write_bytes(KEY.hex().encode())
    (tmp_path / "data" / "replication.key").chmod(0o600)
    try:
        first = commit_files(st, "web01", files(3, 1)).snapshot
        commit_files(st, "web01", files(2, 2))
        target = LockingDir(tmp_path / "dc")
        with ThreadPoolExecutor(2) as pool:
            rep = replicator(st, target, pool)
            res = await rep.run_pass()
            assert res.immutable is True and res.snapshots_replicated == 2
            now = time.time()
            assert len(target.locks) == res.objects_sent + 6
            for until in target.locks.values():  # generation end + 167 + 30 days
                assert now + 197 * DAY - 60 < until <= now + 207 * DAY
            st.remove_snapshot("web01", first)  # a forced prune
            res = await rep.run_pass()
        assert res.snapshots_released_at_dc == 1 and res.chunks_released_at_dc == 3 + 2
        assert res.snapshots_removed_at_dc == res.chunks_removed_at_dc == 0
        cipher = ObjectCipher(KEY)
        k_name = snapshot_names(cipher, "web01", first)[2]
        assert tombstone_name(k_name) in target.locks
        assert (tmp_path / "dc" / k_name).exists()  # still there, until its lock ends
        assert target.extended == []  # nothing due yet
        status = wiring.replication_state(st)
        assert status.immutable() is True
    finally:
        st.close()


async def test_a_directory_is_not_immutable_and_metrics_say_so(tmp_path: Path) -> None:
    st = Datastore(tmp_path / "data", reserve_bytes=0)
    st.add_host("web01")
    try:
        commit_files(st, "web01", files(1, 3))
        cfg = make_config(tmp_path / "data")
        with ThreadPoolExecutor(2) as pool:
            res = await replicator(st, DirTarget(tmp_path / "dc"), pool).run_pass()
        assert res.immutable is False and res.snapshots_replicated == 1
        # The embedded default made its data key: that is in the audit log.
        [rec] = wiring.audit_log(st).records()
        assert (rec.kind, rec.actor, rec.detail) == ("key", "appliance",
                                                     {"replication_key": "created"})
        state = wiring.replication_state(st)
        assert state.immutable() is False
        collector = ApplianceCollector(wiring.summary(cfg, st, state=state), LiveState(),
                                       history=wiring.job_history(st),
                                       ledger=RestoreLedger(st.index),
                                       plans=wiring.plans(st))
        names = {m.name: m for m in collector.collect()}
        assert names["rdr_replication_immutable"].samples[0].value == 0
        assert wiring.summary(cfg, st, state=state).overview()["replication"][
            "immutable"] is False
    finally:
        st.close()


def test_audit_log_is_append_only_and_chained(tmp_path: Path) -> None:
    st = Datastore(tmp_path / "data", reserve_bytes=0)
    try:
        log = AuditLog(st.index)
        log.record("prune", "scheduler", {"count": 2})
        log.record("hold_lift", "page:admin", {"host": "web01"})
        log.record("credential", "cli:root", {"api_token": "prom", "action": "revoke"})
        assert log.verify() is None
        assert [r.seq for r in log.records()] == [1, 2, 3]
        assert [r.seq for r in log.unsent()] == [1, 2, 3]
        log.mark_sent(2)
        assert [r.seq for r in log.unsent()] == [3]
        with pytest.raises(BadRequest):
            log.record("anything", "x")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"), st.index.tx() as db:
            db.execute("UPDATE audit_log SET actor = 'nobody' WHERE seq = 2")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"), st.index.tx() as db:
            db.execute("DELETE FROM audit_log WHERE seq = 2")
        # Someone with the database in hand drops the triggers: the chain shows it.
        with st.index.tx() as db:
            db.execute("DROP TRIGGER audit_log_no_update")
            db.execute("UPDATE audit_log SET detail = '{\"count\": 1}' WHERE seq = 1")
        assert log.verify() == "record 1 does not match its hash chain"
        records = log.records()
        assert verify_chain(records[1:]) == "record 1 is missing (next is 2)"
    finally:
        st.close()


def test_lock_settings_are_checked(tmp_path: Path) -> None:
    """A generation longer than the margin could make an extension ask for an earlier date,
    which a compliance lock refuses: the config says so at load."""
    from appliance.config import ConfigError, load

    p = tmp_path / "a.toml"
    p.write_text("[replication]\nlock_generation_days = 10.0\nlock_margin_days = 5.0\n")
    with pytest.raises(ConfigError, match="no longer than the margin"):
        load(p)
    p.write_text("[replication]\nlock_horizon_days = 7.0\n")
    assert load(p).replication.lock_horizon_days == 7.0
