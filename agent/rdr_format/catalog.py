"""Snapshot catalog: the file tree of one snapshot, as two byte streams stored as chunks.

The *catalog stream* is a sequence of directory blocks in depth-first pre-order with children
sorted by name bytes (which is also the order of directory paths compared component by
component). Each block is a header line ``{"d": PATH, "n": COUNT}`` followed by COUNT entry
lines, one JSON object each. The *directory index stream* has one line per block,
``[PATH, OFFSET, LENGTH, COUNT]``, so one directory of a million-file snapshot is listed by
reading a few index lines and one range of the catalog, never the rest.

Why these choices: both streams are produced and consumed strictly in order (the agent writes
them while it walks, restore and the next backup read them while they walk), so memory stays
flat; and the order is the same as a sorted walk, so an unchanged directory yields identical
bytes, which content-defined chunking turns into identical, deduplicated catalog chunks.

Paths are bytes relative to the snapshot root (``b""``), components joined by ``/``. Byte
strings that are valid UTF-8 are stored as JSON strings, others as ``{"b64": ...}``, so names
that are not UTF-8 survive a round trip exactly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from rdr_format.chunkfile import MAX_PLAIN_SIZE, is_chunk_id
from rdr_format.compat import SLOTS, zip_strict

# Entry types.
FILE = "f"
DIR = "d"
SYMLINK = "l"
HARDLINK = "h"  # a further name of a file stored earlier in catalog order
FIFO = "p"
CHARDEV = "c"
BLOCKDEV = "b"
TYPES = frozenset((FILE, DIR, SYMLINK, HARDLINK, FIFO, CHARDEV, BLOCKDEV))

MAX_NAME = 4096
MAX_LINE = 1 << 24


class CatalogError(ValueError):
    """The catalog is malformed; the message says where."""


@dataclass(**SLOTS)
class Range:
    """`length` bytes at `offset` of the plaintext of chunk `chunk` (whose size is `chunk_size`)."""

    chunk: str
    offset: int
    length: int
    chunk_size: int


@dataclass(**SLOTS)
class Entry:
    name: bytes
    type: str
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    size: int = 0
    ranges: list[Range] = field(default_factory=list)
    link: bytes | None = None  # symlink target, or hardlink's first path
    xattrs: list[tuple[bytes, bytes]] | None = None
    ino: int = 0
    ctime_ns: int = 0
    rdev: int = 0


# --- byte string <-> JSON ---------------------------------------------------------------------


def enc_bytes(value: bytes) -> str | dict[str, str]:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode("ascii")}


def dec_bytes(value: object, what: str) -> bytes:
    if isinstance(value, str):
        try:
            return value.encode("utf-8", "strict")
        except UnicodeEncodeError:  # a lone surrogate escaped in the JSON: no name is one
            raise CatalogError(f"{what}: not a UTF-8 string") from None
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise CatalogError(f"{what}: invalid base64") from None
    raise CatalogError(f"{what}: expected a string or {{'b64': ...}}")


def split_path(path: bytes) -> list[bytes]:
    """Components of a catalog path, rejecting anything that could leave the snapshot root."""
    if path == b"":
        return []
    parts = path.split(b"/")
    for part in parts:
        check_name(part)
    return parts


def check_name(name: bytes) -> None:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise CatalogError(f"invalid name {name!r}")
    if len(name) > MAX_NAME:
        raise CatalogError("name too long")


def join_path(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def path_key(path: bytes) -> tuple[bytes, ...]:
    """Sort key for directory paths: component-wise, matching a depth-first sorted walk."""
    return tuple(path.split(b"/")) if path else ()


# --- entries ------------------------------------------------------------------------------------


def encode_entry(e: Entry) -> dict:
    d: dict = {"n": enc_bytes(e.name), "t": e.type, "m": e.mode, "u": e.uid, "g": e.gid,
               "mt": e.mtime_ns}
    if e.type in (FILE, HARDLINK):
        d["s"] = e.size
        d["r"] = [[r.chunk, r.offset, r.length, r.chunk_size] for r in e.ranges]
        d["ino"] = e.ino
        d["ct"] = e.ctime_ns
    if e.link is not None:
        d["l"] = enc_bytes(e.link)
    if e.xattrs:
        d["x"] = [[enc_bytes(k), base64.b64encode(v).decode("ascii")] for k, v in e.xattrs]
    if e.rdev:
        d["rd"] = e.rdev
    return d


def _int(d: dict, key: str, default: int | None = None, lo: int = 0, hi: int = (1 << 63) - 1,
         ) -> int:
    v = d.get(key, default)
    if v is None:
        raise CatalogError(f"entry lacks {key!r}")
    if type(v) is not int or not lo <= v <= hi:
        raise CatalogError(f"entry field {key!r} is not an integer in range")
    return v


_U32 = 2**32 - 1
_I64_LO, _I64_HI = -(2**63), (1 << 63) - 1


def decode_entry(d: object) -> Entry:
    """One entry, checked. Every catalog read decodes each entry it needs through here (the
    agent its parent's, the appliance a commit's), so the common fields are tested inline
    and `_int` runs only to name the field that is wrong."""
    if not isinstance(d, dict):
        raise CatalogError("entry is not an object")
    get = d.get
    name = dec_bytes(get("n"), "entry name")
    check_name(name)
    typ = get("t")
    if typ not in TYPES:
        raise CatalogError(f"entry {name!r} has unknown type {typ!r}")
    m, u, g, mt = get("m"), get("u"), get("g"), get("mt")
    if not (type(m) is int and 0 <= m <= 0o7777 and type(u) is int and 0 <= u <= _U32
            and type(g) is int and 0 <= g <= _U32 and type(mt) is int
            and _I64_LO <= mt <= _I64_HI):
        m, u, g = _int(d, "m", hi=0o7777), _int(d, "u", hi=_U32), _int(d, "g", hi=_U32)
        mt = _int(d, "mt", lo=_I64_LO)
    e = Entry(name, typ, m, u, g, mt)
    if typ in (FILE, HARDLINK):
        size, ino, ct = get("s"), get("ino", 0), get("ct", 0)
        if not (type(size) is int and 0 <= size <= _I64_HI and type(ino) is int
                and 0 <= ino <= _I64_HI and type(ct) is int and _I64_LO <= ct <= _I64_HI):
            size, ino, ct = _int(d, "s"), _int(d, "ino", 0), _int(d, "ct", 0, lo=_I64_LO)
        e.size, e.ino, e.ctime_ns = size, ino, ct
        raw = get("r")
        if not isinstance(raw, list):
            raise CatalogError(f"entry {name!r} has no ranges list")
        total = 0
        ranges = e.ranges
        for r in raw:
            if not (isinstance(r, list) and len(r) == 4):
                raise CatalogError(f"entry {name!r} has a malformed range")
            cid, off, length, csize = r
            if not (type(off) is int and type(length) is int and type(csize) is int
                    and is_chunk_id(cid)):
                raise CatalogError(f"entry {name!r} has a malformed range")
            if not (off >= 0 and length > 0 and off + length <= csize <= MAX_PLAIN_SIZE):
                raise CatalogError(f"entry {name!r} has a range outside its chunk")
            ranges.append(Range(cid, off, length, csize))
            total += length
        if total != size:
            raise CatalogError(f"entry {name!r}: ranges cover {total} bytes, size is {size}")
    if "l" in d:
        e.link = dec_bytes(d["l"], "link target")
        if b"\0" in e.link or not e.link:
            raise CatalogError(f"entry {name!r} has an invalid link target")
    if typ in (SYMLINK, HARDLINK) and e.link is None:
        raise CatalogError(f"entry {name!r} lacks its link target")
    if "x" in d:
        xs = d["x"]
        if not isinstance(xs, list):
            raise CatalogError(f"entry {name!r} has malformed xattrs")
        e.xattrs = []
        for x in xs:
            if not (isinstance(x, list) and len(x) == 2 and isinstance(x[1], str)):
                raise CatalogError(f"entry {name!r} has a malformed xattr")
            try:
                value = base64.b64decode(x[1], validate=True)
            except (binascii.Error, ValueError):
                raise CatalogError(f"entry {name!r} has a malformed xattr value") from None
            e.xattrs.append((dec_bytes(x[0], "xattr name"), value))
    if typ in (CHARDEV, BLOCKDEV):
        e.rdev = _int(d, "rd", 0)
    return e


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


# --- writing ------------------------------------------------------------------------------------


class CatalogWriter:
    """Serialises directory blocks, in order, into the catalog and index sinks.

    The caller hands blocks in depth-first sorted order; the writer checks that order (a
    mistake here would make a catalog that later readers reject) and tracks offsets for the
    index. Sinks receive bytes; the agent feeds them to content-defined chunkers.
    """

    def __init__(self, catalog_sink: Callable[[bytes], None],
                 index_sink: Callable[[bytes], None]) -> None:
        self._cat = catalog_sink
        self._idx = index_sink
        self._offset = 0
        self._last_key: tuple[bytes, ...] | None = None
        self.entries = 0
        self.blocks = 0

    def add_block(self, path: bytes, entries: list[Entry],
                  lines: list[bytes | None] | None = None) -> None:
        """`lines[i]`, when given, is entry i's catalog line already encoded (an unchanged
        file's line in the parent catalog, without its newline): written as it is."""
        key = path_key(path)
        if self._last_key is not None and key <= self._last_key:
            raise CatalogError(f"directory {path!r} is out of order")
        self._last_key = key
        parts = [_dumps({"d": enc_bytes(path), "n": len(entries)})]
        prev: bytes | None = None
        for e, line in zip_strict(entries, lines or [None] * len(entries)):
            if prev is not None and e.name <= prev:
                raise CatalogError(f"entries of {path!r} are not sorted and unique")
            prev = e.name
            parts.append(line + b"\n" if line is not None else _dumps(encode_entry(e)))
        data = b"".join(parts)
        self._cat(data)
        self._idx(_dumps([enc_bytes(path), self._offset, len(data), len(entries)]))
        self._offset += len(data)
        self.entries += len(entries)
        self.blocks += 1

    @property
    def size(self) -> int:
        return self._offset


