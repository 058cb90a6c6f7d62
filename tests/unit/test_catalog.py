"""Catalog format: round trips, and refusal of every structural lie a client could tell."""

from __future__ import annotations

import json

import pytest

from rdr_format.catalog import (
    DIR,
    FILE,
    HARDLINK,
    SYMLINK,
    CatalogError,
    CatalogWriter,
    Entry,
    Range,
    decode_block,
    decode_line,
    decode_validated_line,
    iter_blocks,
    iter_index,
    locate,
    validate,
)

CID = "ab" * 32
CID2 = "cd" * 32


def write(blocks: list[tuple[bytes, list[Entry]]]) -> tuple[bytes, bytes]:
    cat, idx = bytearray(), bytearray()
    w = CatalogWriter(cat.extend, idx.extend)
    for path, entries in blocks:
        w.add_block(path, entries)
    return bytes(cat), bytes(idx)


def sample() -> list[tuple[bytes, list[Entry]]]:
    return [
        (b"", [Entry(b"caf\xe9", DIR, 0o755), Entry(b"etc", DIR, 0o755)]),
        (b"caf\xe9", [Entry(b"a", FILE, 0o644, size=5, ranges=[Range(CID, 0, 5, 10)],
                           xattrs=[(b"user.k", b"\x00\xff")]),
                     Entry(b"b", HARDLINK, 0o644, size=5, ranges=[Range(CID, 0, 5, 10)],
                           link=b"caf\xe9/a"),
                     Entry(b"l", SYMLINK, 0o777, link=b"../\xff")]),
        (b"etc", [Entry(b"z", FILE, 0o600, mtime_ns=-5, size=0)]),
    ]


def test_round_trip_keeps_bytes_exactly() -> None:
    cat, idx = write(sample())
    assert list(iter_blocks([cat])) == sample()
    # Split the stream at every odd boundary: lines spanning chunks must decode the same.
    pieces = [cat[i:i + 7] for i in range(0, len(cat), 7)]
    assert list(iter_blocks(pieces)) == sample()
    summary = validate([cat], [idx])
    assert summary.chunks == {CID}
    assert (summary.files, summary.dirs, summary.logical_size) == (3, 2, 5)


def test_index_gives_one_directory_without_reading_the_rest() -> None:
    cat, idx = write(sample())
    recs = {r.path: r for r in iter_index([idx])}
    r = recs[b"etc"]
    path, entries = decode_block(cat[r.offset:r.offset + r.length])
    assert path == b"etc" and [e.name for e in entries] == [b"z"]
    chunks = [(CID, 10), (CID2, len(cat) - 10)]
    assert locate(chunks, 8, 4) == [(CID, 8, 10), (CID2, 0, 2)]


def test_writer_refuses_out_of_order_blocks_and_names() -> None:
    w = CatalogWriter(lambda b: None, lambda b: None)
    w.add_block(b"", [Entry(b"b", DIR), Entry(b"c", DIR)])
    with pytest.raises(CatalogError):
        w.add_block(b"", [])
    w.add_block(b"c", [])
    with pytest.raises(CatalogError):
        w.add_block(b"b", [])
    with pytest.raises(CatalogError):
        CatalogWriter(lambda b: None, lambda b: None).add_block(
            b"", [Entry(b"b", DIR), Entry(b"a", DIR)])


@pytest.mark.parametrize("blocks", [
    [(b"", [Entry(b"d", DIR)])],                                   # directory without block
    [(b"", []), (b"x", [])],                                       # block of undeclared dir
    [(b"", [Entry(b"h", HARDLINK, size=5, ranges=[Range(CID, 0, 5, 5)], link=b"nope")])],
    [(b"x", [])],                                                  # no root block first
])
def test_validate_refuses_inconsistent_trees(blocks) -> None:
    cat, idx = bytearray(), bytearray()
    for path, entries in blocks:  # bypass the writer's own checks
        lines = [json.dumps({"d": path.decode(), "n": len(entries)}).encode() + b"\n"]
        from rdr_format.catalog import encode_entry

        lines += [json.dumps(encode_entry(e)).encode() + b"\n" for e in entries]
        data = b"".join(lines)
        idx += json.dumps([path.decode(), len(cat), len(data), len(entries)]).encode() + b"\n"
        cat += data
    with pytest.raises(CatalogError):
        validate([bytes(cat)], [bytes(idx)])


