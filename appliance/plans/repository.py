"""Each host's backup plan, kept on the appliance and edited there (`rdr hosts set`, the
restore page): what the agent backs up, what it skips, how fast it may send on the LAN,
whether a database dump runs first, and whether the host's backups are paused. The window
start and retention policy stay on the hosts table, where the service-level ledger and prune
already read them.

The agent gets the plan with each backup run it claims, so an edit takes effect at the next
run without touching the host. Agents' signs of life (their polls) are kept here too: they
say whether a host that missed its window had its agent running at all.

This package owns its tables (`host_plans`, `plan_audit`, `agents`; `Index.own_tables`) and
mirrors each plan to a file of its own (``plans/HOST.json`` under the data directory), so
`rebuild-index` restores plans too; nothing else writes them.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rdr_format.fsutil import atomic_write
from rdr_format.sources import SourceError, check_explicit

from ..store.errors import NotFound, StoreError
from ..store.index import Index

MAX_PATHS = 100
MAX_PATH_BYTES = 4096
MAX_COMMAND = 4096
MAX_BANDWIDTH_KBPS = 100_000_000  # 100 Gbit/s: anything above is a typo

_DDL = """
CREATE TABLE IF NOT EXISTS host_plans (
    host TEXT PRIMARY KEY REFERENCES hosts(name) ON DELETE CASCADE,
    paths TEXT NOT NULL DEFAULT '[]',
    excludes TEXT NOT NULL DEFAULT '[]',
    one_file_system INTEGER NOT NULL DEFAULT 0,
    bandwidth_kbps INTEGER NOT NULL DEFAULT 0,
    dump_command TEXT,
    dump_name TEXT,
    timezone TEXT,
    paused INTEGER NOT NULL DEFAULT 0,
    updated_at REAL,
    source TEXT
);
CREATE TABLE IF NOT EXISTS plan_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    at REAL NOT NULL,
    who TEXT NOT NULL,
    field TEXT NOT NULL,
    old TEXT,
    new TEXT
);
CREATE INDEX IF NOT EXISTS plan_audit_host ON plan_audit(host, id);
CREATE TABLE IF NOT EXISTS agents (
    host TEXT PRIMARY KEY,
    last_seen REAL NOT NULL,
    version TEXT NOT NULL DEFAULT ''
);
"""
#: Columns later releases added to the plan table: (table, column, declaration).
_ADDED = (("host_plans", "source", "TEXT"),)
#: The plan columns, also the keys of a plan's mirror file.
_COLS = ("host, paths, excludes, one_file_system, bandwidth_kbps, dump_command, "
         "dump_name, timezone, paused, updated_at, source")


@dataclass(slots=True)
class HostPlan:
    """What a host backs up. `paths` empty: nothing is scheduled for the host (it may still
    run `rdr-agent backup` by hand)."""

    host: str
    paths: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)
    one_file_system: bool = False
    bandwidth_kbps: int = 0  # 0 = unlimited
    dump_command: str | None = None  # run first; its stdout is stored as `dump_name`
    dump_name: str | None = None
    timezone: str | None = None  # None = the appliance's
    paused: bool = False
    updated_at: float | None = None
    #: The backup source its scheduled backups are filed under (rdr_format.sources: an
    #: explicit name); None: the name derived from the paths.
    source: str | None = None

    def to_json(self) -> dict:
        return asdict(self)

    def to_agent_json(self) -> dict:
        """What the agent needs to run a backup (no bookkeeping)."""
        return {"paths": self.paths, "excludes": self.excludes,
                "one_file_system": self.one_file_system,
                "bandwidth_kbps": self.bandwidth_kbps, "dump_command": self.dump_command,
                "dump_name": self.dump_name, "source": self.source}


class PlanErrors(StoreError):
    """Every wrong field of one edit at once, so a form can show each beside its field:
    `fields` is [{"field", "message"}] in the form's order (an HTTP error body carries it)."""

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        super().__init__("bad_plan", "; ".join(f"{f}: {m}" for f, m in fields),
                         fields=[{"field": f, "message": m} for f, m in fields])
        self.fields = fields


