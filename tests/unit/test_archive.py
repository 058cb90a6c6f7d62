"""Streaming download archives: real round trips through zipfile, tarfile+zstandard and, when
installed, Info-ZIP unzip and GNU tar; ZIP64 exercised with small files by lowering the limit."""

from __future__ import annotations

import io
import os
import random
import shutil
import stat
import struct
import subprocess
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from appliance.restores import archive
from appliance.restores.archive import ArchiveWriter, TarZstStream, ZipStream, writer_for

NS = 1_000_000_000
BASE_MTIME = 1_700_000_001 * NS + 123_456_789  # odd second, sub-second part


@dataclass
class Entry:
    path: bytes
    kind: str  # "file", "dir", "symlink"
    mode: int
    mtime_ns: int
    data: bytes = b""
    target: bytes = b""
    pieces: tuple[int, ...] = ()  # uneven piece sizes to feed; remainder goes last


def sample_entries() -> list[Entry]:
    rng = random.Random(1234)
    big = rng.randbytes(300_000)
    uneven = rng.randbytes(200_001)
    return [
        Entry(b"docs", "dir", 0o750, BASE_MTIME),
        Entry(b"empty.txt", "file", 0o644, BASE_MTIME + 10 * NS),
        Entry(b"docs/nested/deep.bin", "file", 0o600, BASE_MTIME + 20 * NS, data=big),
        Entry("with space été ☃.txt".encode(), "file", 0o644, BASE_MTIME + 30 * NS,
              data=b"unicode name\n"),
        Entry(b"caf\xe9.txt", "file", 0o640, BASE_MTIME + 40 * NS, data=b"latin-1 name\n"),
        Entry(b"run.sh", "file", 0o755, BASE_MTIME + 50 * NS, data=b"#!/bin/sh\necho hi\n"),
        Entry(b"link", "symlink", 0o777, BASE_MTIME + 60 * NS, target=b"docs/nested/deep.bin"),
        Entry(b"pieces.bin", "file", 0o644, BASE_MTIME + 70 * NS, data=uneven,
              pieces=(1, 7, 4095, 65_537, 3)),
    ]


def write(writer: ArchiveWriter, entries: list[Entry]) -> bytes:
    out = io.BytesIO()
    for e in entries:
        if e.kind == "dir":
            out.write(writer.add_dir(e.path, e.mtime_ns, e.mode))
        elif e.kind == "symlink":
            out.write(writer.add_symlink(e.path, e.target, e.mtime_ns, e.mode))
        else:
            out.write(writer.begin_file(e.path, len(e.data), e.mtime_ns, e.mode))
            view = memoryview(e.data)
            pos = 0
            for n in (*e.pieces, len(e.data)):
                piece = view[pos:pos + n]
                if piece:
                    out.write(writer.file_data(piece))
                pos += len(piece)
            out.write(writer.end_file())
    out.write(writer.finish())
    return out.getvalue()


def raw_zip_name(info: zipfile.ZipInfo) -> bytes:
    return info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")


def unix_mtime_extra(extra: bytes) -> int | None:
    """The modification time from an 0x5455 extended-timestamp field, if any."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        if tag == 0x5455 and extra[pos + 4] & 1:
            return struct.unpack_from("<i", extra, pos + 5)[0]
        pos += 4 + size
    return None


def local_extra(data: bytes, info: zipfile.ZipInfo) -> tuple[int, bytes, int]:
    """(flags, extra field, offset just past the name+extra) of the entry's local header."""
    off = info.header_offset
    sig, _, flags = struct.unpack_from("<IHH", data, off)
    assert sig == 0x04034B50
    name_len, extra_len = struct.unpack_from("<HH", data, off + 26)
    start = off + 30 + name_len
    return flags, data[start:start + extra_len], start + extra_len