@pytest.mark.parametrize("line", [
    b'{"n":"..","t":"f","m":0,"u":0,"g":0,"mt":0,"s":0,"r":[]}',
    b'{"n":"a/b","t":"f","m":0,"u":0,"g":0,"mt":0,"s":0,"r":[]}',
    b'{"n":"","t":"d","m":0,"u":0,"g":0,"mt":0}',
    b'{"n":"a","t":"q","m":0,"u":0,"g":0,"mt":0}',
    b'{"n":"a","t":"f","m":0,"u":0,"g":0,"mt":0,"s":9,"r":[["' + CID.encode() + b'",0,5,5]]}',
    b'{"n":"a","t":"f","m":0,"u":0,"g":0,"mt":0,"s":5,"r":[["' + CID.encode() + b'",3,5,5]]}',
    b'{"n":"a","t":"f","m":99999,"u":0,"g":0,"mt":0,"s":0,"r":[]}',
    b'{"n":"a","t":"l","m":0,"u":0,"g":0,"mt":0}',
    b'{"n":{"b64":"!!"},"t":"d","m":0,"u":0,"g":0,"mt":0}',
    b'{"n":"\\udc80","t":"d","m":0,"u":0,"g":0,"mt":0}',  # was a UnicodeEncodeError
    b'not json',
    b'[1,2]',
])
def test_hostile_entries_are_refused(line: bytes) -> None:
    cat = b'{"d":"","n":1}\n' + line + b"\n"
    with pytest.raises(CatalogError):
        list(iter_blocks([cat]))


PLAIN = b'{"n":"caf\xc3\xa9","t":"d","m":493,"u":0,"g":0,"mt":0}'


@pytest.mark.parametrize("line", [
    PLAIN,  # the writer's own: UTF-8, no whitespace (the scanned path)
    b" \t" + PLAIN + b" \r",  # whitespace around the value, as json.loads allows
    b"\xef\xbb\xbf" + PLAIN,  # a UTF-8 byte order mark
    PLAIN.decode().encode("utf-16"),  # another encoding json.loads detects
    PLAIN.decode().encode("utf-32-le"),
])
def test_a_line_reads_as_json_loads_reads_it(line: bytes) -> None:
    """Lines are scanned directly when plain, and through json.loads otherwise: whatever
    json.loads accepts reads the same, and what it refuses is refused."""
    assert decode_line(line) == decode_line(PLAIN)
    assert decode_line(line).name == "café".encode()


@pytest.mark.parametrize("line", [PLAIN + b"x", PLAIN + b"{}", PLAIN[:-1], b"\xff" + PLAIN,
                                  b'{"n":"a\x00","t":"d","m":0,"u":0,"g":0,"mt":0}'])
