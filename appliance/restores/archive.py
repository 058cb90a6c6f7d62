"""Streaming archive encoders for downloads from the LAN restore page.

A folder in a snapshot can hold many gigabytes, and the appliance has little memory, so a
download is never assembled whole: the web handler walks the catalog, reads each file in pieces
and passes them through one of these writers, sending whatever bytes each call returns straight
to the HTTP response. The writers therefore hold only O(entries) state (the zip central
directory), never O(bytes), and do no I/O themselves; they are plain byte-in/byte-out state
machines, so they are trivial to test and carry no web-framework dependency.

Two formats, with the same interface (`ArchiveWriter`):

* `ZipStream` — what every desktop can open with a double click;
* `TarZstStream` — pax tar through zstd, for Unix users who want names, modes and symlinks
  reproduced exactly and a smaller download.

Call order: for each regular file `begin_file`, then `file_data` any number of times, then
`end_file`; `add_dir` and `add_symlink` stand alone; `finish` once at the end. A byte count that
does not match the size declared to `begin_file` raises ValueError and leaves the writer
unusable (later calls raise RuntimeError): bytes already sent cannot be taken back, so the
handler must abort the response rather than let the client keep a silently wrong archive.
"""

from __future__ import annotations

import stat
import struct
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Protocol

import zstandard

__all__ = [
    "FORMATS",
    "NOTES_NAME",
    "ZIP64_COUNT_LIMIT",
    "ZIP64_LIMIT",
    "ArchiveWriter",
    "MemberNames",
    "TarZstStream",
    "ZipStream",
    "writer_for",
]

# A size or offset at or above this needs ZIP64 (0xFFFFFFFF itself is the "see zip64" marker,
# so it cannot be stored as a real value). Module-level so tests can lower it and exercise the
# ZIP64 paths with small files; read at call time for that reason.
ZIP64_LIMIT = 0xFFFFFFFF
# An entry count at or above this needs the zip64 end-of-central-directory record (0xFFFF is
# the marker value in the classic record).
ZIP64_COUNT_LIMIT = 0xFFFF


class ArchiveWriter(Protocol):
    """One archive being streamed; every method returns the bytes to send next (maybe b"")."""

    content_type: str
    extension: str

    def begin_file(self, path: bytes, size: int, mtime_ns: int, mode: int) -> bytes: ...

    def file_data(self, data: bytes | memoryview) -> bytes: ...

    def end_file(self) -> bytes: ...

    def add_dir(self, path: bytes, mtime_ns: int, mode: int) -> bytes: ...

    def add_symlink(self, path: bytes, target: bytes, mtime_ns: int, mode: int) -> bytes: ...

    def finish(self) -> bytes: ...

    def finish_pieces(self) -> Iterator[bytes]:
        """`finish()`'s bytes in pieces of bounded size (a zip's central directory of a
        million entries is tens of MiB)."""
        ...


def _check_path(path: bytes) -> None:
    """Refuse names an extractor could resolve outside its target directory.

    The catalog should never hand us such a path; this is defence in depth, because an archive
    that escapes the user's extraction directory is far worse than a failed download.
    """
    if not isinstance(path, bytes):
        raise TypeError(f"archive paths are bytes, not {type(path).__name__}")
    if not path:
        raise ValueError("empty archive path")
    if b"\0" in path:
        raise ValueError(f"archive path contains NUL: {path!r}")
    if path.startswith(b"/"):
        raise ValueError(f"archive path is absolute: {path!r}")
    if b"\\" in path:
        raise ValueError(f"archive path has a backslash (a separator on Windows): {path!r}")
    for part in path.split(b"/"):
        if part in (b"", b".", b".."):
            raise ValueError(f"archive path has an empty, '.' or '..' component: {path!r}")


def _check_target(target: bytes) -> None:
    """A symlink target is stored verbatim (it may legitimately be absolute or use '..')."""
    if not isinstance(target, bytes):
        raise TypeError(f"symlink targets are bytes, not {type(target).__name__}")
    if not target or b"\0" in target:
        raise ValueError(f"symlink target is empty or contains NUL: {target!r}")


#: The member listing what `MemberNames` renamed or left out, added when there is any.
NOTES_NAME = b"RDR-ARCHIVE-NOTES.txt"
_MAX_NOTES = 1000


