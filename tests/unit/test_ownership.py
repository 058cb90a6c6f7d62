"""The store's record of what a backup session proved it holds (store/ownership.py), and the
known-chunk answers built on it (Datastore.known), without HTTP."""

from __future__ import annotations

import os
from pathlib import Path

from appliance.store.datastore import Datastore
from appliance.store.ownership import Ownership, SessionProofs
from rdr_format.chunkfile import ChunkEncoder, possession_key, possession_proof


def test_a_torn_last_record_is_cut_off_and_appends_stay_aligned(tmp_path: Path) -> None:
    own = Ownership(tmp_path / "sessions")
    proofs = own.start("s1")
    a, b = os.urandom(32).hex(), os.urandom(32).hex()
    proofs.add([a])
    path = tmp_path / "sessions" / "s1.own"
    with open(path, "ab") as f:
        f.write(bytes.fromhex(b)[:13])  # a power cut in the middle of an append
    again = SessionProofs.load(path)
    assert again.nonce == proofs.nonce and a in again and b not in again
    assert path.stat().st_size == 64  # the torn tail is gone...
    again.add([b])
    assert b in SessionProofs.load(path)  # ...so the next record is whole
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_files_of_closed_sessions_are_swept(tmp_path: Path) -> None:
    own = Ownership(tmp_path / "sessions")
    own.start("open1")
    own.start("gone")
    assert own.sweep({"open1"}) == 1
    assert sorted(p.name for p in (tmp_path / "sessions").iterdir()) == ["open1.own"]


def test_known_answers_have_only_for_owned_or_proven_chunks(tmp_path: Path) -> None:
    store = Datastore(tmp_path / "data")
    try:
        store.add_host("a")
        store.add_host("b")
        chunk = ChunkEncoder().encode(b"a's data " * 1000)
        sa, _ = store.open_session("a")
        store.put_chunk("a", sa, chunk.id, chunk.data)
        sb, _ = store.open_session("b")
        absent = os.urandom(32).hex()
        assert store.known("b", sb, [chunk.id, absent]) == [chunk.id, absent]
        key = possession_key(bytes.fromhex(store.session_nonce("b", sb)))
        good = possession_proof(key, b"a's data " * 1000)
        assert store.known("b", sb, [chunk.id, absent], [good, good]) == [absent]
        # Once proven, no proof is needed again in this session, and A owns its upload.
        assert store.known("b", sb, [chunk.id]) == []
        assert store.known("a", sa, [chunk.id]) == []
        # A wrong proof is remembered as refuted: not verified again in that session.
        store.add_host("c")
        sc, _ = store.open_session("c")
        assert store.known("c", sc, [chunk.id], ["0" * 64]) == [chunk.id]
        keyc = possession_key(bytes.fromhex(store.session_nonce("c", sc)))
        right = possession_proof(keyc, b"a's data " * 1000)
        assert store.known("c", sc, [chunk.id], [right]) == [chunk.id]
    finally:
        store.close()
