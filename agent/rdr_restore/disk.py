"""The shipped disk's format, shared by both directions.

A seed disk (Rapid Protect: appliance -> data center) and a recovery disk (Rapid Recover: data
center -> appliance) hold the same thing: replication objects exactly as they sit in the data
center's bucket (encrypted, keyed-hash names), so nothing new has to be trusted at either end.
The filesystem label says the direction (``RDR-PROTECT`` / ``RDR-RECOVER``) and so does the
header; a tool refuses a disk of the other direction, so a recovery disk is never overwritten
by an export and a seed is never restored from by mistake.

Layout of the filesystem's root::

    rdr-disk.json   header: format, kind, key id, the snapshots carried, state, totals
    objects/c/...   chunk objects        (as in the bucket: c/, m/, i/, k/)
    SHA256SUMS      "<sha256>  objects/<name>" per object, appended once the object is
                    durable (``sha256sum -c SHA256SUMS`` checks a disk by hand)
    progress.json   the running operation's counters (for the page and a resumed export)

Writing is resumable: an object is journaled in SHA256SUMS only after a ``syncfs`` made it
durable, so after a pulled disk the writer redoes exactly the objects not journaled. The header
records the SHA-256 of SHA256SUMS when the disk is complete; a reader checks that first, then
every object against its line, then decrypts it (AES-GCM authenticates every byte).

Here are the format and its reader, with `restore_from_disk` (`rdr-agent restore --from-disk`);
the appliance writes disks with `appliance/seed/disk.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rdr_format.compat import SLOTS
from rdr_format.fsutil import atomic_write
from rdr_format.manifest import IDX_MAGIC
from rdr_format.objects import DecryptError, ObjectCipher, ObjectMissing

from .engine import OVERWRITE_ALWAYS, RestoreSummary
from .errors import SeedError
from .objects import dc_restore

LABEL_PROTECT = "RDR-PROTECT"
LABEL_RECOVER = "RDR-RECOVER"
PROTECT = "rapid-protect"
RECOVER = "rapid-recover"
KIND_OF_LABEL = {LABEL_PROTECT: PROTECT, LABEL_RECOVER: RECOVER}
LABEL_OF_KIND = {v: k for k, v in KIND_OF_LABEL.items()}
FORMAT = 1
HEADER = "rdr-disk.json"
SUMS = "SHA256SUMS"
PROGRESS = "progress.json"
OBJECTS = "objects"
_NAME = re.compile(r"^[cmik]/[0-9a-f]{64}$")


class DamagedDisk(SeedError):
    """Objects on the disk do not match their checksums or do not decrypt; nothing was
    written from the disk."""

    def __init__(self, damaged: list[tuple[str, str]]) -> None:
        self.damaged = damaged
        shown = "; ".join(f"{n}: {why}" for n, why in damaged[:5])
        more = f" (and {len(damaged) - 5} more)" if len(damaged) > 5 else ""
        super().__init__(f"{len(damaged)} damaged object(s) on the disk, nothing was written "
                         f"from it: {shown}{more}")


def key_id(cipher: ObjectCipher) -> str:
    """Names the data key without revealing it: a reader with another key stops at once."""
    return cipher.name("key-id", "rdr shipped disk")[2:18]


@dataclass(**SLOTS)
class Progress:
    """One operation on a disk, as the page and the CLI show it."""

    op: str  # "export", "import", "verify", "export-recover", "import-seed"
    state: str = "running"  # running, done, failed, interrupted
    done_objects: int = 0
    total_objects: int = 0
    done_bytes: int = 0
    total_bytes: int = 0
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    message: str = ""
    damaged: list[list[str]] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    def add(self, nbytes: int) -> None:
        self.done_objects += 1
        self.done_bytes += nbytes
        self.updated_at = time.time()


Reporter = Callable[[Progress], None]


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise SeedError(f"bad object name {name!r} on the disk")
    return name


class DiskLayout:
    """The files of one disk below `root` (its mount point, or any copy of it)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def object_path(self, name: str) -> Path:
        return self.root / OBJECTS / check_name(name)

    # --- header and progress ---
    def header(self) -> dict | None:
        try:
            raw = (self.root / HEADER).read_bytes()
        except FileNotFoundError:
            return None
        try:
            h = json.loads(raw)
            if h.get("format") != FORMAT or h.get("kind") not in (PROTECT, RECOVER):
                raise ValueError("unknown format or kind")
            return h
        except (ValueError, AttributeError) as exc:
            raise SeedError(f"{self.root / HEADER} is not an RDR disk header: {exc}") from None

    def write_header(self, h: dict) -> None:
        atomic_write(self.root / HEADER, json.dumps(h, indent=1, sort_keys=True).encode())

    def need(self, kind: str, *, complete: bool) -> dict:
        """The header, checked: right direction, and complete when a reader needs it."""
        h = self.header()
        if h is None:
            raise SeedError(f"{self.root} holds no RDR disk ({HEADER} is missing)")
        if h["kind"] != kind:
            raise SeedError(f"{self.root} is a {h['kind']} disk, not a {kind} disk")
        if complete and h.get("state") != "complete":
            raise SeedError(f"the {kind} disk at {self.root} is incomplete (its export was "
                            "interrupted): finish it before shipping or reading it")
        return h

    def progress(self) -> dict | None:
        try:
            return json.loads((self.root / PROGRESS).read_bytes())
        except (OSError, ValueError):
            return None

    def write_progress(self, p: Progress) -> None:
        atomic_write(self.root / PROGRESS, json.dumps(p.to_json()).encode())

    # --- the journal ---
    def journal(self) -> set[str]:
        """Names of the journaled objects (a torn last line is ignored: its object is simply
        written again)."""
        out: set[str] = set()
        if not (self.root / SUMS).exists():
            return out
        with open(self.root / SUMS, "rb") as f:
            for line in f:
                parts = line.decode("ascii", "replace").rstrip("\n").split("  ", 1)
                if (len(parts) == 2 and len(parts[0]) == 64 and line.endswith(b"\n")
                        and parts[1].startswith(OBJECTS + "/")):
                    out.add(parts[1][len(OBJECTS) + 1:])
        return out

    def journal_lines(self) -> Iterator[tuple[str, str]]:
        """(name, sha256) in journal order; a malformed line is damage."""
        with open(self.root / SUMS, "rb") as f:
            for n, line in enumerate(f, 1):
                parts = line.decode("ascii", "replace").rstrip("\n").split("  ", 1)
                if len(parts) != 2 or not parts[1].startswith(OBJECTS + "/"):
                    raise DamagedDisk([(f"{SUMS} line {n}", "malformed")])
                yield check_name(parts[1][len(OBJECTS) + 1:]), parts[0]

    def sums_sha256(self) -> str:
        h = hashlib.sha256()
        with open(self.root / SUMS, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        return h.hexdigest()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def index_ids(data: bytes) -> list[str]:
    """Chunk ids of a snapshot's chunk list (the ``chunks.idx`` bytes)."""
    if not data.startswith(IDX_MAGIC) or (len(data) - len(IDX_MAGIC)) % 32:
        raise SeedError("a snapshot's chunk list on the disk is malformed")
    return [data[o:o + 32].hex() for o in range(len(IDX_MAGIC), len(data), 32)]


def verify_disk(layout: DiskLayout, cipher: ObjectCipher, kind: str,
                progress: Progress | None = None, report: Reporter | None = None,
                ) -> int:
    """Check every object of a complete disk before anything is taken from it.

    Returns how many objects it holds; raises DamagedDisk naming every object that is
    missing, differs from its checksum or does not decrypt under this key. The journal is
    streamed, twice (sizes, then contents): a terabyte disk holds a million objects."""
    h = layout.need(kind, complete=True)
    if h.get("key_id") != key_id(cipher):
        raise SeedError("the disk was written under another data key (key id "
                        f"{h.get('key_id')}, this key is {key_id(cipher)})")
    if layout.sums_sha256() != h.get("sums_sha256"):
        raise DamagedDisk([(SUMS, "does not match the checksum in the header")])
    count, total = 0, 0
    for name, _ in layout.journal_lines():
        count += 1
        total += _size(layout.object_path(name))
    if count != h.get("objects"):
        raise DamagedDisk([(SUMS, f"lists {count} objects, the header {h.get('objects')}")])
    if progress is not None:
        progress.total_objects, progress.total_bytes = count, total
    damaged: list[tuple[str, str]] = []
    for name, sha in layout.journal_lines():
        try:
            blob = layout.object_path(name).read_bytes()
        except FileNotFoundError:
            damaged.append((name, "missing"))
            continue
        if hashlib.sha256(blob).hexdigest() != sha:
            damaged.append((name, "checksum mismatch"))
        else:
            try:
                cipher.open(name, blob)
            except DecryptError:
                damaged.append((name, "does not decrypt"))
        if progress is not None:
            progress.add(len(blob))
            if report is not None:
                report(progress)
    if damaged:
        raise DamagedDisk(damaged)
    return count


class DiskObjects:
    """The objects of a disk, read as the data center's would be (for `dc_restore`)."""

    def __init__(self, layout: DiskLayout) -> None:
        self.layout = layout

    async def get(self, name: str) -> bytes:
        try:
            return await asyncio.to_thread(self.layout.object_path(name).read_bytes)
        except FileNotFoundError:
            raise ObjectMissing(name) from None

    async def list(self, prefix: str) -> AsyncIterator[str]:
        """Names below the directory `prefix` names ("k/": only the checkpoints are walked,
        not the million chunk objects of a large disk)."""
        root = self.layout.root / OBJECTS
        if ".." in prefix.split("/") or prefix.startswith("/"):
            raise SeedError(f"bad object prefix {prefix!r}")
        base = root / prefix.rstrip("/") if prefix else root
        names = await asyncio.to_thread(
            lambda: sorted(str(p.relative_to(root)) for p in base.rglob("*")
                           if p.is_file() and not p.name.startswith(".")) if base.exists()
            else [])
        for n in names:
            yield n


async def restore_from_disk(root: Path, cipher: ObjectCipher, host: str, snapshot: str,
                            to: Path, include: list[bytes] | None, pool: Executor,
                            on_progress: Callable[[int, int], None] | None = None,
                            overwrite: str = OVERWRITE_ALWAYS, sparse: bool = True,
                            ) -> tuple[dict, RestoreSummary]:
    """Restore files from a recovery disk mounted at `root`, checked in full first."""
    layout = DiskLayout(root)
    await asyncio.to_thread(verify_disk, layout, cipher, RECOVER, Progress("verify"))
    return await dc_restore(DiskObjects(layout), cipher, host, snapshot, to, include,
                            pool, on_progress, overwrite, sparse)