class MemberNames:
    """Member names for one archive, chosen so no extractor can write outside its target.

    Whatever the catalog says (a host writes its own catalog, so it may be crafted), every
    member name is relative, has no empty, '.' or '..' component and no backslash (a
    separator to Windows extractors: replaced by '_'), is unique in the archive (a second
    'x' in the same directory becomes 'x (2)'), and lies only below directory members of
    this same archive: an entry whose parent is a symlink, a file or nothing this archive
    holds is left out. So `x -> /outside` followed by `x/evil` (two selected paths with the
    same base name, or a crafted catalog) cannot happen: the second 'x' is renamed and its
    contents follow it. What was renamed or left out is listed in the archive's
    NOTES_NAME member, never dropped silently.

    Memory: one directory's names at a time (plus the archive root's) and the pending
    directories' archived paths.
    """

    def __init__(self) -> None:
        self._root: set[bytes] = set()
        self._pending: dict[bytes, bytes] = {}  # original dir path -> archived path
        self._open: tuple[bytes, set[bytes]] | None = None
        self.notes: list[str] = []
        self._noted = 0

    def root_is(self, original_dir: bytes) -> None:
        """The contents of `original_dir` go at the archive root (the whole snapshot)."""
        self._pending[original_dir] = b""

    def top(self, original: bytes, name: bytes, is_dir: bool) -> bytes:
        """The archived name of a selected item, at the archive root."""
        return self._place(b"", self._root, original, name, is_dir)

    def enter(self, original_dir: bytes) -> bool:
        """A directory's block of entries starts: False when its entries must be left out
        (the directory is not a directory member of this archive, or was entered before)."""
        archived = self._pending.pop(original_dir, None)
        if archived is None:
            self.note(f"left out: the entries of {_show(original_dir)}, which is not a "
                      "directory in this archive")
            self._open = None
            return False
        self._open = (archived, self._root if archived == b"" else set())
        return True

    def child(self, original: bytes, name: bytes, is_dir: bool) -> bytes:
        """The archived name of an entry of the directory last entered."""
        assert self._open is not None
        parent, taken = self._open
        return self._place(parent, taken, original, name, is_dir)

    def notes_name(self) -> bytes:
        return self._place(b"", self._root, b"", NOTES_NAME, False, quiet=True)

    def notes_text(self) -> bytes:
        more = self._noted - len(self.notes)
        lines = ["This archive differs from the snapshot so that extracting it cannot write "
                 "outside the target directory:", *self.notes]
        if more > 0:
            lines.append(f"... and {more} more")
        return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")

    def note(self, text: str) -> None:
        self._noted += 1
        if len(self.notes) < _MAX_NOTES:
            self.notes.append(text)

    def _place(self, parent: bytes, taken: set[bytes], original: bytes, name: bytes,
               is_dir: bool, quiet: bool = False) -> bytes:
        clean = name.replace(b"\\", b"_").replace(b"/", b"_").replace(b"\0", b"_")
        if clean in (b"", b".", b".."):
            clean = b"_" + clean
        candidate, n = clean, 2
        while candidate in taken:
            stem, dot, ext = clean.rpartition(b".")
            candidate = (stem + b" (%d)." % n + ext) if dot and stem else clean + b" (%d)" % n
            n += 1
        taken.add(candidate)
        archived = parent + b"/" + candidate if parent else candidate
        if candidate != name and not quiet:
            self.note(f"renamed: {_show(original)} -> {_show(archived)}")
        if is_dir:
            self._pending[original] = archived
        return archived


def _show(path: bytes) -> str:
    return "/" + path.decode("utf-8", "backslashreplace")


class _Sequencer:
    """The call-order rules both writers share, so misuse fails loudly instead of corrupting."""

    def __init__(self) -> None:
        self._in_file = False
        self._finished = False
        self._broken = False

    def _ready(self, in_file: bool) -> None:
        if self._broken:
            raise RuntimeError("archive stream was aborted by an earlier error")
        if self._finished:
            raise RuntimeError("archive is already finished")
        if self._in_file != in_file:
            raise RuntimeError("file_data/end_file need an open file; other calls need none"
                               if in_file else "previous file was not ended with end_file")

    def _fail(self, message: str) -> ValueError:
        self._broken = True
        return ValueError(message)