def _str_list(name: str, value: object, absolute: bool) -> list[str]:
    """The list checked and without duplicates; ValueError says what is wrong."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of strings")
    if len(value) > MAX_PATHS:
        raise ValueError(f"at most {MAX_PATHS} {name}")
    out = []
    for v in value:
        if not v or "\0" in v or len(v.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
            raise ValueError(f"{v!r} is empty, too long or contains NUL")
        if absolute and (not v.startswith("/") or ".." in v.split("/")):
            raise ValueError(f"{v!r} must be an absolute path without '..'")
        out.append(v)
    return list(dict.fromkeys(out))


def _dump(cmd: object, name: object) -> tuple[str | None, str | None]:
    """(command, file name) of a dump; ValueError("field: why") names the wrong one."""
    cmd, name = cmd or None, name or None
    if cmd is None:
        return None, None
    if not isinstance(cmd, str) or "\0" in cmd or len(cmd) > MAX_COMMAND:
        raise ValueError(f"dump_command: must be a command line of at most {MAX_COMMAND} "
                         "characters")
    name = name or "dump.out"
    if not isinstance(name, str) or "/" in name or name in (".", "..") or "\0" in name \
            or len(name) > 255:
        raise ValueError("dump_name: must be a plain file name, e.g. db.sql")
    return cmd, name


def plan_errors(plan: HostPlan) -> list[tuple[str, str]]:
    """Check `plan` whole, normalising it in place; returns every wrong field with why
    (empty: the agent can carry it out), not only the first, so a form shows them all."""
    errors: list[tuple[str, str]] = []
    for name, absolute in (("paths", True), ("excludes", False)):
        try:
            setattr(plan, name, _str_list(name, getattr(plan, name), absolute))
        except ValueError as exc:
            errors.append((name, str(exc)))
    if not isinstance(plan.one_file_system, bool):
        errors.append(("one_file_system", "must be true or false"))
    bw = plan.bandwidth_kbps
    if type(bw) is not int or not 0 <= bw <= MAX_BANDWIDTH_KBPS:
        errors.append(("bandwidth_kbps", "must be a whole number of kbit/s (0 = unlimited)"))
    try:
        plan.dump_command, plan.dump_name = _dump(plan.dump_command, plan.dump_name)
    except ValueError as exc:
        field, _, why = str(exc).partition(": ")
        errors.append((field, why))
    if plan.timezone:
        try:
            if not isinstance(plan.timezone, str):
                raise ValueError
            ZoneInfo(plan.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            errors.append(("timezone", f"unknown time zone {plan.timezone!r}"))
    else:
        plan.timezone = None
    if plan.source:
        try:
            if not isinstance(plan.source, str):
                raise SourceError("must be a name")
            check_explicit(plan.source)
        except SourceError as exc:
            errors.append(("source", str(exc)))
    else:
        plan.source = None
    return errors


def check_plan(plan: HostPlan) -> HostPlan:
    """The plan, checked so an agent never receives one it cannot carry out (PlanErrors
    names every wrong field)."""
    errors = plan_errors(plan)
    if errors:
        raise PlanErrors(errors)
    return plan


def audit_text(value: object) -> str | None:
    """A plan value as the audit keeps it: text as it is, lists and flags as JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


#: The fields an edit may change, in the order they are audited and reported.
EDITABLE = ("paths", "excludes", "one_file_system", "bandwidth_kbps", "dump_command",
            "dump_name", "timezone", "source")