# --- reading ------------------------------------------------------------------------------------


#: Bytes of a piece split into lines at once: splitting in C is a fraction of finding each
#: newline from Python, and a window (not the whole piece, up to 8 MiB) bounds the lines held.
SPLIT_WINDOW = 1 << 18


def iter_lines(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Split a stream of byte pieces (chunk plaintexts) into lines without joining it whole."""
    rest = b""
    for piece in pieces:
        if not piece:
            continue
        buf = rest + piece if rest else piece
        start, size = 0, len(buf)
        while start < size:
            cut = buf.rfind(b"\n", start, start + SPLIT_WINDOW)
            if cut < 0:  # a line longer than the window, or the piece's unfinished last one
                cut = buf.find(b"\n", start + SPLIT_WINDOW)
                if cut < 0:
                    break
            yield from buf[start:cut].split(b"\n")
            start = cut + 1
        rest = buf[start:]
        if len(rest) > MAX_LINE:
            raise CatalogError("catalog line too long")
    if rest:
        raise CatalogError("catalog stream does not end with a newline")


#: The C scanner behind json.loads: (value, end) of the JSON value at an index of a str.
_scan = json.JSONDecoder().scan_once


def _loads(line: bytes) -> object:
    """A catalog line's JSON value. Every catalog read decodes each of its lines here (a
    commit's validation, the verdict, a restore's plan, the agent's parent catalog), so a
    plain line (UTF-8, no surrounding whitespace: what the writer makes) is scanned
    directly -- json.loads spent more on its encoding detection and checks than on the
    scan. Anything else takes json.loads' own path, so exactly what it accepts is
    accepted."""
    try:
        text = line.decode("utf-8", "surrogatepass")
        value, end = _scan(text, 0)
        if end == len(text):
            return value
    except (ValueError, StopIteration, RecursionError):
        pass
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        raise CatalogError("catalog line is not valid JSON") from None


class BlockStream:
    """One directory block being read: its path and declared count, its entries decoded one
    at a time (`entries`), and the bytes read so far (`nbytes`, the whole block's once its
    entries are consumed). Only the current entry is in memory, whatever the count."""

    __slots__ = ("_left", "_lines", "count", "nbytes", "path")

    def __init__(self, path: bytes, count: int, nbytes: int, lines: Iterator[bytes]) -> None:
        self.path, self.count, self.nbytes = path, count, nbytes
        self._lines, self._left = lines, count

    def raw(self) -> Iterator[bytes]:
        """The remaining entry lines, undecoded (a listing page skips lines this way)."""
        while self._left > 0:
            try:
                line = next(self._lines)
            except StopIteration:
                raise CatalogError(f"block {self.path!r} is truncated") from None
            self._left -= 1
            self.nbytes += len(line) + 1
            yield line

    def take(self) -> list[bytes]:
        """All the remaining entry lines, undecoded, in one call (no generator step per
        line): for the readers that hold whole blocks anyway."""
        n = self._left
        got = list(itertools.islice(self._lines, n))
        if len(got) < n:
            raise CatalogError(f"block {self.path!r} is truncated")
        self._left = 0
        self.nbytes += sum(map(len, got)) + n
        return got

    def take_upto(self, max_bytes: int) -> list[bytes]:
        """The remaining entry lines, undecoded, until they hold more than `max_bytes`
        (the rest is then read through `raw`): a block of a catalog not yet checked is
        never held past the bound, however long its lines."""
        got: list[bytes] = []
        held = 0
        for line in itertools.islice(self._lines, self._left):
            got.append(line)
            held += len(line) + 1
            if held > max_bytes:
                break
        else:
            if len(got) < self._left:
                raise CatalogError(f"block {self.path!r} is truncated")
        self._left -= len(got)
        self.nbytes += held
        return got

    def entries(self) -> Iterator[Entry]:
        return map(decode_line, self.raw())

    def skip(self) -> None:
        for _ in self.raw():
            pass


def iter_block_streams(pieces: Iterable[bytes]) -> Iterator[BlockStream]:
    """Catalog blocks in order, each streamed: a block's entries not consumed by the caller
    are skipped (undecoded) before the next block is read."""
    lines = iter_lines(pieces)
    for line in lines:
        head = _loads(line)
        if not (isinstance(head, dict) and set(head) == {"d", "n"} and type(head["n"]) is int
                and head["n"] >= 0):
            raise CatalogError("expected a directory block header")
        path = dec_bytes(head["d"], "directory path")
        split_path(path)
        block = BlockStream(path, head["n"], len(line) + 1, lines)
        yield block
        block.skip()


def indexed_block(pieces: Iterable[bytes], rec: IndexRecord) -> BlockStream:
    """The block at a directory index record's range of the catalog (`pieces`: those bytes),
    checked to be the block the record names: its path and its entry count."""
    block = next(iter_block_streams(pieces), None)
    if block is None or block.path != rec.path or block.count != rec.count:
        raise CatalogError(f"the directory index does not match the catalog at {rec.path!r}")
    return block


def iter_raw_blocks(pieces: Iterable[bytes]) -> Iterator[tuple[bytes, list[bytes]]]:
    """Catalog blocks in order, undecoded: (directory path, its entry lines). Lets a reader
    compare a block with another catalog's byte for byte and decode only those that differ
    (`decode_lines`)."""
    for block in iter_block_streams(pieces):
        yield block.path, block.take()


def decode_line(line: bytes) -> Entry:
    """One entry line of a block (without its newline), checked."""
    return decode_entry(_loads(line))


def decode_lines(lines: Iterable[bytes]) -> list[Entry]:
    return list(map(decode_line, lines))


def decode_validated_line(line: bytes) -> Entry:
    """One entry line of a catalog the appliance validated when it was committed and whose
    bytes were checked against their chunk ids since (the agent's parent catalog), read
    without checking each field again: the daily backup decodes every line of its parent,
    and the checks were a third of that (0.07 of 0.21 s for 30,000 files here).

    Only the plain shapes are read this way -- a file or a directory with a UTF-8 name, no
    link, no extended attributes, no device number; anything else, and any line whose
    fields are not where they should be, goes through `decode_line` and its errors. What a
    line read here gives the backup is compared with the file system, and reused unchanged
    only into a catalog the appliance validates again at commit."""
    d = _loads(line)
    if type(d) is dict and "x" not in d and "rd" not in d and "l" not in d:
        name = d.get("n")
        if type(name) is str:
            try:
                e = Entry(name.encode(), d["t"], d["m"], d["u"], d["g"], d["mt"])
                if e.type == FILE:
                    e.size, e.ino, e.ctime_ns = d["s"], d.get("ino", 0), d.get("ct", 0)
                    e.ranges = [_plain_range(r) for r in d["r"]]
                    return e
                if e.type == DIR:
                    return e
            except (KeyError, TypeError, UnicodeError):
                pass
    return decode_entry(d)


def _plain_range(r: object) -> Range:
    """A range of the shape the writer makes, its values unchecked; TypeError otherwise. The
    fields the backup only compares may be anything, but a range's numbers are added up."""
    if type(r) is list and len(r) == 4:
        c, o, n, s = r
        if type(c) is str and type(o) is int and type(n) is int and type(s) is int:
            return Range(c, o, n, s)
    raise TypeError("not a plain range")


class LazyEntries:
    """A block's entries, decoded only when iterated: a reader that needs a few blocks of a
    large catalog (a one-file restore) passes over the others undecoded."""

    __slots__ = ("lines",)

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines

    def __iter__(self) -> Iterator[Entry]:
        return map(decode_line, self.lines)


def iter_blocks_lazily(pieces: Iterable[bytes]) -> Iterator[tuple[bytes, LazyEntries]]:
    """Catalog blocks in order, each's entries decoded when iterated (`LazyEntries`)."""
    for path, lines in iter_raw_blocks(pieces):
        yield path, LazyEntries(lines)


def block_digest(path: bytes, lines: Iterable[bytes]) -> bytes:
    """What names a block's content: its path, its entry count and its entry lines."""
    h = hashlib.blake2b(digest_size=32)
    lines = lines if isinstance(lines, list) else list(lines)
    if lines:  # each line and its newline, hashed in one call
        h.update(b"\n".join(lines))
        h.update(b"\n")
    h.update(b"\0%d\0" % len(lines) + path)
    return h.digest()


def iter_blocks_sized(pieces: Iterable[bytes]) -> Iterator[tuple[bytes, list[Entry], int]]:
    """Decode catalog blocks in order: (directory path, its entries, the block's byte length).
    Holds a whole block's entries: for the agent's walks; the appliance streams instead."""
    for block in iter_block_streams(pieces):
        entries = list(block.entries())
        yield block.path, entries, block.nbytes


def iter_blocks(pieces: Iterable[bytes]) -> Iterator[tuple[bytes, list[Entry]]]:
    """Decode catalog blocks in order: (directory path, its entries)."""
    for path, entries, _ in iter_blocks_sized(pieces):
        yield path, entries


def decode_block(data: bytes) -> tuple[bytes, list[Entry]]:
    """Decode exactly one block (a range read through the directory index)."""
    blocks = list(iter_blocks([data]))
    if len(blocks) != 1:
        raise CatalogError("index range does not hold exactly one block")
    return blocks[0]


@dataclass(frozen=True, **SLOTS)
class IndexRecord:
    path: bytes
    offset: int
    length: int
    count: int


def iter_index(pieces: Iterable[bytes]) -> Iterator[IndexRecord]:
    for line in iter_lines(pieces):
        rec = _loads(line)
        if not (isinstance(rec, list) and len(rec) == 4
                and all(type(x) is int and x >= 0 for x in rec[1:])):
            raise CatalogError("malformed directory index line")
        path = dec_bytes(rec[0], "index path")
        split_path(path)
        yield IndexRecord(path, rec[1], rec[2], rec[3])


class IndexDigest:
    """A running digest of directory index records, in order.

    A catalog checked before its directory index exists (as its pieces arrive) records what
    the index must say; the index, when it comes, is checked by digesting its records the
    same way, instead of holding one record per directory until then."""

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=32)

    def add(self, path: bytes, offset: int, length: int, count: int) -> None:
        # Length-prefixed: no two record lists digest alike.
        self._h.update(len(path).to_bytes(8, "little") + path + offset.to_bytes(8, "little")
                       + length.to_bytes(8, "little") + count.to_bytes(8, "little"))

    def digest(self) -> bytes:
        return self._h.digest()


def index_digest(index_pieces: Iterable[bytes]) -> bytes:
    """The digest of a directory index's records (each line checked as `iter_index` does)."""
    d = IndexDigest()
    for rec in iter_index(index_pieces):
        d.add(rec.path, rec.offset, rec.length, rec.count)
    return d.digest()


@dataclass(**SLOTS)
class CatalogSummary:
    """What the appliance learns from validating a catalog at commit."""

    chunks: set[str] = field(default_factory=set)
    logical_size: int = 0
    files: int = 0
    dirs: int = 0
    entries: int = 0
    #: The digest of the directory index this catalog needs (`index_digest`), when it was
    #: validated without its index.
    index_digest: bytes = b""


@dataclass(frozen=True, **SLOTS)
class BlockFacts:
    """What checking one directory block on its own established.

    A pure function of the block's path, count and entry lines, so a block byte-identical to
    one checked before (a daily backup's unchanged directories) needs no decoding again: a
    commit then costs time in proportion to the directories that changed. Chunk ids are
    packed (32 bytes each) to keep a cached catalog's facts small."""

    path: bytes
    count: int
    files: int
    dirs: int
    logical_size: int
    subdirs: tuple[bytes, ...]  # names of the directories the block declares
    chunks: bytes  # the distinct chunk ids its ranges use, 32 bytes each
    links: tuple[bytes, ...]  # hardlink targets, checked against the catalog's files

    def chunk_ids(self) -> Iterator[str]:
        c = self.chunks
        return (c[i:i + 32].hex() for i in range(0, len(c), 32))

    def footprint(self) -> int:
        """Roughly the bytes this record holds in memory (for a cache's budget)."""
        return (200 + len(self.path) + len(self.chunks)
                + sum(60 + len(n) for n in self.subdirs) + sum(60 + len(n) for n in self.links))


# Blocks above this many bytes are decoded as they stream and never remembered: holding
# one whole to hash it first would let a single directory of millions of files take memory.
MAX_REMEMBERED_BLOCK = 4 << 20


class CatalogTooLarge(CatalogError):
    """The catalog holds more entries than its host may commit (the message says why)."""


def validate(pieces: Iterable[bytes], index_pieces: Iterable[bytes] | None,
             max_entries: int | None = None,
             again: Callable[[], Iterable[bytes]] | None = None,
             too_large: Callable[[int], str] | None = None,
             known: Mapping[bytes, BlockFacts] | None = None,
             learned: dict[bytes, BlockFacts] | None = None) -> CatalogSummary:
    """Check a whole catalog and its directory index, collecting what a commit needs to know.

    Enforces the invariants readers rely on: blocks in depth-first sorted order, each block a
    directory declared in an earlier block (only the root has none), every declared directory
    has a block, names sorted and unique, hardlinks pointing at an earlier file, and an index
    line for every block with its exact offset and length.

    Streamed: one entry is decoded at a time, and memory grows with the directories still
    awaiting their block, the distinct chunks and the hardlinks, never with the number of
    files. A hardlink's target is checked to come earlier in catalog order at once, and to
    be a file in a second pass over the catalog (`again()` streams it anew; a list of
    pieces is simply read again), made only when the catalog has hardlinks. Past
    `max_entries` entries the catalog is refused (CatalogTooLarge, message from
    `too_large(count)`) as soon as a block header says so, before its entries are decoded.

    With `index_pieces` None the index is not read: the summary's `index_digest` says what
    it must hold, for a caller that checks the catalog before the index has arrived.

    `known` maps a block's digest to the facts of a block checked before (the host's last
    catalog): such a block is hashed, not decoded. `learned`, when given, receives the
    digest and facts of every block of this catalog up to MAX_REMEMBERED_BLOCK bytes, for
    the next commit's `known`.
    """
    if again is None and not isinstance(pieces, Iterator):
        source = pieces  # a collection: it can be read twice

        def again() -> Iterable[bytes]:
            return source
    remember = known is not None or learned is not None
    summary = CatalogSummary()
    last: tuple[bytes, ...] | None = None
    pending_dirs: set[bytes] = set()
    links: set[bytes] = set()
    index = iter_index(index_pieces) if index_pieces is not None else None
    digest = IndexDigest() if index is None else None
    offset = 0
    for block in iter_block_streams(pieces):
        path = block.path
        if max_entries is not None and summary.entries + block.count > max_entries:
            count = summary.entries + block.count
            raise CatalogTooLarge(too_large(count) if too_large else
                                  f"at least {count} entries, more than {max_entries}")
        key = path_key(path)
        if last is None:
            if path != b"":
                raise CatalogError("the first block must be the root directory")
        else:
            if key <= last:
                raise CatalogError(f"directory {path!r} is out of order")
            if path not in pending_dirs:
                raise CatalogError(f"block {path!r} is not a directory of its parent")
            pending_dirs.discard(path)
        last = key
        facts = (_remembered_facts(block, known or {}, learned) if remember
                 else _block_facts(block, block.raw()))
        summary.entries += facts.count
        summary.files += facts.files
        summary.dirs += facts.dirs
        summary.logical_size += facts.logical_size
        summary.chunks.update(facts.chunk_ids())
        pending_dirs.update(join_path(path, name) for name in facts.subdirs)
        links.update(facts.links)
        if digest is not None:
            digest.add(path, offset, block.nbytes, block.count)
        elif next(index, None) != IndexRecord(path, offset, block.nbytes, block.count):
            raise CatalogError(f"directory index does not match the catalog at {path!r}")
        offset += block.nbytes
    if last is None:
        raise CatalogError("catalog has no root block")
    if digest is not None:
        summary.index_digest = digest.digest()
    elif next(index, None) is not None:
        raise CatalogError("directory index has lines beyond the catalog")
    if pending_dirs:
        raise CatalogError(f"directory {min(pending_dirs)!r} has no block")
    if links:
        _check_link_targets(links, again() if again is not None else None)
    return summary


def _remembered_facts(block: BlockStream, known: Mapping[bytes, BlockFacts],
                      learned: dict[bytes, BlockFacts] | None) -> BlockFacts:
    """The block's facts from `known` when its digest is there, else decoded; either way
    remembered in `learned`. A block over MAX_REMEMBERED_BLOCK is decoded as it streams."""
    start = block.nbytes
    lines = block.take_upto(MAX_REMEMBERED_BLOCK)
    if block.nbytes - start > MAX_REMEMBERED_BLOCK:
        return _block_facts(block, itertools.chain(lines, block.raw()))
    digest = block_digest(block.path, lines)
    facts = known.get(digest)
    if facts is None:
        facts = _block_facts(block, iter(lines))
    if learned is not None:
        learned[digest] = facts
    return facts


def _block_facts(block: BlockStream, lines: Iterator[bytes]) -> BlockFacts:
    """Decode one block's entry lines (in order) and check what needs no other block."""
    path = block.path
    key = path_key(path)
    files = dirs = size = 0
    subdirs: list[bytes] = []
    found_links: list[bytes] = []
    chunks: dict[str, None] = {}
    prev: bytes | None = None
    for e in map(decode_line, lines):
        if prev is not None and e.name <= prev:
            raise CatalogError(f"entries of {path!r} are not sorted and unique")
        prev = e.name
        if e.type == DIR:
            subdirs.append(e.name)
            dirs += 1
        elif e.type == FILE:
            files += 1
            size += e.size
        elif e.type == HARDLINK:
            assert e.link is not None
            _check_link_order(e.link, key, e.name, join_path(path, e.name))
            found_links.append(e.link)
            files += 1
        for r in e.ranges:
            chunks[r.chunk] = None
    return BlockFacts(path, block.count, files, dirs, size, tuple(subdirs),
                      b"".join(bytes.fromhex(c) for c in chunks), tuple(found_links))


def _check_link_order(link: bytes, key: tuple[bytes, ...], name: bytes, full: bytes) -> None:
    """A hardlink names a path that comes before it in catalog order (block, then name)."""
    parent, _, target = link.rpartition(b"/")
    try:
        split_path(link)
    except CatalogError:
        raise CatalogError(f"hardlink {full!r} points at no earlier file") from None
    if (path_key(parent), target) >= (key, name):
        raise CatalogError(f"hardlink {full!r} points at no earlier file")


def _check_link_targets(links: set[bytes], pieces: Iterable[bytes] | None) -> None:
    """Every hardlink target is a regular file of the catalog (second streamed pass)."""
    if pieces is None:
        raise CatalogError("hardlinks cannot be checked without a second pass")
    for block in iter_block_streams(pieces):
        for e in block.entries():
            if e.type == FILE:
                links.discard(join_path(block.path, e.name))
        if not links:
            return
    raise CatalogError(f"hardlink to {min(links)!r} points at no earlier file")


def locate(chunks: list[tuple[str, int]], offset: int, length: int,
           ) -> list[tuple[str, int, int]]:
    """Map a byte range of a chunked stream to (chunk id, start, end) slices of its chunks."""
    out = []
    pos = 0
    end = offset + length
    for cid, size in chunks:
        nxt = pos + size
        if nxt > offset and pos < end:
            out.append((cid, max(offset, pos) - pos, min(end, nxt) - pos))
        if nxt >= end:
            break
        pos = nxt
    if sum(b - a for _, a, b in out) != length:
        raise CatalogError("range lies outside the stream")
    return out
