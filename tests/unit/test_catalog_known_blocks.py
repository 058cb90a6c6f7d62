"""A commit decodes only the directory blocks that changed since the host's last catalog:
what it reuses must give the same answer, and nothing it reuses may let a changed block in
unchecked."""

from __future__ import annotations

import pytest

from appliance.store.catalogfacts import CatalogFacts
from rdr_format.catalog import (
    DIR,
    FILE,
    HARDLINK,
    MAX_REMEMBERED_BLOCK,
    BlockFacts,
    CatalogError,
    Entry,
    Range,
    validate,
)

from .test_catalog import write


def cid(n: int) -> str:
    return f"{n:064x}"


def tree(changed: int | None = None, dirs: int = 20, files: int = 30) -> list:
    """`dirs` directories of `files` files each; `changed` names a directory whose first
    file got new content (another chunk)."""
    root = [Entry(f"d{d:03}".encode(), DIR, 0o755) for d in range(dirs)]
    blocks: list = [(b"", root)]
    for d in range(dirs):
        entries = []
        for f in range(files):
            n = d * 1000 + f + (500 if d == changed and f == 0 else 0)
            entries.append(Entry(f"f{f:07}".encode(), FILE, 0o644, size=10,
                                 ranges=[Range(cid(n), 0, 10, 10)]))
        blocks.append((f"d{d:03}".encode(), entries))
    return blocks


def pieces(data: bytes, n: int = 777) -> list[bytes]:
    return [data[i:i + n] for i in range(0, len(data), n)]


def test_reused_blocks_give_the_same_summary_and_only_changed_ones_are_decoded() -> None:
    cat, idx = write(tree())
    first: dict[bytes, BlockFacts] = {}
    full = validate(pieces(cat), [idx], known={}, learned=first)
    assert len(first) == 21 and full == validate([cat], [idx])

    cat2, idx2 = write(tree(changed=7))
    second: dict[bytes, BlockFacts] = {}
    summary = validate(pieces(cat2), [idx2], known=first, learned=second)
    assert summary == validate([cat2], [idx2])  # as if nothing were known
    assert cid(7500) in summary.chunks and cid(7000) not in summary.chunks
    reused = [d for d, f in second.items() if first.get(d) is f]
    assert len(reused) == 20  # the root and 19 directories: the same objects, not decoded
    changed = [f for d, f in second.items() if d not in first]
    assert [f.path for f in changed] == [b"d007"]


def test_a_changed_block_is_checked_whatever_is_known() -> None:
    """An attacker who committed a valid catalog yesterday sends today's with a block that
    differs only in a forbidden way: the known facts of yesterday's block do not vouch
    for it."""
    good = tree()
    cat, idx = write(good)
    known: dict[bytes, BlockFacts] = {}
    validate([cat], [idx], known={}, learned=known)
    good_range = b'"s":10,"r":[["%s",0,10,10]]' % cid(3).encode()
    bad = cat.replace(good_range, good_range.replace(b"0,10,10]]", b"1,10,10]]"))  # past its end
    assert bad != cat and len(bad) == len(cat)  # the same length: the index still fits
    with pytest.raises(CatalogError, match="outside its chunk"):
        validate([bad], [idx], known=known, learned={})
    # Entries out of order inside a block seen before in the right order.
    blocks = tree()
    blocks[1] = (blocks[1][0], [blocks[1][1][1], blocks[1][1][0]] + blocks[1][1][2:])
    cat2, idx2 = bytearray(), bytearray()
    raw_writer_skipping_checks(blocks, cat2, idx2)
    with pytest.raises(CatalogError, match="not sorted"):
        validate([bytes(cat2)], [bytes(idx2)], known=known, learned={})


def raw_writer_skipping_checks(blocks: list, cat: bytearray, idx: bytearray) -> None:
    import json

    from rdr_format.catalog import encode_entry
    for path, entries in blocks:
        lines = [json.dumps({"d": path.decode(), "n": len(entries)}, separators=(",", ":"))
                 .encode() + b"\n"]
        lines += [json.dumps(encode_entry(e), separators=(",", ":")).encode() + b"\n"
                  for e in entries]
        data = b"".join(lines)
        idx += json.dumps([path.decode(), len(cat), len(data), len(entries)]).encode() + b"\n"
        cat += data


def test_known_blocks_still_face_the_cross_block_checks() -> None:
    """A block reused verbatim in a catalog where it does not fit (its directory is not
    declared, or the index lies about it) is refused."""
    cat, idx = write(tree())
    known: dict[bytes, BlockFacts] = {}
    validate([cat], [idx], known={}, learned=known)
    fewer = tree(dirs=20)
    fewer[0] = (b"", fewer[0][1][:-1])  # the root no longer declares d019
    cat2, idx2 = bytearray(), bytearray()
    raw_writer_skipping_checks(fewer, cat2, idx2)
    with pytest.raises(CatalogError, match="not a directory of its parent"):
        validate([bytes(cat2)], [bytes(idx2)], known=known, learned={})
    with pytest.raises(CatalogError, match="index does not match"):
        validate([cat], [idx.replace(b'"d005",', b'"d005x",')], known=known, learned={})


def test_hardlinks_in_known_blocks_are_still_checked_against_the_files() -> None:
    blocks = tree(dirs=2)
    blocks[2][1].append(Entry(b"zz", HARDLINK, 0o644, size=10,
                              ranges=[Range(cid(0), 0, 10, 10)], link=b"d000/f0000000"))
    cat, idx = write(blocks)
    known: dict[bytes, BlockFacts] = {}
    validate([cat], [idx], known={}, learned=known)
    # The same block with the link, but its target gone from d000: refused, known or not.
    gone = tree(dirs=2)
    gone[1] = (b"d000", gone[1][1][1:])
    gone[2] = blocks[2]
    cat2, idx2 = write(gone)
    with pytest.raises(CatalogError, match="no earlier file"):
        validate([cat2], [idx2], known=known, learned={})


def test_a_huge_block_is_checked_as_it_streams_and_not_remembered() -> None:
    files = MAX_REMEMBERED_BLOCK // 90 + 10  # each entry line is over 90 bytes
    cat, idx = write(tree(dirs=1, files=files))
    learned: dict[bytes, BlockFacts] = {}
    summary = validate(pieces(cat, 1 << 16), [idx], known={}, learned=learned)
    assert summary.files == files
    assert [f.path for f in learned.values()] == [b""]  # the root only


def test_the_cache_keeps_each_host_apart_within_its_budget() -> None:
    cat, idx = write(tree())
    facts: dict[bytes, BlockFacts] = {}
    validate([cat], [idx], known={}, learned=facts)
    size = sum(f.footprint() for f in facts.values())
    cache = CatalogFacts(budget=int(size * 2.5))
    cache.remember("a", facts)
    cache.remember("b", dict(facts))
    assert cache.known("a") is facts and cache.known("c") == {}
    cache.known("a")  # "a" is now the most recently used
    cache.remember("c", dict(facts))  # over budget: "b", least recently used, goes
    assert cache.known("b") == {} and cache.known("a") is facts
    assert cache.held <= cache.budget
    cache.forget("a")
    assert cache.known("a") == {}
    small = CatalogFacts(budget=size - 1)
    small.remember("big", facts)  # alone over the budget: not kept
    assert small.known("big") == {} and small.held == 0
