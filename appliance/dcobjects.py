"""The data center's object store as its callers see it: the `Target` protocol, its errors,
and the checkpoint object that marks a snapshot complete there.

Replication writes through targets and seed disks are imported into and exported from one;
both build the same checkpoint. A leaf module both import, so that replication (which holds
snapshots back while a seed disk travels) and seed do not import each other.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from rdr_format.objects import ObjectMissing

from .errors import Unavailable


class TargetError(Unavailable):
    """The data center refused or could not be reached; `transient` says whether to retry.
    To the appliance's callers the data center's work cannot be done now (Unavailable)."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__("datacenter_unreachable" if transient else "datacenter_refused",
                         message)
        self.transient = transient


class NotFoundAtTarget(TargetError, ObjectMissing):
    def __init__(self, name: str) -> None:
        super().__init__(f"object {name} is not at the data center", False)


class Target(Protocol):
    async def prepare(self) -> None: ...
    async def put(self, name: str, data: bytes, retain_until: float | None = None) -> None:
        """Store NAME; with RETAIN_UNTIL (epoch seconds), locked in compliance mode until
        then (only on a target whose `object_lock` is true)."""
    async def get(self, name: str) -> bytes: ...
    async def exists(self, name: str) -> bool: ...
    def list(self, prefix: str) -> AsyncIterator[str]: ...
    async def delete(self, name: str) -> None: ...
    async def object_lock(self) -> bool:
        """Whether the store locks objects (S3 Object Lock enabled on the bucket)."""
    async def extend(self, name: str, retain_until: float) -> None:
        """Move NAME's compliance lock to RETAIN_UNTIL (never earlier: the store refuses)."""
    async def retained_until(self, name: str) -> float | None:
        """When NAME's lock ends (epoch seconds), or None when it has none."""
    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ObjectVersion:
    """One stored version of an object, as the data center's own tools see the bucket."""

    name: str
    version: str | None  # None: the store keeps no versions (a directory)
    latest: bool


def tombstone_name(checkpoint_name: str) -> str:
    """The marker the appliance writes (never deletes) when a locked snapshot is pruned:
    ``t/`` + the checkpoint's keyed hash. The data center's `rdr dc expire` releases the
    snapshot's objects once their locks have ended."""
    return "t/" + checkpoint_name.split("/", 1)[1]



def build_checkpoint(host: str, snap: str, manifest: bytes, idx_bytes: bytes,
                     chunk_count: int, **extra: object) -> bytes:
    """The checkpoint object's plaintext: what the DR tools start from."""
    m = json.loads(manifest)
    return json.dumps({
        "format": 1, "host": host, "snapshot": snap, "received_at": m["received_at"],
        "logical_size": m["logical_size"], "file_count": m["file_count"],
        "chunk_count": chunk_count, "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
        "index_sha256": hashlib.sha256(idx_bytes).hexdigest(),
        "replicated_at": time.time(), **extra}, sort_keys=True).encode()
