"""A catalog named piece by piece while the backup runs is checked before the commit, and
the commit uses that check only when it checked exactly what is committed; a host can
neither read another's catalog through it nor spend more CPU than at the commit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from appliance.store import datastore as datastore_module
from appliance.store.datastore import CatalogLimits, CommitRequest, Datastore
from appliance.store.errors import Conflict, StoreError
from rdr_agent.catalog_names import CatalogNamer
from rdr_agent.errors import ApplianceError
from rdr_format.catalog import DIR, FILE, Entry, Range, index_digest, validate
from rdr_format.chunkfile import ChunkEncoder, EncodedChunk
from rdr_format.manifest import StreamRef

from .test_catalog import write

ENC = ChunkEncoder()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Datastore]:
    s = Datastore(tmp_path / "data", reserve_bytes=0)
    s.add_host("a")
    s.add_host("b")
    yield s
    s.close()


def catalog(store: Datastore, host: str, sid: str, dirs: int = 12, files: int = 40,
            tag: bytes = b"") -> tuple[list[EncodedChunk], EncodedChunk, bytes, bytes]:
    """A tree of `dirs` directories of `files` files, its data uploaded: the catalog cut
    into pieces of about 2 kB (not uploaded), its index chunk, and both streams."""
    data = ENC.encode(b"content" + tag)
    store.put_chunk(host, sid, data.id, data.data)
    rng = [Range(data.id, 0, 7, data.plain_size)]
    blocks: list = [(b"", [Entry(b"d%03d" % d, DIR, 0o755) for d in range(dirs)])]
    for d in range(dirs):
        blocks.append((b"d%03d" % d, [Entry(b"f%04d" % f + tag, FILE, 0o644, size=7,
                                            ranges=rng) for f in range(files)]))
    cat, idx = write(blocks)
    pieces = [ENC.encode(cat[i:i + 2000]) for i in range(0, len(cat), 2000)]
    return pieces, ENC.encode(idx), cat, idx


def refs(chunks: list[EncodedChunk]) -> list[tuple[str, int]]:
    return [(c.id, c.plain_size) for c in chunks]


def upload(store: Datastore, host: str, sid: str, chunks: list[EncodedChunk]) -> None:
    for c in chunks:
        store.put_chunk(host, sid, c.id, c.data)


def request(pieces: list[EncodedChunk], idx: EncodedChunk) -> CommitRequest:
    return CommitRequest(catalog=StreamRef(refs(pieces)), dirindex=StreamRef(refs([idx])),
                         source=["/srv"])


def checked_all(store: Datastore, sid: str) -> None:
    """Wait (bounded) until the session's check has read every named piece."""
    check = store._live[sid].check
    assert check is not None
    deadline = time.monotonic() + 30
    while check.read < check.named and time.monotonic() < deadline:
        time.sleep(0.01)
    assert check.read == check.named


def no_validation_at_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("the commit validated the catalog itself")
    monkeypatch.setattr(datastore_module, "validate", refuse)


def test_pieces_named_before_their_upload_are_checked_as_they_land_and_the_commit_uses_it(
        store: Datastore, monkeypatch: pytest.MonkeyPatch) -> None:
    sid, _ = store.open_session("a")
    pieces, idx, cat, idx_bytes = catalog(store, "a", sid)
    assert len(pieces) > 5
    half = len(pieces) // 2
    assert store.name_catalog("a", sid, 0, refs(pieces[:half])) == half  # none uploaded yet
    upload(store, "a", sid, pieces[:half])
    checked_all(store, sid)
    assert store.name_catalog("a", sid, half, refs(pieces[half:-1])) == len(pieces) - 1
    assert store.name_catalog("a", sid, 1, refs(pieces[1:3])) == len(pieces) - 1  # a retry
    upload(store, "a", sid, pieces[half:] + [idx])
    checked_all(store, sid)
    no_validation_at_commit(monkeypatch)
    m = store.commit("a", sid, request(pieces, idx))  # the last piece is named here
    expect = validate([cat], [idx_bytes])
    assert (m.file_count, m.dir_count, m.entry_count, m.logical_size) == (
        expect.files, expect.dirs, expect.entries, expect.logical_size)
    assert store.catalogs_checked_ahead == 1
    assert store.catalog_facts.known("a")  # learned for the next commit, as at a commit