class _Spool:
    """Bytes appended in order and read back once, in memory up to `limit` and in an unnamed
    temporary file beyond (under `directory`): a zip's central directory grows by about 70
    bytes per entry, which for a million-entry folder would otherwise stay in memory for the
    whole download."""

    PIECE = 1 << 20

    def __init__(self, directory: str | None, limit: int = 1 << 20) -> None:
        self._dir, self._limit = directory, limit
        self._mem = bytearray()
        self._file: IO[bytes] | None = None
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._mem += data
        if len(self._mem) > self._limit:
            # closed by pieces() or close(), or with the writer when a download is cut
            self._file = tempfile.TemporaryFile(dir=self._dir)  # noqa: SIM115
            self._file.write(self._mem)
            self._mem = bytearray()

    def pieces(self) -> Iterator[bytes]:
        """Everything written, in pieces of at most PIECE bytes; the spool is then empty."""
        if self._file is None:
            mem, self._mem = self._mem, bytearray()
            for i in range(0, len(mem), self.PIECE):
                yield bytes(mem[i:i + self.PIECE])
            return
        f, self._file = self._file, None
        try:
            f.seek(0)
            while piece := f.read(self.PIECE):
                yield piece
        finally:
            f.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# --- zip ---------------------------------------------------------------------------------------
# Structures from PKWARE's APPNOTE.TXT 6.3.x; section numbers in comments.

_SIG_LOCAL = 0x04034B50  # 4.3.7
_SIG_DESCRIPTOR = 0x08074B50  # 4.3.9.3
_SIG_CENTRAL = 0x02014B50  # 4.3.12
_SIG_EOCD64 = 0x06064B50  # 4.3.14
_SIG_EOCD64_LOCATOR = 0x07064B50  # 4.3.15
_SIG_EOCD = 0x06054B50  # 4.3.16

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_DESCRIPTOR = struct.Struct("<IIII")
_DESCRIPTOR64 = struct.Struct("<IIQQ")
_EOCD64 = struct.Struct("<IQHHIIQQQQ")
_EOCD64_LOCATOR = struct.Struct("<IIQI")
_EOCD = struct.Struct("<IHHHHIIH")

_FLAG_DESCRIPTOR = 0x0008  # bit 3: crc and sizes follow the data (4.4.4)
_FLAG_UTF8 = 0x0800  # bit 11: name is UTF-8 (4.4.4, appendix D)
_METHOD_STORED = 0
# "Version made by": upper byte 3 = Unix, so extractors read permissions from the external
# attributes; lower byte = APPNOTE version 6.3 (4.4.2).
_MADE_BY = (3 << 8) | 63
_NEEDS_DEFAULT = 20  # 2.0: directories, and the usual baseline for stored files (4.4.3.2)
_NEEDS_ZIP64 = 45  # 4.5: ZIP64
_EXTRA_ZIP64 = 0x0001  # 4.5.3
_EXTRA_TIMESTAMP = 0x5455  # Info-ZIP extended timestamp (4.6.1 / Info-ZIP extrafld.txt)
_MSDOS_DIRECTORY = 0x10

_DOS_MIN = (1980, 1, 1, 0, 0, 0)
_DOS_MAX = (2107, 12, 31, 23, 59, 58)