def test_a_line_json_loads_refuses_is_refused(line: bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(line)
    with pytest.raises(CatalogError):
        decode_line(line)


GOOD_FILE = {"n": "a", "t": "f", "m": 0o644, "u": 1000, "g": 1000, "mt": -5, "s": 5,
             "ino": 7, "ct": 9, "r": [[CID, 0, 5, 5]]}


@pytest.mark.parametrize(("key", "bad"), [
    (k, v) for k in ("m", "u", "g", "mt", "s", "ino", "ct")
    for v in (None, True, 1.5, "1", -(2**63) - 1 if k in ("mt", "ct") else -1, 2**63)
] + [("m", 0o10000), ("u", 2**32), ("g", 2**32)])
def test_each_bad_field_is_refused_by_name(key: str, bad: object) -> None:
    """The decoder tests the common fields inline and names the wrong one: a missing, boolean,
    fractional, textual or out-of-range value in any of them is refused as that field."""
    assert decode_line(json.dumps(GOOD_FILE).encode()).size == 5
    d = dict(GOOD_FILE)
    if bad is None:
        if key in ("ino", "ct"):  # optional: absent means 0
            assert getattr(decode_line(json.dumps({k: v for k, v in d.items() if k != key})
                                       .encode()), "ino" if key == "ino" else "ctime_ns") == 0
            return
        del d[key]
    else:
        d[key] = bad
    with pytest.raises(CatalogError, match=f"'{key}'"):
        decode_line(json.dumps(d).encode())


@pytest.mark.parametrize("bad_range", [
    [CID, 0, 5], [CID, 0, True, 5], [CID, 0.0, 5, 5], [CID.upper(), 0, 5, 5], [1, 0, 5, 5],
    [CID, -1, 5, 5], [CID, 0, 0, 5], [CID, 1, 5, 5], "x"])
def test_each_bad_range_is_refused(bad_range: object) -> None:
    d = dict(GOOD_FILE, r=[bad_range])
    with pytest.raises(CatalogError, match="range"):
        decode_line(json.dumps(d).encode())


def _every_shape() -> list[bytes]:
    """Entry lines of every type and optional field the writer makes."""
    entries = [e for _, es in sample() for e in es] + [
        Entry(b"d", DIR, 0o700, 1, 2, 3),
        Entry(b"f", FILE, 0o644, 1000, 1000, -5, size=15, ino=7, ctime_ns=9,
              ranges=[Range(CID, 0, 10, 10), Range(CID2, 2, 5, 9)]),
        Entry(b"e", FILE, 0o644, size=0),
        Entry(b"s", SYMLINK, 0o777, link=b"target/x"),
        Entry(b"\xff", FILE, 0o644, size=0),  # a name that is not UTF-8
        Entry(b"p", "p", 0o600), Entry(b"c", "c", 0o600, rdev=0x0501),
        Entry(b"bd", "b", 0o600, rdev=0x0801),
        Entry(b"x", DIR, 0o755, xattrs=[(b"user.a", b"1")]),
    ]
    cat, _ = write([(b"", sorted(entries, key=lambda e: e.name))])
    return cat.splitlines()[1:]  # the block's entry lines, without its header


def test_a_validated_line_reads_as_the_checked_decoder_reads_it() -> None:
    """The parent catalog's lines are read without the field checks (`decode_validated_line`):
    each shape the writer makes must come out exactly as `decode_line` gives it, whichever
    path (the quick one or the checked one) it takes."""
    lines = _every_shape()
    assert len(lines) == 15
    for line in lines:
        assert decode_validated_line(line) == decode_line(line), line


def test_a_validated_file_or_directory_line_skips_the_field_checks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What the quick path is for: plain files and directories never reach the checked
    decoder (a test that only compared results would pass with no quick path at all);
    the other shapes do."""
    import rdr_format.catalog as catalog

    checked: list[object] = []
    real = catalog.decode_entry
    monkeypatch.setattr(catalog, "decode_entry", lambda d: checked.append(d) or real(d))
    lines = _every_shape()
    plain = [line for line, d in ((line, json.loads(line)) for line in lines)
             if d["t"] in (FILE, DIR) and isinstance(d["n"], str) and not {"x", "l", "rd"} & set(d)]
    assert len(plain) == 5
    for line in plain:
        decode_validated_line(line)
    assert checked == []
    for line in lines:
        decode_validated_line(line)
    assert len(checked) == len(lines) - len(plain)


@pytest.mark.parametrize("line", [
    b"not json", b"[1,2]", b'{"n":"a","m":0,"u":0,"g":0,"mt":0}',
    b'{"n":"a","t":"f","m":0,"u":0,"g":0,"mt":0,"s":5}',
    b'{"n":"a","t":"f","m":0,"u":0,"g":0,"mt":0,"s":5,"r":[["' + CID.encode() + b'",0,5]]}',
    b'{"n":"a","t":"f","m":0,"u":0,"g":0,"mt":0,"s":5,"r":5}',
    b'{"n":"a","t":"f","m":0,"u":0,"g":0,"mt":0,"s":5,"r":[{"a":1,"b":2,"c":3,"d":4}]}',
    b'{"n":"a","t":"f","m":0,"u":0,"g":0,"mt":0,"s":5,"r":[["' + CID.encode() + b'",0,"5",5]]}',
    b'{"n":"a","t":"l","m":0,"u":0,"g":0,"mt":0}',
    b'{"n":"\\udc80","t":"d","m":0,"u":0,"g":0,"mt":0}',
    b'{"n":"a","t":"d","u":0,"g":0,"mt":0}',
])
def test_a_validated_line_of_the_wrong_shape_is_refused_as_before(line: bytes) -> None:
    """Not rechecking the fields is no licence to crash: a line whose structure is wrong
    (a damaged cache, an appliance gone wrong) falls to the checked decoder and its
    CatalogError, never a KeyError or TypeError."""
    with pytest.raises(CatalogError):
        decode_validated_line(line)


def test_index_must_match_catalog() -> None:
    cat, idx = write(sample())
    bad = idx.replace(b'"etc",', b'"etc2",')
    with pytest.raises(CatalogError):
        validate([cat], [bad])
    with pytest.raises(CatalogError):
        validate([cat], [idx + b'["zzz",0,0,0]\n'])
    with pytest.raises(CatalogError):
        validate([cat[:-1]], [idx])
