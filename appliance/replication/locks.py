"""How long the data center's copy stays locked, and which lock each object holds.

Every object replication writes to a bucket with Object Lock is locked in compliance mode:
nobody -- not the appliance, not whoever steals its credentials, not the data center's
administrator -- can delete it or shorten its lock before the date. The date must cover as
long as retention could still want the object: the retention horizon (how old the oldest
snapshot a policy keeps can be when backups run daily: ``days + 7 x weeks + 31 x months``
days, 167 for 8-5-4) plus a margin.

Objects still referenced get their lock extended before it runs out. Extending object by
object as each nears its date would cost a request per object per pass; instead, as Veeam's
"block generations" do, objects written in the same period (a *generation*, 10 days by
default) share one date: the generation's end + horizon + margin. When a generation's date
comes within horizon + one generation of now, its objects still referenced move, together,
to the current generation's date; the unreferenced ones are left to expire. So every
referenced object is always locked at least a horizon ahead (as of each pass), and each costs
one extension request about every margin.

The lock book (tables ``dc_locks``, ``dc_lock_generations``) is this appliance's record of
what it locked; the truth is the bucket's (`rdr dc verify --locks` reads it back).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ..config import ReplicationConfig
from ..store.index import Index
from ..store.retention import Policy

DAY = 86400.0

DDL = """
CREATE TABLE IF NOT EXISTS dc_lock_generations (
    generation INTEGER PRIMARY KEY,
    retain_until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dc_locks (
    name TEXT PRIMARY KEY,
    ref TEXT NOT NULL,
    generation INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dc_locks_generation ON dc_locks (generation, name);
CREATE INDEX IF NOT EXISTS dc_locks_ref ON dc_locks (ref);
"""


def horizon_days(policies: Iterable[str]) -> float:
    """The oldest a snapshot kept by any of POLICIES can be, with daily backups."""
    out = 0.0
    for text in policies:
        p = Policy.parse(text)
        out = max(out, p.daily + 7 * p.weekly + 31 * p.monthly)
    return out


@dataclass(frozen=True, slots=True)
class LockSettings:
    horizon_seconds: float
    margin_seconds: float
    generation_seconds: float

    def generation(self, now: float) -> int:
        return math.floor(now / self.generation_seconds)

    def until(self, generation: int) -> float:
        return (generation + 1) * self.generation_seconds + self.horizon_seconds \
            + self.margin_seconds

    def due_before(self, now: float) -> float:
        """Generations locked until before this date are extended now. The new date, the
        current generation's, is at least now + horizon + margin: later, since the config
        keeps the generation no longer than the margin (compliance locks only lengthen)."""
        return now + self.horizon_seconds + self.generation_seconds


def settings_for(cfg: ReplicationConfig, default_policy: str, index: Index) -> LockSettings:
    """The lock dates the config asks for; the horizon, unless set, from the default
    retention policy and every host's own (asked each pass: a host given a longer policy
    gets longer locks from the next generation)."""
    horizon = cfg.lock_horizon_days or horizon_days(
        [default_policy, *(p for p in (index.host_policy(h) for h in index.host_names())
                           if p)])
    return LockSettings(horizon * DAY, cfg.lock_margin_days * DAY,
                        cfg.lock_generation_days * DAY)


class LockBook:
    def __init__(self, index: Index) -> None:
        self.index = index
        index.own_tables(DDL)

    def current(self, settings: LockSettings, now: float | None = None) -> tuple[int, float]:
        """The generation objects written now belong to, and its date (fixed when the
        generation is first used: a changed setting applies from the next one)."""
        gen = settings.generation(time.time() if now is None else now)
        with self.index.tx() as db:
            db.execute("INSERT OR IGNORE INTO dc_lock_generations VALUES (?, ?)",
                       (gen, settings.until(gen)))
            until = db.execute("SELECT retain_until FROM dc_lock_generations "
                               "WHERE generation = ?", (gen,)).fetchone()[0]
        return gen, until

    def record(self, rows: list[tuple[str, str]], generation: int) -> None:
        """(name, ref) objects locked in GENERATION; written before the upload, so a kill
        leaves at worst a row whose object never arrived (its extension finds it missing)."""
        with self.index.tx() as db:
            db.executemany("INSERT OR REPLACE INTO dc_locks VALUES (?, ?, ?)",
                           [(n, r, generation) for n, r in rows])

    def adopt(self, rows: list[tuple[str, str]]) -> None:
        """(name, ref) objects that reached the data center another way (a seed disk,
        written there under the bucket's default retention): in a generation already due
        (-1, dated 0), so the next extension locks them like the rest."""
        with self.index.tx() as db:
            db.execute("INSERT OR IGNORE INTO dc_lock_generations VALUES (-1, 0)")
            db.executemany("INSERT OR IGNORE INTO dc_locks VALUES (?, ?, -1)", rows)

    def due(self, before: float) -> list[tuple[int, float]]:
        return [(g, u) for g, u in self.index.query(
            "SELECT generation, retain_until FROM dc_lock_generations "
            "WHERE retain_until < ? AND generation IN (SELECT generation FROM dc_locks) "
            "ORDER BY generation", (before,))]

    def members(self, generation: int, after: str = "", limit: int = 1000
                ) -> list[tuple[str, str]]:
        return [(n, r) for n, r in self.index.query(
            "SELECT name, ref FROM dc_locks WHERE generation = ? AND name > ? "
            "ORDER BY name LIMIT ?", (generation, after, limit))]

    def move(self, names: list[str], generation: int) -> None:
        with self.index.tx() as db:
            db.executemany("UPDATE dc_locks SET generation = ? WHERE name = ?",
                           [(generation, n) for n in names])

    def drop(self, names: list[str]) -> None:
        with self.index.tx() as db:
            db.executemany("DELETE FROM dc_locks WHERE name = ?", [(n,) for n in names])

    def drop_refs(self, refs: list[str]) -> None:
        """Stop extending the objects of REFS (a snapshot pruned, chunks nothing uses)."""
        with self.index.tx() as db:
            db.executemany("DELETE FROM dc_locks WHERE ref = ?", [(r,) for r in refs])

    def forget_empty_generations(self, keep: int) -> None:
        with self.index.tx() as db:
            db.execute("DELETE FROM dc_lock_generations WHERE generation < ? AND generation "
                       "NOT IN (SELECT DISTINCT generation FROM dc_locks)", (keep,))

    def stats(self) -> dict:
        """Objects this appliance keeps locked and the earliest date among them."""
        n, earliest = self.index.query(
            "SELECT COUNT(*), MIN(g.retain_until) FROM dc_locks l "
            "JOIN dc_lock_generations g USING (generation)")[0]
        return {"objects": n, "earliest_retain_until": earliest}