def test_a_commit_of_other_pieces_or_another_index_validates_at_the_commit(
        store: Datastore) -> None:
    sid, _ = store.open_session("a")
    pieces, idx, _, _ = catalog(store, "a", sid)
    upload(store, "a", sid, pieces + [idx])
    store.name_catalog("a", sid, 0, refs(pieces))
    checked_all(store, sid)
    other, other_idx, _, _ = catalog(store, "a", sid, tag=b"x")
    upload(store, "a", sid, other + [other_idx])
    with pytest.raises(StoreError) as refused:  # the checked catalog with another's index
        store.commit("a", sid, request(pieces, other_idx))
    assert refused.value.code == "bad_catalog" and "index" in refused.value.message
    store.commit("a", sid, request(other, other_idx))  # named nothing of it: checked here
    assert store.catalogs_checked_ahead == 0


def test_a_bad_catalog_named_ahead_is_refused_at_the_commit(store: Datastore) -> None:
    sid, _ = store.open_session("a")
    pieces, idx, cat, _ = catalog(store, "a", sid)
    bad = cat.replace(b'"f0001"', b'"f0000"', 1)  # two files of one name
    assert bad != cat
    bad_pieces = [ENC.encode(bad[i:i + 2000]) for i in range(0, len(bad), 2000)]
    upload(store, "a", sid, bad_pieces + [idx])
    store.name_catalog("a", sid, 0, refs(bad_pieces))
    with pytest.raises(StoreError) as refused:
        store.commit("a", sid, request(bad_pieces, idx))
    assert refused.value.code == "bad_catalog" and "sorted and unique" in refused.value.message
    assert store.index.snapshots("a") == []


def test_another_hosts_catalog_named_is_never_decoded(store: Datastore,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The attack: host b learned the ids of host a's catalog pieces (they leak: logs, a
    push-restore) and names them in its own session, hoping for errors that quote a's
    paths or for a's directory listing in its snapshot."""
    sid_a, _ = store.open_session("a")
    pieces, idx, _, _ = catalog(store, "a", sid_a)
    upload(store, "a", sid_a, pieces + [idx])
    store.commit("a", sid_a, request(pieces, idx))
    decoded: list[str] = []
    read_plain = store.chunks.read_plain

    def spy(cid: str) -> bytes:
        decoded.append(cid)
        return read_plain(cid)
    monkeypatch.setattr(store.chunks, "read_plain", spy)
    sid_b, _ = store.open_session("b")
    store.name_catalog("b", sid_b, 0, refs(pieces))
    time.sleep(0.3)  # the check has had its chance to read (and must wait instead)
    with pytest.raises(StoreError) as refused:
        store.commit("b", sid_b, request(pieces, idx))
    assert refused.value.code == "unproven_chunks"
    assert not {c.id for c in pieces} & set(decoded)
    check = store._live[sid_b].check
    assert check is None or check.read == 0


def test_a_check_stops_with_its_session_and_a_new_pass_starts_a_new_one(
        store: Datastore) -> None:
    sid, _ = store.open_session("a")
    pieces, idx, _, _ = catalog(store, "a", sid)
    store.name_catalog("a", sid, 0, refs(pieces))  # never uploaded: the check waits
    first = store._live[sid].check
    assert first is not None and not first.join(0.2)
    with pytest.raises(Conflict) as gap:
        store.name_catalog("a", sid, len(pieces) + 1, refs(pieces[:1]))
    assert gap.value.code == "catalog_order"
    other, _, _, _ = catalog(store, "a", sid, tag=b"y")
    store.name_catalog("a", sid, 0, refs(other))  # a new pass names another catalog
    second = store._live[sid].check
    assert second is not first and first.join(5)
    store.abort_session("a", sid)
    assert second.join(5)


