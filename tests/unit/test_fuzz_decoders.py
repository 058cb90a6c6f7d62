"""Property-based fuzzing of what the appliance decodes from the outside: catalogs and their
directory index (sent by agents, read back by restores), manifests (read from disk and from
the data center) and chunk files (the upload verifier). Malformed, truncated, oversized and
hostile input must end in the decoder's own clean error -- never another exception, never a
hang -- and a refused chunk leaves nothing on disk.

Examples per property: RDR_FUZZ_EXAMPLES (default 150 here; set it higher for the full run).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.store.datastore import Datastore
from appliance.store.errors import StoreError
from rdr_format.catalog import (
    DIR,
    FILE,
    HARDLINK,
    SYMLINK,
    CatalogError,
    CatalogWriter,
    Entry,
    Range,
    decode_entry,
    iter_blocks,
    iter_index,
    validate,
)
from rdr_format.chunkfile import (
    HEADER_SIZE,
    MAX_FILE_SIZE,
    MAX_PLAIN_SIZE,
    ChunkDecoder,
    ChunkEncoder,
    ChunkError,
    chunk_id,
)
from rdr_format.manifest import Manifest, StreamRef

EXAMPLES = int(os.environ.get("RDR_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=2000,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
CID = "ab" * 32

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=6),
    max_leaves=25)

# Names an agent -- or an attacker holding a host's token -- might put in a catalog.
hostile_names = st.sampled_from([b"a", b"b", b"..", b".", b"", b"a/b", b"/etc", b"x\0y",
                                 b"\xff\xfe", b"z" * 5000, b"../../outside", b"c"])


def _entry_dict(name: bytes, typ: str, extra: dict) -> dict:
    d = {"n": name.decode("utf-8", "surrogateescape") if name.isascii() else
         {"b64": base64.b64encode(name).decode()},
         "t": typ, "m": 0o644, "u": 0, "g": 0, "mt": 0}
    d.update(extra)
    return d


entry_dicts = st.builds(
    _entry_dict, hostile_names, st.sampled_from(["f", "d", "l", "h", "p", "c", "b", "?", 7]),
    st.dictionaries(st.sampled_from(["s", "r", "l", "x", "ino", "ct", "rd", "m", "mt"]),
                    json_values | st.just([[CID, 0, 1, 1]]), max_size=4))


def valid_catalog() -> tuple[bytes, bytes]:
    cat, idx = bytearray(), bytearray()
    w = CatalogWriter(cat.extend, idx.extend)
    w.add_block(b"", [Entry(b"d", DIR, 0o755),
                      Entry(b"f", FILE, 0o644, size=5, ranges=[Range(CID, 0, 5, 5)]),
                      Entry(b"h", HARDLINK, 0o644, size=5, ranges=[Range(CID, 0, 5, 5)],
                            link=b"f"),
                      Entry(b"l", SYMLINK, 0o777, link=b"../x")])
    w.add_block(b"d", [Entry(b"g", FILE, 0o600, size=0)])
    return bytes(cat), bytes(idx)


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` split at `cuts`, as chunk plaintexts arrive."""
    bounds = sorted({min(max(c, 0), len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# --- catalogs ---------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=4))
def test_arbitrary_bytes_are_a_catalog_error_or_blocks(data: bytes, cuts: list[int]) -> None:
    try:
        for path, entries in iter_blocks(pieces(data, cuts)):
            assert isinstance(path, bytes) and all(isinstance(e, Entry) for e in entries)
    except CatalogError:
        pass
    with contextlib.suppress(CatalogError):
        list(iter_index(pieces(data, cuts)))


@FUZZ
@given(json_values | entry_dicts)
def test_any_json_entry_decodes_or_is_refused(value: object) -> None:
    try:
        e = decode_entry(value)
    except CatalogError:
        return
    # what was accepted cannot leave the snapshot root
    assert e.name not in (b"", b".", b"..") and b"/" not in e.name and b"\0" not in e.name


@FUZZ
@given(st.data())
def test_mutated_catalogs_validate_or_are_refused(data: st.DataObject) -> None:
    cat, idx = valid_catalog()
    which = data.draw(st.sampled_from(["truncate", "flip", "insert", "index"]))
    if which == "truncate":
        cat = cat[:data.draw(st.integers(0, len(cat) - 1))]
    elif which == "flip":
        pos = data.draw(st.integers(0, len(cat) - 1))
        cat = cat[:pos] + bytes([cat[pos] ^ data.draw(st.integers(1, 255))]) + cat[pos + 1:]
    elif which == "insert":
        line = json.dumps(data.draw(entry_dicts)).encode() + b"\n"
        pos = data.draw(st.sampled_from([i + 1 for i, b in enumerate(cat) if b == 10]))
        cat = cat[:pos] + line + cat[pos:]
    else:
        idx = idx[:data.draw(st.integers(0, len(idx)))] + data.draw(st.binary(max_size=40))
    cuts = data.draw(st.lists(st.integers(0, len(cat)), max_size=3))
    try:
        summary = validate(pieces(cat, cuts), [idx])
    except CatalogError:
        return
    assert summary.entries >= 1  # only an edit that keeps the tree consistent gets here


@pytest.mark.parametrize("data", [
    b"[" * 100_000 + b"\n",                                   # nesting bomb
    b'{"d":"","n":1}\n' + b'{"n":"' + b"a" * (1 << 24) + b'"}\n',  # one line over the limit
    b'{"d":"","n":1000000000}\n',                            # a count with nothing behind it
    b'{"d":"","n":1}\n{"n":"a","t":"f","m":0,"u":0,"g":0,"mt":0,"s":1,"r":[["' + CID.encode()
    + b'",0,1,1]]}',                                          # no final newline
    b'{"d":"../..","n":0}\n',                                 # a block outside the root
])
def test_oversized_and_hostile_catalogs_fail_fast(data: bytes) -> None:
    with pytest.raises(CatalogError):
        list(iter_blocks([data]))


# --- manifests --------------------------------------------------------------------------------


def manifest_json() -> dict:
    ref = {"chunks": [[CID, 10]], "size": 10}
    return json.loads(Manifest(
        host="web01", snapshot="2026-11-22T12-00-00Z", received_at="x", started_at="y",
        catalog=StreamRef.from_json(ref, "c"), dirindex=StreamRef.from_json(ref, "d"),
        logical_size=1, file_count=1, dir_count=1, entry_count=2, chunk_count=1, new_bytes=1,
        agent_version="t", session="s").to_json())


@FUZZ
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_manifest_bytes_parse_or_are_a_catalog_error(data: bytes) -> None:
    with contextlib.suppress(CatalogError):
        Manifest.from_json(data)


@FUZZ
@given(st.sampled_from(sorted(manifest_json())), json_values, st.booleans())
def test_a_manifest_with_one_field_wrong_is_refused_cleanly(key: str, value: object,
                                                            drop: bool) -> None:
    d = manifest_json()
    if drop:
        del d[key]
    else:
        d[key] = value
    try:
        m = Manifest.from_json(json.dumps(d).encode())
    except CatalogError:
        return
    assert isinstance(m.host, str) and isinstance(m.catalog, StreamRef)


# --- chunk files and the upload verifier -------------------------------------------------------


def zstd_frame(plain: bytes, declared: bool = True) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=declared).compress(plain)


HEADER = b"RDRC\x01\x01\x00\x00"  # version 1, zstd


@FUZZ
@given(st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda b: HEADER + b),
    st.binary(max_size=300).map(lambda b: HEADER + zstd_frame(b)[:-1]),     # truncated
    st.binary(max_size=300).map(lambda b: HEADER + zstd_frame(b) + b"x"),   # trailing junk
    st.binary(max_size=300).map(lambda b: HEADER + zstd_frame(b, declared=False)),
    st.binary(max_size=300).map(lambda b: b"RDRC\x01\x00\x00\x00" + b),
    st.binary(min_size=1, max_size=300).map(lambda b: b"RDRC\x02\x00\x00\x00" + b),
    st.binary(max_size=300).map(lambda b: b"RDRC\x01\x80\x00\x00" + b),
))
def test_any_chunk_file_decodes_to_its_id_or_is_refused(data: bytes) -> None:
    dec = ChunkDecoder()
    try:
        plain = dec.decode(data, CID)
    except ChunkError:
        return
    assert chunk_id(plain) == CID  # (never: no plaintext hashes to this id)


