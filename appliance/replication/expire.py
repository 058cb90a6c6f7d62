"""Data-center side: remove what the appliance released once its lock has ended.

The appliance never deletes from a locked bucket: when it prunes a snapshot it writes a
tombstone (``t/``) and stops extending the locks of what nothing references any more. This
tool runs at the data center with the data center's own administrator credentials (the
appliance's cannot delete) and the escrowed key. It keeps:

- every snapshot whose checkpoint has no tombstone, and the newest checkpoint of each host
  even with one (a stolen appliance writing tombstones for everything cannot empty the
  bucket through this tool);
- every chunk any kept snapshot's chunk list names;
- every older version of a kept object (an overwrite with the appliance's credentials makes
  a new version: the old, locked one may be the good copy);
- the audit log (``a/``).

Everything else is removed version by version, and only once the version's lock has ended;
a version still locked is counted and left for a later run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Protocol

from rdr_format.manifest import IDX_MAGIC
from rdr_format.objects import DecryptError, ObjectCipher, chunk_name, snapshot_names
from rdr_restore.objects import checkpoints

from ..dcobjects import NotFoundAtTarget, ObjectVersion, Target, tombstone_name


class AdminTarget(Target, Protocol):
    """A target opened with the data center's administrator credentials."""

    def versions(self, prefix: str): ...
    async def version_retained_until(self, v: ObjectVersion) -> float | None: ...
    async def delete_version(self, v: ObjectVersion) -> None: ...


@dataclass(slots=True)
class ExpireResult:
    snapshots_kept: int = 0
    snapshots_released: int = 0  # tombstoned by the appliance
    kept_newest: int = 0  # tombstoned, but its host's newest: kept
    removed: int = 0  # object versions deleted
    still_locked: int = 0  # released versions whose lock has not ended yet
    dry_run: bool = False

    def to_json(self) -> dict:
        return asdict(self)


async def dc_expire(target: AdminTarget, cipher: ObjectCipher, dry_run: bool = False,
                    now: float | None = None) -> ExpireResult:
    res = ExpireResult(dry_run=dry_run)
    now = time.time() if now is None else now
    released: set[str] = set()
    async for name in target.list("t/"):
        released.add(name)
    cps = await checkpoints(target, cipher)
    newest = {c["host"]: c for c in cps}  # oldest first: the last one per host stays
    keep: set[str] = set()
    for c in cps:
        m_name, i_name, k_name = snapshot_names(cipher, c["host"], c["snapshot"])
        t_name = tombstone_name(k_name)
        if t_name in released and newest[c["host"]] is not c:
            res.snapshots_released += 1
            continue
        if t_name in released:
            res.kept_newest += 1
            keep.add(t_name)
        res.snapshots_kept += 1
        keep.update((m_name, i_name, k_name))
        try:
            idx = cipher.open(i_name, await target.get(i_name))
        except (NotFoundAtTarget, DecryptError) as exc:
            raise RuntimeError(f"the chunk list of {c['host']}/{c['snapshot']} cannot be read "
                               f"({exc}): nothing removed") from None
        keep.update(chunk_name(cipher, cid) for cid in _chunk_ids(idx))
    for prefix in ("k/", "m/", "i/", "c/", "t/"):
        async for v in target.versions(prefix):
            if v.name in keep:
                continue
            until = await target.version_retained_until(v)
            if until is not None and until > now:
                res.still_locked += 1
                continue
            if not dry_run:
                await target.delete_version(v)
            res.removed += 1
    return res


def _chunk_ids(idx: bytes) -> list[str]:
    """The ids of a ``chunks.idx`` as bytes (magic, then 32-byte ids, sorted)."""
    if idx[:len(IDX_MAGIC)] != IDX_MAGIC or (len(idx) - len(IDX_MAGIC)) % 32:
        raise DecryptError("not a chunk index")
    body = memoryview(idx)[len(IDX_MAGIC):]
    return [body[o:o + 32].hex() for o in range(0, len(body), 32)]