def _dos_datetime(mtime_ns: int) -> tuple[int, int]:
    """(time, date) in MS-DOS format, local time as zip tools expect, clamped to 1980..2107.

    The exact UTC time travels in the extended-timestamp field; this is the fallback every
    reader understands (two-second resolution).
    """
    try:
        tm = time.localtime(mtime_ns // 1_000_000_000)
        fields = (tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec)
    except (OverflowError, OSError, ValueError):
        fields = _DOS_MIN if mtime_ns < 0 else _DOS_MAX
    if fields < _DOS_MIN:
        fields = _DOS_MIN
    elif fields > _DOS_MAX:
        fields = _DOS_MAX
    year, month, day, hour, minute, second = fields
    dos_time = (hour << 11) | (minute << 5) | (min(second, 59) // 2)
    dos_date = ((year - 1980) << 9) | (month << 5) | day
    return dos_time, dos_date


def _timestamp_extra(mtime_ns: int) -> bytes:
    """The 0x5455 field with only the modification time (flag bit 0).

    The field holds a signed 32-bit Unix time; outside that range it is left out and readers
    fall back to the DOS time rather than being told a wrong year.
    """
    seconds = mtime_ns // 1_000_000_000
    if not -(2**31) <= seconds < 2**31:
        return b""
    return struct.pack("<HHBi", _EXTRA_TIMESTAMP, 5, 1, seconds)


@dataclass(slots=True)
class _ZipEntry:
    """What the central directory needs about an entry, plus streaming state while it is open."""

    name: bytes
    flags: int
    size: int
    offset: int
    dos_time: int
    dos_date: int
    timestamp: bytes
    external: int
    crc: int = 0
    written: int = 0

    @property
    def zip64_size(self) -> bool:
        return self.size >= ZIP64_LIMIT

    @property
    def needs(self) -> int:
        return _NEEDS_ZIP64 if self.zip64_size or self.offset >= ZIP64_LIMIT else _NEEDS_DEFAULT


class ZipStream(_Sequencer):
    """A zip archive produced front to back, never seeking and never buffering file data.

    Entries are STORED (method 0, no compression): downloads run over the LAN, where the link
    is faster than the appliance's small CPU could deflate, and most backed-up bulk (photos,
    video, archives) would not shrink anyway. Because the CRC-32 is only known once a file has
    streamed past, file entries set general-purpose bit 3 and follow their data with a data
    descriptor; the central directory at the end carries the real values, which is what
    extractors read. Sizes are known up front from the catalog and the streamed count is
    checked against them, so a short read raises instead of producing a wrong archive.

    ZIP64 structures are used only where a value does not fit (a file size or local-header
    offset >= ZIP64_LIMIT, or an entry count >= ZIP64_COUNT_LIMIT), so ordinary archives stay
    readable by old tools. Names are raw bytes: flagged UTF-8 when they decode as UTF-8,
    stored as-is otherwise, so nothing is lost for non-UTF-8 file names.
    """

    content_type = "application/zip"
    extension = ".zip"

    def __init__(self, spool_dir: str | None = None) -> None:
        super().__init__()
        self._offset = 0  # bytes emitted so far = offset of the next local header
        self._central = _Spool(spool_dir)  # the central directory, emitted by finish
        self._count = 0
        self._entry: _ZipEntry | None = None

    # Public interface

    def begin_file(self, path: bytes, size: int, mtime_ns: int, mode: int) -> bytes:
        self._ready(in_file=False)
        _check_path(path)
        if size < 0:
            raise ValueError(f"negative size {size} for {path!r}")
        entry = self._new_entry(path, size, mtime_ns, stat.S_IFREG | stat.S_IMODE(mode))
        entry.flags |= _FLAG_DESCRIPTOR
        # With bit 3 the crc and sizes in the local header are zero (4.4.4); a ZIP64 local
        # header instead marks them 0xFFFFFFFF and its extra field must hold both sizes (4.5.3),
        # also zero here, and the descriptor then uses 8-byte sizes (4.3.9.2).
        header = self._local_header(entry, crc=0, size=0)
        self._in_file = True
        self._entry = entry
        return self._emit(header)

    def file_data(self, data: bytes | memoryview) -> bytes:
        """Hot path: a CRC update and a count; the bytes go back out uncopied."""
        self._ready(in_file=True)
        entry = self._entry
        assert entry is not None
        if not isinstance(data, bytes):
            data = bytes(data)  # the caller may reuse its buffer once we return
        n = len(data)
        if entry.written + n > entry.size:
            raise self._fail(f"{entry.name!r}: more data than the declared {entry.size} bytes")
        entry.crc = zlib.crc32(data, entry.crc)
        entry.written += n
        self._offset += n
        return data

    def end_file(self) -> bytes:
        self._ready(in_file=True)
        entry = self._entry
        assert entry is not None
        if entry.written != entry.size:
            raise self._fail(f"{entry.name!r}: got {entry.written} bytes, "
                             f"declared {entry.size}")
        if entry.zip64_size:
            descriptor = _DESCRIPTOR64.pack(_SIG_DESCRIPTOR, entry.crc, entry.size, entry.size)
        else:
            descriptor = _DESCRIPTOR.pack(_SIG_DESCRIPTOR, entry.crc, entry.size, entry.size)
        self._add_central(entry)
        self._in_file = False
        self._entry = None
        return self._emit(descriptor)

    def add_dir(self, path: bytes, mtime_ns: int, mode: int) -> bytes:
        self._ready(in_file=False)
        _check_path(path)
        entry = self._new_entry(path + b"/", 0, mtime_ns, stat.S_IFDIR | stat.S_IMODE(mode))
        entry.external |= _MSDOS_DIRECTORY
        return self._whole_entry(entry, b"")

    def add_symlink(self, path: bytes, target: bytes, mtime_ns: int, mode: int) -> bytes:
        """A stored entry whose data is the target and whose mode says S_IFLNK (as Info-ZIP)."""
        self._ready(in_file=False)
        _check_path(path)
        _check_target(target)
        entry = self._new_entry(path, len(target), mtime_ns,
                                stat.S_IFLNK | stat.S_IMODE(mode))
        return self._whole_entry(entry, target)

    def finish(self) -> bytes:
        """The central directory and end records; ZIP64 ones only if a value overflows."""
        return b"".join(self.finish_pieces())

    def finish_pieces(self) -> Iterator[bytes]:
        """`finish()` in pieces: the central directory read back from its spool."""
        self._ready(in_file=False)
        self._finished = True
        cd_offset, cd_size, count = self._offset, self._central.size, self._count
        for piece in self._central.pieces():
            yield self._emit(piece)
        tail = bytearray()
        if count >= ZIP64_COUNT_LIMIT or cd_offset >= ZIP64_LIMIT or cd_size >= ZIP64_LIMIT:
            eocd64_offset = cd_offset + cd_size
            tail += _EOCD64.pack(_SIG_EOCD64, _EOCD64.size - 12, _MADE_BY, _NEEDS_ZIP64,
                                 0, 0, count, count, cd_size, cd_offset)
            tail += _EOCD64_LOCATOR.pack(_SIG_EOCD64_LOCATOR, 0, eocd64_offset, 1)
        short_count = 0xFFFF if count >= ZIP64_COUNT_LIMIT else count
        tail += _EOCD.pack(_SIG_EOCD, 0, 0, short_count, short_count,
                           0xFFFFFFFF if cd_size >= ZIP64_LIMIT else cd_size,
                           0xFFFFFFFF if cd_offset >= ZIP64_LIMIT else cd_offset, 0)
        yield self._emit(bytes(tail))

    # Internals

    def _emit(self, data: bytes) -> bytes:
        self._offset += len(data)
        return data

    def _new_entry(self, name: bytes, size: int, mtime_ns: int, unix_mode: int) -> _ZipEntry:
        if len(name) > 0xFFFF:
            raise ValueError(f"name too long for zip ({len(name)} bytes)")
        try:
            name.decode("utf-8")
            flags = _FLAG_UTF8
        except UnicodeDecodeError:
            flags = 0
        dos_time, dos_date = _dos_datetime(mtime_ns)
        return _ZipEntry(name=name, flags=flags, size=size, offset=self._offset,
                         dos_time=dos_time, dos_date=dos_date,
                         timestamp=_timestamp_extra(mtime_ns), external=unix_mode << 16)

    def _local_header(self, entry: _ZipEntry, crc: int, size: int) -> bytes:
        extra = entry.timestamp
        if entry.zip64_size:
            extra = struct.pack("<HHQQ", _EXTRA_ZIP64, 16, size, size) + extra
            size = 0xFFFFFFFF
        return _LOCAL.pack(_SIG_LOCAL, entry.needs, entry.flags, _METHOD_STORED,
                           entry.dos_time, entry.dos_date, crc, size, size,
                           len(entry.name), len(extra)) + entry.name + extra

    def _whole_entry(self, entry: _ZipEntry, data: bytes) -> bytes:
        """Directories and symlinks: data known up front, so no descriptor is needed."""
        entry.crc = zlib.crc32(data)
        entry.written = len(data)
        out = self._local_header(entry, crc=entry.crc, size=entry.size) + data
        self._add_central(entry)
        return self._emit(out)

    def _add_central(self, entry: _ZipEntry) -> None:
        size, offset = entry.size, entry.offset
        zip64: list[int] = []
        # 4.5.3: only the fields whose central value is 0xFFFFFFFF, in this fixed order.
        if entry.zip64_size:
            zip64 += (size, size)
            size = 0xFFFFFFFF
        if offset >= ZIP64_LIMIT:
            zip64.append(offset)
            offset = 0xFFFFFFFF
        extra = entry.timestamp
        if zip64:
            extra = struct.pack(f"<HH{len(zip64)}Q", _EXTRA_ZIP64, 8 * len(zip64), *zip64) + extra
        self._central.write(_CENTRAL.pack(
            _SIG_CENTRAL, _MADE_BY, entry.needs, entry.flags, _METHOD_STORED,
            entry.dos_time, entry.dos_date, entry.crc, size, size,
            len(entry.name), len(extra), 0, 0, 0, entry.external, offset)
            + entry.name + extra)
        self._count += 1


# --- tar.zst -----------------------------------------------------------------------------------


class TarZstStream(_Sequencer):
    """A POSIX pax tar compressed with zstd, emitted as the compressor produces output.

    pax headers carry names of any length and raw non-UTF-8 bytes (hdrcharset=BINARY, via
    surrogateescape), and sizes beyond the 8 GiB ustar limit, so GNU tar and bsdtar reproduce
    the snapshot exactly. zstd level 3 costs little CPU; the frame checksum lets `zstd -t` and
    tar detect a corrupted download. Owners are not recorded (uid/gid 0, no names): the files
    belong to whoever extracts them.
    """

    content_type = "application/zstd"
    extension = ".tar.zst"

    def __init__(self, level: int = 3) -> None:
        super().__init__()
        compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
        self._z = compressor.compressobj()
        self._tar_bytes = 0  # uncompressed tar stream length, for block padding
        self._name = b""
        self._size = 0
        self._written = 0

    def begin_file(self, path: bytes, size: int, mtime_ns: int, mode: int) -> bytes:
        self._ready(in_file=False)
        if size < 0:
            raise ValueError(f"negative size {size} for {path!r}")
        header = self._header(path, tarfile.REGTYPE, mtime_ns, mode, size=size)
        self._in_file = True
        self._name, self._size, self._written = path, size, 0
        return self._feed(header)

    def file_data(self, data: bytes | memoryview) -> bytes:
        """Hot path: the piece goes straight into the compressor, no copy."""
        self._ready(in_file=True)
        n = data.nbytes if isinstance(data, memoryview) else len(data)
        if self._written + n > self._size:
            raise self._fail(f"{self._name!r}: more data than the declared {self._size} bytes")
        self._written += n
        return self._feed(data, n)

    def end_file(self) -> bytes:
        self._ready(in_file=True)
        if self._written != self._size:
            raise self._fail(f"{self._name!r}: got {self._written} bytes, declared {self._size}")
        self._in_file = False
        return self._feed(bytes(-self._size % tarfile.BLOCKSIZE))

    def add_dir(self, path: bytes, mtime_ns: int, mode: int) -> bytes:
        self._ready(in_file=False)
        return self._feed(self._header(path, tarfile.DIRTYPE, mtime_ns, mode))

    def add_symlink(self, path: bytes, target: bytes, mtime_ns: int, mode: int) -> bytes:
        self._ready(in_file=False)
        _check_target(target)
        return self._feed(self._header(path, tarfile.SYMTYPE, mtime_ns, mode, target=target))

    def finish(self) -> bytes:
        """Two zero blocks end the archive; pad to a whole tar record as tar(1) does."""
        self._ready(in_file=False)
        self._finished = True
        end = 2 * tarfile.BLOCKSIZE
        end += -(self._tar_bytes + end) % tarfile.RECORDSIZE
        out = self._feed(bytes(end))
        return out + self._z.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)

    def finish_pieces(self) -> Iterator[bytes]:
        yield self.finish()  # a few blocks and the compressor's tail: small

    def _header(self, path: bytes, kind: bytes, mtime_ns: int, mode: int, *, size: int = 0,
                target: bytes = b"") -> bytes:
        _check_path(path)
        info = tarfile.TarInfo(path.decode("utf-8", "surrogateescape"))
        info.type = kind
        info.size = size
        info.mtime = mtime_ns // 1_000_000_000
        info.mode = stat.S_IMODE(mode)
        info.linkname = target.decode("utf-8", "surrogateescape")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info.tobuf(tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")

    def _feed(self, data: bytes | memoryview, n: int | None = None) -> bytes:
        self._tar_bytes += len(data) if n is None else n
        return self._z.compress(data)


FORMATS: dict[str, type[ZipStream] | type[TarZstStream]] = {
    "zip": ZipStream,
    "tar.zst": TarZstStream,
}


def writer_for(fmt: str, spool_dir: str | None = None) -> ArchiveWriter:
    """A fresh writer for a download format named in the request ("zip" or "tar.zst");
    a zip keeps its central directory beyond 1 MiB in a temporary file under `spool_dir`."""
    if fmt == "zip":
        return ZipStream(spool_dir)
    if fmt == "tar.zst":
        return TarZstStream()
    raise ValueError(f"unknown archive format {fmt!r}; allowed: {', '.join(FORMATS)}")