def test_past_the_allowance_the_check_stops_and_the_commit_refuses(tmp_path: Path) -> None:
    """A host cannot make the check decode more entries than its commit may hold."""
    store = Datastore(tmp_path / "data", reserve_bytes=0,
                      limits=CatalogLimits(free_entries=100, bytes_per_entry=10**9))
    store.add_host("a")
    sid, _ = store.open_session("a")
    pieces, idx, _, _ = catalog(store, "a", sid, dirs=12, files=40)  # 492 entries
    upload(store, "a", sid, pieces + [idx])
    store.name_catalog("a", sid, 0, refs(pieces))
    check = store._live[sid].check
    assert check is not None and check.join(10)
    assert check.read < len(pieces)  # stopped at the header past 100, not read to the end
    with pytest.raises(StoreError) as refused:
        store.commit("a", sid, request(pieces, idx))
    assert refused.value.code == "catalog_too_large"
    store.close()


def test_the_index_digest_is_that_of_the_index_the_catalog_needs(store: Datastore) -> None:
    sid, _ = store.open_session("a")
    _, _, cat, idx = catalog(store, "a", sid)
    assert validate([cat], None).index_digest == index_digest([idx])
    _, _, _, other = catalog(store, "a", sid, files=41)
    assert index_digest([other]) != index_digest([idx])


# --- the agent's side: naming the pieces as they are cut --------------------------------


class NamingClient:
    """Records the naming calls; `refuse` makes the appliance an older one."""

    def __init__(self, refuse: bool = False) -> None:
        self.calls: list[tuple[int, list[tuple[str, int]]]] = []
        self.refuse = refuse
        self.refused = 0

    async def name_catalog(self, sid: str, start: int, pieces: list[tuple[str, int]]) -> int:
        if self.refuse:
            self.refused += 1
            raise ApplianceError(404, "not_found", "no such route")
        self.calls.append((start, pieces))
        return start + len(pieces)


def encoded(n: int) -> EncodedChunk:
    return ENC.encode(b"piece %d" % n)


async def test_the_agent_names_the_encoded_prefix_in_order() -> None:
    client = NamingClient()
    namer = CatalogNamer(client, "sid")  # type: ignore[arg-type]
    futures = [Future() for _ in range(4)]
    for f in futures:
        namer.add(f)
    futures[1].set_result(encoded(1))  # the second one first: nothing can be named yet
    await asyncio.sleep(0.05)
    assert client.calls == []
    futures[0].set_result(encoded(0))
    await asyncio.sleep(0.05)
    futures[3].set_result(encoded(3))
    await asyncio.sleep(0.05)
    assert client.calls == [(0, refs([encoded(0), encoded(1)]))]
    futures[2].set_result(encoded(2))
    await asyncio.sleep(0.05)
    await namer.close()
    assert client.calls[1:] == [(2, refs([encoded(2), encoded(3)]))]
    assert namer.sent == 4


async def test_an_appliance_that_cannot_be_told_leaves_the_check_to_the_commit() -> None:
    client = NamingClient(refuse=True)
    namer = CatalogNamer(client, "sid")  # type: ignore[arg-type]
    done: Future = Future()
    namer.add(done)
    done.set_result(encoded(0))
    await asyncio.sleep(0.05)
    later: Future = Future()
    namer.add(later)
    later.set_result(encoded(1))
    await asyncio.sleep(0.05)
    await namer.close()  # no error raised: the backup goes on
    assert namer.sent == 0 and client.refused == 1  # and it stopped asking


def test_the_checks_of_open_sessions_stop_when_the_store_closes(tmp_path: Path) -> None:
    store = Datastore(tmp_path / "data", reserve_bytes=0)
    store.add_host("a")
    sid, _ = store.open_session("a")
    pieces, _, _, _ = catalog(store, "a", sid)
    store.name_catalog("a", sid, 0, refs(pieces))  # never uploaded: the check waits
    check = store._live[sid].check
    assert check is not None and not check.join(0.1)
    store.close()
    assert check.join(0)