def check_zip(data: bytes, entries: list[Entry], *, zip64_descriptors: bool = False) -> None:
    zf = zipfile.ZipFile(io.BytesIO(data))
    assert zf.testzip() is None
    infos = zf.infolist()
    expected_names = [e.path + b"/" if e.kind == "dir" else e.path for e in entries]
    assert [raw_zip_name(i) for i in infos] == expected_names
    for e, info in zip(entries, infos, strict=True):
        mode = info.external_attr >> 16
        assert info.create_system == 3
        assert stat.S_IMODE(mode) == e.mode
        assert info.compress_type == zipfile.ZIP_STORED
        if e.kind == "dir":
            assert info.is_dir() and stat.S_ISDIR(mode)
            assert info.external_attr & 0x10
        elif e.kind == "symlink":
            assert stat.S_ISLNK(mode)
            assert zf.read(info) == e.target
        else:
            assert stat.S_ISREG(mode)
            assert zf.read(info) == e.data
        dos = time.mktime((*info.date_time, 0, 0, -1))
        assert 0 <= e.mtime_ns / NS - dos < 2
        assert unix_mtime_extra(info.extra) == e.mtime_ns // NS
        flags, lextra, data_start = local_extra(data, info)
        assert flags == info.flag_bits
        assert bool(flags & 0x800) == (e.path != b"caf\xe9.txt")
        assert unix_mtime_extra(lextra) == e.mtime_ns // NS
        if e.kind == "file":
            # zipfile never reads data descriptors; check them by hand.
            assert flags & 0x8
            wide = zip64_descriptors and info.file_size >= archive.ZIP64_LIMIT
            fmt = "<IIQQ" if wide else "<IIII"
            sig, crc, csize, usize = struct.unpack_from(fmt, data, data_start + len(e.data))
            assert (sig, crc, csize, usize) == (0x08074B50, info.CRC, len(e.data), len(e.data))
        else:
            assert not flags & 0x8


def test_zip_round_trip() -> None:
    entries = sample_entries()
    data = write(ZipStream(), entries)
    check_zip(data, entries)
    assert b"PK\x06\x06" not in data[-200:]  # nothing here needs ZIP64


def test_zip_file_data_is_not_copied() -> None:
    w = ZipStream()
    w.begin_file(b"a", 8, BASE_MTIME, 0o644)
    piece = b"1234"
    assert w.file_data(piece) is piece
    assert w.file_data(memoryview(b"5678")) == b"5678"
    w.end_file()
    w.finish()