def test_decompression_bombs_and_oversized_chunks_are_refused() -> None:
    dec = ChunkDecoder()
    big = b"\0" * (MAX_PLAIN_SIZE + 1)
    cases = [
        HEADER + zstd_frame(big),                                 # declares too much
        HEADER + zstd_frame(big, declared=False),                 # declares nothing
        b"RDRC\x01\x00\x00\x00" + big,                            # raw and too big
    ]
    # A frame that lies: it declares 10 bytes and holds 4 MiB of zeros.
    liar = bytearray(zstd_frame(b"\0" * MAX_PLAIN_SIZE))
    honest = zstd_frame(b"\0" * 10)
    cases.append(HEADER + bytes(liar[:4]) + honest[4:6] + bytes(liar[6:]))
    for data in cases:
        with pytest.raises(ChunkError):
            dec.decode(data, chunk_id(b"\0" * 10))


@pytest.fixture
def store(tmp_path: Path) -> Datastore:
    st_ = Datastore(tmp_path / "store", reserve_bytes=0)
    st_.add_host("web01")
    return st_


def stored_files(store: Datastore) -> list[str]:
    return sorted(str(p.relative_to(store.root)) for p in (store.root / "chunks").rglob("*")
                  if p.is_file() and not p.name.startswith("."))


@FUZZ
@given(st.binary(max_size=500), st.sampled_from(["good-id", "other-id"]))
def test_the_store_keeps_nothing_it_refuses(store: Datastore, body: bytes, which: str,
                                            ) -> None:
    sid, _ = store.open_session("web01") if not store.index.open_sessions() else (
        store.index.open_sessions()[0].id, True)
    before = stored_files(store)
    enc = ChunkEncoder().encode(b"genuine")
    data = enc.data if which == "good-id" and body == b"" else body
    cid = enc.id if which == "good-id" else CID
    try:
        store.put_chunk("web01", sid, cid, data)
    except StoreError as exc:
        assert exc.code == "chunk_mismatch"
        assert stored_files(store) == before
        assert not any(store.chunks.tmp.iterdir())  # no partial file either
        return
    assert data == enc.data and cid == enc.id  # only the genuine chunk is accepted


def test_an_upload_over_the_size_limit_is_refused_before_it_is_read(store: Datastore) -> None:
    sid, _ = store.open_session("web01")
    with pytest.raises(StoreError):
        store.put_chunk("web01", sid, CID, b"RDRC\x01\x00\x00\x00" + b"\0" * (MAX_FILE_SIZE
                                                                          - HEADER_SIZE + 1))
    assert stored_files(store) == []