class BackupPlans:
    """Plans and agents' signs of life, on the appliance's index."""

    def __init__(self, index: Index, mirror_dir: Path | None = None) -> None:
        """`mirror_dir`: where each written plan is mirrored as ``HOST.json`` (the data
        directory's ``plans``), so `rebuild-index` restores plans too; None only for readers
        that never write a plan."""
        self.index = index
        self.mirror_dir = mirror_dir
        index.own_tables(_DDL, _ADDED)

    @staticmethod
    def _row(r: tuple) -> HostPlan:
        return HostPlan(r[0], json.loads(r[1]), json.loads(r[2]), bool(r[3]), r[4], r[5],
                        r[6], r[7], bool(r[8]), r[9], r[10])

    def get(self, host: str) -> HostPlan:
        """The host's plan (an empty one if it never had one)."""
        if not self.index.host_exists(host):
            raise NotFound("no_such_host", f"no host named {host!r}")
        rows = self.index.query(f"SELECT {_COLS} FROM host_plans WHERE host = ?", (host,))
        return self._row(rows[0]) if rows else HostPlan(host)

    def all(self) -> list[HostPlan]:
        """Plans of every host that has one."""
        return [self._row(r) for r in self.index.query(
            f"SELECT {_COLS} FROM host_plans ORDER BY host")]

    def prepare(self, host: str, changes: Mapping[str, object]
                ) -> tuple[HostPlan, list[tuple[str, str | None, str | None]]]:
        """The plan with `changes` applied and checked whole, and what changed (field, old,
        new as audit text), without writing it. NotFound for an unknown host; PlanErrors
        names every wrong field, unknown ones included."""
        plan = self.get(host)
        old = HostPlan(**asdict(plan))
        errors = [(key, "not a plan field") for key in changes if key not in EDITABLE]
        for key, value in changes.items():
            if key in EDITABLE:
                setattr(plan, key, value)
        errors += plan_errors(plan)
        if errors:
            raise PlanErrors(errors)
        diff = [(key, audit_text(getattr(old, key)), audit_text(getattr(plan, key)))
                for key in EDITABLE if getattr(old, key) != getattr(plan, key)]
        return plan, diff

    def update(self, host: str, actor: str = "unknown", *,
               extra: list[tuple[str, str | None, str | None]] = (), **changes: object
               ) -> list[tuple[str, str | None, str | None]]:
        """Change some fields of the plan (the others keep their values), checked whole;
        returns what changed, (field, old, new).

        Every changed field is audited in the same transaction -- the dump command above
        all, a command the host's agent runs as root where its owner allowed it: who
        (`actor`, e.g. ``account:alice``, ``token:ops``, ``cli:root``), when, the old and
        new value. `extra` adds changes kept elsewhere (retention, window) to the same
        audit entry. A field given with its current value is no change and not audited."""
        plan, diff = self.prepare(host, changes)
        diff = diff + list(extra)
        if not diff:
            return []
        plan.updated_at = time.time()
        self._put(plan, [(host, plan.updated_at, actor[:200], f, o, n) for f, o, n in diff])
        return diff

    def audit(self, host: str, limit: int = 20) -> list[dict]:
        """The latest audited plan changes of `host`, newest edit first, one row per changed
        field (the fields of one edit share `at` and `who`, in the form's order)."""
        keys = ("at", "who", "field", "old", "new")
        return [dict(zip(keys, r, strict=True)) for r in self.index.query(
            "SELECT at, who, field, old, new FROM plan_audit WHERE host = ? "
            "ORDER BY at DESC, id LIMIT ?", (host, limit))]

    def forget(self, host: str) -> None:
        """A removed host's plan and sign of life go (no more scheduled backups); its
        audit stays, the record of who changed its plan (its dump command above all)."""
        with self.index.tx() as db:
            db.execute("DELETE FROM host_plans WHERE host = ?", (host,))
            db.execute("DELETE FROM agents WHERE host = ?", (host,))
        if self.mirror_dir is not None:
            (self.mirror_dir / f"{host}.json").unlink(missing_ok=True)

    def set_paused(self, host: str, paused: bool) -> HostPlan:
        plan = self.get(host)
        plan.paused = paused
        plan.updated_at = time.time()
        self._put(plan)
        return plan

    def _put(self, p: HostPlan, audit: list[tuple] = ()) -> None:
        with self.index.tx() as db:
            db.executemany("INSERT INTO plan_audit (host, at, who, field, old, new) "
                           "VALUES (?, ?, ?, ?, ?, ?)", audit)
            db.execute(f"INSERT OR REPLACE INTO host_plans ({_COLS}) VALUES "
                       "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (p.host, json.dumps(p.paths), json.dumps(p.excludes),
                        int(p.one_file_system), p.bandwidth_kbps, p.dump_command, p.dump_name,
                        p.timezone, int(p.paused), p.updated_at, p.source))
        self._mirror(p)

    def _mirror(self, p: HostPlan) -> None:
        if self.mirror_dir is None:
            return
        rec = {"host": p.host, "paths": json.dumps(p.paths), "excludes": json.dumps(p.excludes),
               "one_file_system": int(p.one_file_system), "bandwidth_kbps": p.bandwidth_kbps,
               "dump_command": p.dump_command, "dump_name": p.dump_name,
               "timezone": p.timezone, "paused": int(p.paused), "updated_at": p.updated_at,
               "source": p.source}
        self.mirror_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.mirror_dir / f"{p.host}.json", json.dumps(rec).encode(), 0o600)

    def restore_mirrors(self, host_records: list[dict]) -> int:
        """After `rebuild-index`: put back the plans of the hosts in `host_records` (the
        store's host files) from their mirror files -- or, for a plan last written by a
        release before issue 21, from the host file's own ``plan`` entry. Returns how many."""
        cols = _COLS.split(", ")
        n = 0
        for rec in host_records:
            plan = rec.get("plan")
            if self.mirror_dir is not None:
                with contextlib.suppress(OSError, ValueError):
                    plan = json.loads((self.mirror_dir / f"{rec['name']}.json").read_bytes())
            if not isinstance(plan, dict) or plan.get("host") != rec["name"]:
                continue
            with self.index.tx() as db:
                db.execute(f"INSERT OR REPLACE INTO host_plans ({_COLS}) VALUES "
                           f"({', '.join('?' * len(cols))})", [plan.get(c) for c in cols])
            n += 1
        return n

    def host_settings(self) -> list[dict]:
        """The index's per-host settings (`Index.host_settings`) with each host's window
        time zone from its plan (None: the appliance's)."""
        zones = dict(self.index.query("SELECT host, timezone FROM host_plans"))
        return [{**h, "timezone": zones.get(h["name"])} for h in self.index.host_settings()]

    # --- agents' signs of life ----------------------------------------------------------
    def seen(self, host: str, version: str, now: float | None = None) -> None:
        with self.index.tx() as db:
            db.execute("INSERT OR REPLACE INTO agents (host, last_seen, version) "
                       "VALUES (?, ?, ?)", (host, time.time() if now is None else now,
                                            version[:100]))

    def agents(self) -> dict[str, dict]:
        """host -> {"last_seen", "version"} of every agent that ever polled."""
        return {h: {"last_seen": t, "version": v} for h, t, v in self.index.query(
            "SELECT host, last_seen, version FROM agents")}


#: An agent service that has not polled for this long is offline (it polls every 25 s or so).
AGENT_OFFLINE_AFTER = 120.0

#: The agent states, in the words the page and `rdr status` show.
AGENT_STATES = {
    "never": "never used: no backup has arrived and the agent service never polled",
    "cli": "used from the command line only: backups arrived, the agent service never polled",
    "online": "the agent service is polling",
    "offline": "the agent service stopped polling",
}


def agent_status(agent: dict | None, last_backup: float | None, now: float) -> dict:
    """What a host's agent is, from its service's last poll (`agent`, a row of
    `BackupPlans.agents`) and the newest backup that arrived from the host (`last_backup`).

    A poll is the only sign of the service: backups arrive from `rdr-agent backup` as well,
    so a host whose backups all came from its command line is "cli", not "never" -- the page
    used to say "never seen" after four backups from a host's shell."""
    if agent is not None:
        state = "online" if now - agent["last_seen"] < AGENT_OFFLINE_AFTER else "offline"
    else:
        state = "cli" if last_backup is not None else "never"
    return {"state": state, "online": state == "online", "describe": AGENT_STATES[state],
            "last_seen": agent["last_seen"] if agent else None,
            "version": agent["version"] if agent else None,
            "last_backup": last_backup}