def test_zip64_forced_by_low_limit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """zipfile honours zip64 extras whatever the value, so a 1000-byte limit covers the
    large-file, large-offset and large-directory paths without gigabytes of data."""
    monkeypatch.setattr(archive, "ZIP64_LIMIT", 1000)
    entries = sample_entries()
    data = write(ZipStream(), entries)
    check_zip(data, entries, zip64_descriptors=True)

    zf = zipfile.ZipFile(io.BytesIO(data))
    deep = zf.getinfo("docs/nested/deep.bin")
    _, lextra, _ = local_extra(data, deep)
    assert struct.unpack_from("<HH", lextra) == (0x0001, 16)
    assert deep.extract_version == 45
    assert deep.header_offset >= 1000 or deep.file_size >= 1000
    late = zf.getinfo("pieces.bin")
    assert late.header_offset > 1000  # its offset travelled in the central zip64 extra
    # End records: zip64 record, its locator, then the classic record pointing at them.
    eocd = data.rindex(b"PK\x05\x06")
    assert data[eocd - 20:eocd - 16] == b"PK\x06\x07"
    (z64_offset,) = struct.unpack_from("<Q", data, eocd - 12)
    assert data[z64_offset:z64_offset + 4] == b"PK\x06\x06"
    assert struct.unpack_from("<I", data, eocd + 16)[0] == 0xFFFFFFFF  # cd offset marker

    if shutil.which("unzip"):  # Info-ZIP checks every CRC and the zip64 structures too
        zpath = tmp_path / "z64.zip"
        zpath.write_bytes(data)
        proc = subprocess.run(["unzip", "-tq", str(zpath)], capture_output=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_zip64_many_entries() -> None:
    n = 65_536 + 5
    w = ZipStream()
    out = io.BytesIO()
    for i in range(n):
        out.write(w.begin_file(b"f%06d" % i, 0, BASE_MTIME, 0o644))
        out.write(w.end_file())
    out.write(w.finish())
    data = out.getvalue()
    zf = zipfile.ZipFile(io.BytesIO(data))
    infos = zf.infolist()
    assert len(infos) == n
    assert infos[-1].filename == f"f{n - 1:06d}"
    eocd = data.rindex(b"PK\x05\x06")
    assert data[eocd - 20:eocd - 16] == b"PK\x06\x07"
    assert data[eocd - 76:eocd - 72] == b"PK\x06\x06"
    assert struct.unpack_from("<HH", data, eocd + 8) == (0xFFFF, 0xFFFF)
    assert struct.unpack_from("<QQ", data, eocd - 76 + 24) == (n, n)


@pytest.mark.skipif(shutil.which("unzip") is None, reason="Info-ZIP unzip is not installed")
def test_zip_extracts_with_unzip(tmp_path: Path) -> None:
    entries = sample_entries()
    zpath = tmp_path / "a.zip"
    zpath.write_bytes(write(ZipStream(), entries))
    dest = tmp_path / "out"
    proc = subprocess.run(["unzip", "-q", str(zpath), "-d", str(dest)], capture_output=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    check_extracted(dest, entries)


@pytest.mark.skipif(shutil.which("tar") is None or shutil.which("zstd") is None,
                    reason="tar and zstd are not installed")
def test_tar_zst_extracts_with_tar(tmp_path: Path) -> None:
    entries = sample_entries()
    apath = tmp_path / "a.tar.zst"
    apath.write_bytes(write(TarZstStream(), entries))
    dest = tmp_path / "out"
    dest.mkdir()
    proc = subprocess.run(["tar", "--zstd", "-xpf", str(apath), "-C", str(dest)],
                          capture_output=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    check_extracted(dest, entries)


def check_extracted(dest: Path, entries: list[Entry]) -> None:
    root = os.fsencode(dest)
    for e in entries:
        full = os.path.join(root, e.path)
        st = os.lstat(full)
        if e.kind == "dir":
            assert stat.S_ISDIR(st.st_mode)
        elif e.kind == "symlink":
            assert stat.S_ISLNK(st.st_mode)
            assert os.readlink(full) == e.target
            continue
        else:
            assert stat.S_ISREG(st.st_mode)
            with open(full, "rb") as f:
                assert f.read() == e.data
        assert stat.S_IMODE(st.st_mode) == e.mode
        if e.kind == "file":  # tools touch directories again as they fill them
            assert abs(st.st_mtime - e.mtime_ns / NS) < 2


def read_tar(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))
    members = []
    with tarfile.open(fileobj=reader, mode="r|", encoding="utf-8") as tf:
        for m in tf:
            f = tf.extractfile(m) if m.isfile() else None
            members.append((m, f.read() if f else b""))
    return members


def test_tar_zst_round_trip() -> None:
    entries = sample_entries()
    data = write(TarZstStream(), entries)
    members = read_tar(data)
    assert [m.name.encode("utf-8", "surrogateescape") for m, _ in members] == [
        e.path for e in entries]
    for e, (m, content) in zip(entries, members, strict=True):
        assert m.mode == e.mode
        assert m.mtime == e.mtime_ns // NS
        assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "")
        if e.kind == "dir":
            assert m.isdir()
        elif e.kind == "symlink":
            assert m.issym()
            assert m.linkname.encode("utf-8", "surrogateescape") == e.target
        else:
            assert m.isfile()
            assert m.size == len(e.data)
            assert content == e.data
    # The raw tar: a whole number of records ending in (at least) two zero blocks.
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    assert len(raw) % tarfile.RECORDSIZE == 0
    assert raw[-1024:] == bytes(1024)


def test_tar_zst_output_is_incremental() -> None:
    """Incompressible data must come out while it streams, not all at finish()."""
    w = TarZstStream()
    rng = random.Random(7)
    size = 8 * 1024 * 1024
    emitted = len(w.begin_file(b"big.bin", size, BASE_MTIME, 0o644))
    for _ in range(size // (1 << 20)):
        emitted += len(w.file_data(rng.randbytes(1 << 20)))
    emitted += len(w.end_file())
    assert emitted > size // 2
    tail = w.finish()
    assert len(tail) < size // 4


def test_tar_long_and_binary_names_survive() -> None:
    long_name = b"d" * 120 + b"/" + b"x\xff\xfe" * 50
    w = TarZstStream()
    data = w.begin_file(long_name, 3, BASE_MTIME, 0o644) + w.file_data(b"abc") + w.end_file()
    data += w.add_symlink(b"l\xe9", b"/abs/\xe9/../target", BASE_MTIME, 0o777) + w.finish()
    (m1, c1), (m2, _) = read_tar(data)
    assert m1.name.encode("utf-8", "surrogateescape") == long_name and c1 == b"abc"
    assert m2.linkname.encode("utf-8", "surrogateescape") == b"/abs/\xe9/../target"


@pytest.mark.parametrize("fmt", ["zip", "tar.zst"])
def test_writer_for(fmt: str) -> None:
    w = writer_for(fmt)
    assert w.extension == "." + fmt
    assert w.content_type == {"zip": "application/zip", "tar.zst": "application/zstd"}[fmt]
    assert isinstance(w, ZipStream if fmt == "zip" else TarZstStream)


def test_writer_for_unknown_format() -> None:
    with pytest.raises(ValueError, match=r"zip.*tar\.zst"):
        writer_for("rar")


@pytest.mark.parametrize("fmt", ["zip", "tar.zst"])
def test_short_data_raises_and_aborts(fmt: str) -> None:
    w = writer_for(fmt)
    w.begin_file(b"a.bin", 10, BASE_MTIME, 0o644)
    w.file_data(b"12345")
    with pytest.raises(ValueError, match="declared 10"):
        w.end_file()
    with pytest.raises(RuntimeError, match="aborted"):
        w.finish()


@pytest.mark.parametrize("fmt", ["zip", "tar.zst"])
def test_long_data_raises_and_aborts(fmt: str) -> None:
    w = writer_for(fmt)
    w.begin_file(b"a.bin", 4, BASE_MTIME, 0o644)
    w.file_data(b"123")
    with pytest.raises(ValueError, match="more data"):
        w.file_data(b"45")
    with pytest.raises(RuntimeError, match="aborted"):
        w.file_data(b"4")


@pytest.mark.parametrize("fmt", ["zip", "tar.zst"])
@pytest.mark.parametrize("path", [b"../x", b"/abs", b"a/./b", b"a\0b", b"", b"a//b", b"a/",
                                  b"..", b".", b"a/.."])
def test_bad_paths_rejected(fmt: str, path: bytes) -> None:
    w = writer_for(fmt)
    with pytest.raises(ValueError):
        w.begin_file(path, 0, BASE_MTIME, 0o644)
    with pytest.raises(ValueError):
        w.add_dir(path, BASE_MTIME, 0o755)
    with pytest.raises(ValueError):
        w.add_symlink(path, b"target", BASE_MTIME, 0o777)
    # A rejected name emits nothing, so the archive can go on without it.
    w.begin_file(b"ok", 0, BASE_MTIME, 0o644)
    w.end_file()
    w.finish()


@pytest.mark.parametrize("fmt", ["zip", "tar.zst"])
def test_call_order_enforced(fmt: str) -> None:
    w = writer_for(fmt)
    with pytest.raises(RuntimeError):
        w.file_data(b"x")
    w.begin_file(b"a", 1, BASE_MTIME, 0o644)
    with pytest.raises(RuntimeError):
        w.add_dir(b"d", BASE_MTIME, 0o755)
    w.file_data(b"x")
    w.end_file()
    w.finish()
    with pytest.raises(RuntimeError):
        w.finish()


def test_zip_dos_time_clamped() -> None:
    w = ZipStream()
    old = -5 * NS  # 1969
    future = 5_000_000_000 * NS  # year 2128
    data = w.add_dir(b"old", old, 0o755) + w.add_dir(b"new", future, 0o755) + w.finish()
    zf = zipfile.ZipFile(io.BytesIO(data))
    assert zf.getinfo("old/").date_time == (1980, 1, 1, 0, 0, 0)
    assert zf.getinfo("new/").date_time == (2107, 12, 31, 23, 59, 58)
    assert unix_mtime_extra(zf.getinfo("old/").extra) == -5
    assert unix_mtime_extra(zf.getinfo("new/").extra) is None  # beyond the 32-bit field
