"""Ransomware detection at ingest (appliance/detect): the catalog comparison, the verdict's
signals, the compression summary's format and its compatibility, the holds prune keeps,
and their lift. The end-to-end run with the real agent and daemon is
tests/integration/test_ransomware.py."""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance import wiring
from appliance.config import Config, StoreConfig
from appliance.detect.compare import compare
from appliance.detect.notes import NoteNames
from appliance.detect.repository import Verdicts
from appliance.detect.rules import Thresholds, judge
from appliance.detect.service import Detector
from appliance.store.datastore import CommitRequest, Datastore
from appliance.store.errors import Conflict, NotFound
from appliance.store.prune import Pruner
from rdr_format import compression
from rdr_format.catalog import (
    FILE,
    CatalogError,
    CatalogWriter,
    Entry,
    Range,
    block_digest,
    decode_line,
    decode_lines,
    iter_raw_blocks,
)
from rdr_format.chunkfile import ChunkEncoder
from rdr_format.manifest import Manifest, StreamRef

ENC = ChunkEncoder()
START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
NOTES = NoteNames.load()
WORDS = [b"invoice", b"customer", b"order", b"total", b"the", b"shipping", b"amount", b"date"]


def text(seed: int, size: int = 20_000) -> bytes:
    rng = random.Random(seed)
    return b" ".join(rng.choice(WORDS) for _ in range(size // 6))[:size]


Tree = dict[bytes, dict[bytes, bytes]]  # directory -> name -> content


def office(n_dirs: int = 4, per_dir: int = 15, seed: int = 0) -> Tree:
    return {f"d{i}".encode(): {f"doc{j:02d}.txt".encode(): text(seed * 1000 + i * 100 + j)
                               for j in range(per_dir)} for i in range(n_dirs)}


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Datastore]:
    st = Datastore(tmp_path / "data", reserve_bytes=0, clock=clock)
    st.add_host("web01")
    try:
        yield st
    finally:
        st.close()


def summary_of(tree: Tree, only: set[tuple[bytes, bytes]] | None = None) -> dict:
    """What the agent reports: per class, files, raw and compressed bytes of those read."""
    t = compression.Tally()
    for d, files in tree.items():
        for name, data in files.items():
            if only is None or (d, name) in only:
                t.add(name, len(data), min(len(zlib.compress(data, 1)), len(data)))
    return t.summary()


def commit_tree(store: Datastore, tree: Tree, summary: dict | None = None) -> Manifest:
    sid, _ = store.open_session("web01")
    cat, idx = bytearray(), bytearray()
    w = CatalogWriter(cat.extend, idx.extend)
    top = [Entry(d, "d", 0o755) for d in sorted(tree)]
    w.add_block(b"", top)
    for d in sorted(tree):
        entries = []
        for name, data in sorted(tree[d].items()):
            c = ENC.encode(data)
            store.put_chunk("web01", sid, c.id, c.data)
            entries.append(Entry(name, FILE, 0o644, size=len(data),
                                 ranges=[Range(c.id, 0, len(data), len(data))]))
        w.add_block(d, entries)
    chunks = []
    for blob in (bytes(cat), bytes(idx)):
        c = ENC.encode(blob)
        store.put_chunk("web01", sid, c.id, c.data)
        chunks.append(c)
    return store.commit("web01", sid, CommitRequest(
        catalog=StreamRef([(chunks[0].id, chunks[0].plain_size)]),
        dirindex=StreamRef([(chunks[1].id, chunks[1].plain_size)]), source=["/srv"],
        compression=summary if summary is not None else summary_of(tree)))


def encrypt(tree: Tree, seed: int = 9) -> Tree:
    """Random bytes over every file, renamed with a new extension, a note in each folder."""
    rng = random.Random(seed)
    out: Tree = {}
    for d, files in tree.items():
        out[d] = {name + b".locked": rng.randbytes(len(data)) for name, data in files.items()}
        out[d][b"HOW_TO_DECRYPT_FILES.txt"] = b"pay 1 BTC to ..."
    return out


def detector(store: Datastore, **kw: object) -> Detector:
    return Detector(store, Verdicts(store.index), Thresholds(), **kw)  # type: ignore[arg-type]


def blocks(store: Datastore, m: Manifest):
    return iter_raw_blocks(store.stream(m.catalog))


# --- the comparison ----------------------------------------------------------------------------


def test_compare_counts_each_kind_of_change(store: Datastore, clock: Clock,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    before = office(n_dirs=8)  # d4..d7 stay as they were
    a = commit_tree(store, before)
    after = {d: dict(f) for d, f in before.items()}
    after[b"d0"][b"doc00.txt"] = text(999)                           # rewritten whole
    after[b"d1"][b"moved.txt"] = after[b"d1"].pop(b"doc01.txt")      # renamed, same content
    after[b"d2"][b"doc02.txt.crypt"] = after[b"d2"].pop(b"doc02.txt")  # extension changed
    del after[b"d3"][b"doc03.txt"]                                   # deleted
    after[b"d3"][b"README_TO_DECRYPT.txt"] = b"pay"                  # a ransom note
    clock.now += timedelta(days=1)
    b = commit_tree(store, after)
    ch = compare(blocks(store, a), blocks(store, b), NOTES)
    assert (ch.parent_files, ch.files) == (120, 120)
    assert ch.modified == ch.rewritten == 1
    assert ch.deleted == 3 and ch.added == 3  # doc01, doc02, doc03 went; 3 names came
    assert ch.renamed == 2  # moved.txt and doc02.txt.crypt hold a gone file's content
    assert ch.extension_changed == 1 and ch.new_extensions == {"crypt": 1}
    assert ch.notes == 1 and ch.note_dirs == 1
    assert ch.examples["ransom_notes"] == ["d3/README_TO_DECRYPT.txt"]
    assert ch.unchanged == 116
    # The detector's way: the blocks that did not change (d4..d7, the root) are counted
    # from the commit's facts, not decoded, and the answer is the same.
    facts = store.catalog_facts.known("web01")
    asked: list[bytes] = []

    def known_files(path: bytes, lines: list[bytes]) -> int | None:
        asked.append(path)
        f = facts.get(block_digest(path, lines))
        return None if f is None else f.files

    decoded: list[bytes] = []

    def counting(lines: list[bytes]) -> list[Entry]:
        decoded.extend(lines)
        return decode_lines(lines)

    monkeypatch.setattr("appliance.detect.compare.decode_lines", counting)
    assert compare(blocks(store, a), blocks(store, b), NOTES, known_files) == ch
    assert sorted(asked) == [b"", b"d0", b"d1", b"d2", b"d3", b"d4", b"d5", b"d6", b"d7"]
    # Of the changed blocks only the lines that differ were decoded: d0 one line each
    # side, d1 and d2 the name that went and the one that came, d3 doc03 and the note.
    assert sorted(decode_line(line).name for line in decoded) == sorted([
        b"doc00.txt", b"doc00.txt", b"doc01.txt", b"moved.txt", b"doc02.txt",
        b"doc02.txt.crypt", b"doc03.txt", b"README_TO_DECRYPT.txt"])
    # The count it is told is what it uses (the shared lines are not decoded): told 1,000
    # files each, the five identical blocks (60 files) count 5,000, and each of the four
    # changed ones 1,000 less the files among its differing new lines (1 each).
    told = compare(blocks(store, a), blocks(store, b), NOTES, lambda p, lines: 1000)
    assert told.unchanged == 5 * 1000 + 4 * (1000 - 1)
    # Facts that do not know a changed block: it is decoded whole, with the same answer.
    decoded.clear()
    assert compare(blocks(store, a), blocks(store, b), NOTES,
                   lambda p, lines: None if p == b"d0" else known_files(p, lines)) == ch
    assert len(decoded) == 2 * 15 + 3 * 2  # d0 both sides whole, d1-d3 as before


def test_note_patterns_match_known_notes_only() -> None:
    for name in (b"HOW_TO_DECRYPT_FILES.txt", b"README_TO_DECRYPT.txt", b"restore-my-files.txt",
                 b"!!!READ_ME!!!.txt", b"YOUR_FILES_ARE_ENCRYPTED.html"):
        assert NOTES.match(name), name
    for name in (b"README.md", b"readme.txt", b"decrypt.py", b"notes.txt", b"restore.sh",
                 b"transom_window.txt", b"install_readme_first.txt", b"restore_db.md"):
        assert not NOTES.match(name), name


# --- the verdict -------------------------------------------------------------------------------


def test_encryption_in_place_is_suspicious_with_its_evidence(store: Datastore,
                                                             clock: Clock) -> None:
    det = detector(store)
    tree = office()
    first = commit_tree(store, tree)
    assert det.judge("web01", first.snapshot).suspicious is False  # the baseline
    clock.now += timedelta(days=1)
    bad = encrypt(tree)
    m = commit_tree(store, bad)
    v = det.judge("web01", m.snapshot)
    assert v is not None and v.suspicious
    assert set(v.signals) == {"mass_change", "incompressible", "extensions", "ransom_notes"}
    ev = v.evidence
    assert ev["changes"]["extension_changed"] == 60 and ev["changes"]["ransom_notes"] == 4
    assert ev["changes"]["new_extensions"] == {"locked": 60}
    assert ev["incompressible_jump"] > 0.5  # text (~0.3) became random (1.0)
    assert ev["classes"]["locked"]["baseline"] < 0.5  # a new class: the source's overall


def test_a_first_snapshot_is_the_baseline_without_reading_its_catalog(
        store: Datastore, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing to compare a source's first snapshot with: its verdict (clean, every file
    added) comes from the manifest, not from decoding its catalog, which the agent's commit
    answer would wait for. The next snapshot is compared, reading both catalogs."""
    det = detector(store)
    read: list[str] = []  # the first chunk of each stream read
    stream = store.stream

    def recorded(ref: StreamRef):
        read.append(ref.chunks[0][0])
        return stream(ref)

    monkeypatch.setattr(store, "stream", recorded)
    tree = encrypt(office())  # ransom notes and all: a first backup is never suspicious
    first = commit_tree(store, tree)
    read.clear()
    v = det.judge("web01", first.snapshot)
    assert v is not None and not v.suspicious and v.signals == []
    assert v.evidence["first_backup"] is True
    assert v.evidence["changes"] == {"files": 64, "added": 64}
    assert read == []
    clock.now += timedelta(days=1)
    second = commit_tree(store, office())
    read.clear()
    v = det.judge("web01", second.snapshot)
    assert v is not None and v.evidence["changes"]["deleted"] == 64
    assert {first.catalog.chunks[0][0], second.catalog.chunks[0][0]} <= set(read)


def test_normal_churn_is_clean(store: Datastore, clock: Clock) -> None:
    det = detector(store)
    tree = office()
    commit_tree(store, tree)
    clock.now += timedelta(days=1)
    changed = {d: dict(f) for d, f in tree.items()}
    for i in range(6):  # 10 % of the files edited, two added
        changed[b"d1"][f"doc{i:02d}.txt".encode()] += b" edited today"
    changed[b"d2"][b"new.txt"] = text(77)
    touched = {(b"d1", f"doc{i:02d}.txt".encode()) for i in range(6)} | {(b"d2", b"new.txt")}
    m = commit_tree(store, changed, summary_of(changed, touched))
    v = det.judge("web01", m.snapshot)
    assert v is not None and not v.suspicious and v.signals == []


def test_one_signal_is_not_enough(store: Datastore, clock: Clock) -> None:
    """A package upgrade rewrites most files, compressing as before: mass change only."""
    det = detector(store)
    tree = office()
    commit_tree(store, tree)
    clock.now += timedelta(days=1)
    upgraded = office(seed=5)  # every file new, same kind of content
    v = det.judge("web01", commit_tree(store, upgraded).snapshot)
    assert v is not None and v.signals == ["mass_change"] and not v.suspicious
    assert detector(store).thresholds.min_signals == 2
    strict = Detector(store, Verdicts(store.index), Thresholds(min_signals=1))
    assert strict.judge("web01", v.snapshot).suspicious  # the thresholds are settings


def test_thresholds_come_from_the_config(tmp_path: Path) -> None:
    cfg = Config(store=StoreConfig(path=str(tmp_path / "d"), reserve_mb=0))
    cfg.detection.entropy_jump = 0.4
    cfg.detection.hold_clean = 2
    st = wiring.open_store(cfg)
    try:
        det = wiring.detector(cfg, st)
        assert det.thresholds.entropy_jump == 0.4 and det.hold_clean == 2
        assert det.thresholds.min_signals == cfg.detection.min_signals == 2
    finally:
        st.close()


def test_an_unknown_old_summary_is_not_judged_for_entropy() -> None:
    from appliance.detect.compare import Changes

    v = judge(Changes(parent_files=100, modified=90), {}, {}, Thresholds())
    assert v.evidence["incompressible_jump"] is None and v.signals == ["mass_change"]


# --- holds and prune ---------------------------------------------------------------------------


def daily(store: Datastore, clock: Clock, tree: Tree, days: int) -> list[str]:
    out = []
    for _ in range(days):
        clock.now += timedelta(days=1)
        out.append(commit_tree(store, tree, {}).snapshot)
    return out


def test_hold_keeps_the_clean_snapshots_through_prune_until_lifted(store: Datastore,
                                                                   clock: Clock) -> None:
    from appliance.audit.log import AuditLog

    audit = AuditLog(store.index)
    det = detector(store, hold_clean=2, audit=audit)
    tree = office()
    clean = [commit_tree(store, tree).snapshot]
    clean += daily(store, clock, tree, 2)
    for s in clean:
        det.judge("web01", s)
    clock.now += timedelta(days=1)
    bad = commit_tree(store, encrypt(tree)).snapshot
    assert det.judge("web01", bad).suspicious
    later = daily(store, clock, encrypt(tree), 9)  # still encrypted, nothing new to flag
    for s in later:
        assert not det.judge("web01", s).suspicious
    marks = det.marks("web01")
    assert marks[bad] == {"suspicious": True, "clean": False, "held": True,
                          "signals": marks[bad]["signals"], "confirm_restore": True}
    assert all(not marks[s]["clean"] and marks[s]["confirm_restore"] for s in later)
    assert [s for s in clean if marks[s]["clean"]] == clean
    assert {s for s in clean if marks[s]["held"]} == set(clean[1:])  # the last 2 clean

    def prune() -> set[str]:
        Pruner(store, default_policy="7-0-0", tz="UTC", replication_required=False,
               held=det.held()).run(lambda f, m: None)
        return {r.snapshot for r in store.index.snapshots("web01")}

    left = prune()
    assert set(clean[1:]) <= left and bad in left  # held past their retention
    assert clean[0] not in left  # not held (hold_clean=2): retention applies
    assert set(later[-7:]) <= left and later[0] not in left
    # an agent cannot lift it (HTTP: tests/integration/test_ransomware.py); an admin can
    with pytest.raises(NotFound):
        det.lift("web01", clean[1], "cli:root")  # not a suspicious snapshot
    row = det.lift("web01", bad, "account:alice")
    assert row.reviewed_by == "account:alice"
    with pytest.raises(Conflict):
        det.lift("web01", bad, "account:alice")
    assert det.verdicts.hold_log()[0] | {"at": 0} == {
        "at": 0, "host": "web01", "snapshot": bad, "actor": "account:alice", "action": "lift"}
    # and in the tamper-evident audit log the data center keeps (one record: the refused
    # lifts above wrote none)
    [lifted] = [r for r in audit.records() if r.kind == "hold_lift"]
    assert (lifted.actor, lifted.detail) == ("account:alice", {"host": "web01", "snapshot": bad})
    assert det.held() == set()
    left = prune()
    assert not set(clean) & left and bad not in left


def test_pruner_keeps_the_held_ids_it_is_given(store: Datastore, clock: Clock) -> None:
    snaps = daily(store, clock, office(), 5)
    decisions = Pruner(store, default_policy="1-0-0", tz="UTC", replication_required=False,
                       held={("web01", snaps[1])}).plan()
    kept = {d.snapshot: d.reason for d in decisions if d.keep}
    assert set(kept) == {snaps[1], snaps[4]}
    assert kept[snaps[1]].startswith("held until an admin lifts the hold")


def test_wiring_gives_prune_the_detectors_holds(tmp_path: Path, clock: Clock) -> None:
    cfg = Config(store=StoreConfig(path=str(tmp_path / "data"), reserve_mb=0))
    st = wiring.open_store(cfg)
    st.clock = clock
    st.add_host("web01")
    try:
        det = wiring.detector(cfg, st)
        tree = office()
        first = commit_tree(st, tree).snapshot
        det.judge("web01", first)
        clock.now += timedelta(days=1)
        bad = commit_tree(st, encrypt(tree)).snapshot
        det.judge("web01", bad)
        daily(st, clock, encrypt(tree), 3)
        pruner = wiring.maintenance(cfg, st).pruner()
        assert pruner.held == {("web01", first), ("web01", bad)}
    finally:
        st.close()


# --- the compression summary: format and compatibility ------------------------------------------


def test_tally_classes_and_the_cap() -> None:
    t = compression.Tally()
    t.add(b"a.TXT", 100, 30)
    t.add(b"b.txt", 100, 40)
    t.add(b"noext", 10, 10)
    t.add(b"x.0123456789abcdefXYZ", 5, 5)  # too long to be a type
    assert t.summary() == {"txt": [2, 200, 70], "": [2, 15, 15]}
    many = compression.Tally()
    for i in range(200):
        many.add(f"f.e{i}".encode(), 1000 - i, 500)
    s = many.summary()
    assert len(s) == compression.MAX_CLASSES and s[compression.OTHER][0] == 200 - 63
    assert compression.check(s) == s


@pytest.mark.parametrize("bad", [[], {"txt": [1, 2]}, {"t/x": [1, 2, 3]}, {"txt": [1, -2, 3]},
                                 {"txt": [1, 2, True]}, {f"e{i}": [0, 0, 0] for i in range(65)}])
def test_a_bad_summary_is_refused(bad: object) -> None:
    with pytest.raises(CatalogError):
        compression.check(bad)


def test_manifest_keeps_the_summary_and_reads_without_it(store: Datastore) -> None:
    m = commit_tree(store, office())
    assert m.compression["txt"][0] == 60
    on_disk = store.snapshots.manifest("web01", m.snapshot)
    assert on_disk.compression == m.compression
    m.compression = {}
    assert b"compression" not in m.to_json()  # as an older appliance wrote it
    assert Manifest.from_json(m.to_json()).compression == {}


def test_the_commit_body_takes_a_summary_and_refuses_a_bad_one() -> None:
    from appliance.api.ingest.backup import _parse_commit
    from appliance.errors import BadRequest

    ref = {"chunks": [["a" * 64, 10]]}
    req = _parse_commit({"catalog": ref, "dirindex": ref, "compression": {"txt": [1, 10, 4]}})
    assert req.compression == {"txt": [1, 10, 4]}
    assert _parse_commit({"catalog": ref, "dirindex": ref}).compression == {}  # older agents
    with pytest.raises(BadRequest, match="compression"):
        _parse_commit({"catalog": ref, "dirindex": ref, "compression": {"txt": "x"}})


async def test_a_new_agent_commits_to_an_older_appliance_without_the_summary() -> None:
    """An appliance from before summaries refuses the unknown field by name (400, before any
    work): the agent commits again without it (rdr_agent.compat, shared with source_name)."""
    from rdr_agent import compat
    from rdr_agent.errors import ApplianceError

    class OldAppliance:
        def __init__(self) -> None:
            self.bodies: list[dict] = []

        async def commit(self, sid: str, body: dict) -> dict:
            self.bodies.append(body)
            extra = set(body) - {"catalog", "dirindex", "agent_version", "source",
                                 "source_name", "unreadable", "unreadable_count"}
            if extra:
                raise ApplianceError(400, "bad_field", f"unknown field {sorted(extra)[0]!r}")
            return {"snapshot": "s"}

    old = OldAppliance()
    assert await compat.commit(old, "sid", {  # type: ignore[arg-type]
        "catalog": {}, "compression": {"txt": [1, 2, 3]}}) == {"snapshot": "s"}
    assert [sorted(b) for b in old.bodies] == [["catalog", "compression"], ["catalog"]]

    class Refusing(OldAppliance):
        async def commit(self, sid: str, body: dict) -> dict:
            raise ApplianceError(400, "bad_field", "field 'source' must be a list of strings")

    with pytest.raises(ApplianceError):  # any other refusal stands
        await compat.commit(Refusing(), "sid", {"compression": {}})  # type: ignore[arg-type]


def test_catch_up_judges_what_a_stop_left_unjudged_only(store: Datastore, clock: Clock) -> None:
    tree = office()
    old = commit_tree(store, tree).snapshot  # from before detection: stays unjudged
    clock.now += timedelta(days=1)
    det = detector(store)
    first = commit_tree(store, tree).snapshot
    det.judge("web01", first)
    clock.now += timedelta(days=1)
    missed = commit_tree(store, encrypt(tree)).snapshot  # the daemon stopped before judging
    assert det.catch_up() == 1
    assert det.verdicts.get("web01", old) is None
    assert det.verdicts.get("web01", missed).suspicious
    assert det.catch_up() == 0


def test_detection_settings_are_checked(tmp_path: Path) -> None:
    from appliance.config import ConfigError, load

    good = tmp_path / "good.toml"
    good.write_text("[detection]\nentropy_jump = 0.4\nmin_signals = 3\nhold_clean = 5\n")
    cfg = load(good)
    assert (cfg.detection.entropy_jump, cfg.detection.min_signals,
            cfg.detection.hold_clean) == (0.4, 3, 5)
    for bad, key in (("changed_share = 1.5", "detection.changed_share"),
                     ("hold_clean = 0", "hold_clean"), ("min_signal = 2", "min_signal")):
        path = tmp_path / "bad.toml"
        path.write_text(f"[detection]\n{bad}\n")
        with pytest.raises(ConfigError, match=key):
            load(path)


async def test_after_commit_answers_in_time_and_tells_of_a_suspicious_snapshot(
        store: Datastore, clock: Clock) -> None:
    """The commit's answer waits at most `answer_within` (a huge catalog is judged on
    after it), a failing detector never fails the commit, and `on_suspicious` hears of each
    suspicious snapshot once its verdict is stored."""
    import asyncio
    import threading
    import time as _time

    heard: list = []
    det = detector(store, answer_within=0.05, on_suspicious=heard.append)
    tree = office()
    first = commit_tree(store, tree)
    await det.after_commit(first)  # judged within the wait, or just after it on a busy box
    for _ in range(100):
        if det.verdicts.get("web01", first.snapshot) is not None:
            break
        await asyncio.sleep(0.05)
    assert det.verdicts.get("web01", first.snapshot) is not None
    clock.now += timedelta(days=1)
    bad = commit_tree(store, encrypt(tree))
    gate = threading.Event()
    judge = det.judge

    def slow(host: str, snap: str):
        gate.wait(5)
        return judge(host, snap)

    det.judge = slow  # type: ignore[method-assign]
    t0 = _time.monotonic()
    await det.after_commit(bad)
    # Answered long before the held judge (5 s) could have given its verdict.
    assert _time.monotonic() - t0 < 4 and det.verdicts.get("web01", bad.snapshot) is None
    gate.set()
    for _ in range(100):
        if heard:
            break
        await asyncio.sleep(0.05)
    assert [(s.snapshot, "ransom_notes" in s.signals) for s in heard] == [(bad.snapshot, True)]

    def broken(host: str, snap: str):
        raise OSError("disk gone")

    det.judge = broken  # type: ignore[method-assign]
    await det.after_commit(bad)  # logged, not raised


def test_rdr_snapshots_and_holds_show_the_marks(tmp_path: Path, clock: Clock,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from appliance.cli.app import main

    cfg = tmp_path / "a.toml"
    cfg.write_text(f"[store]\npath = '{tmp_path / 'data'}'\nreserve_mb = 0\n")
    st = Datastore(tmp_path / "data", reserve_bytes=0, clock=clock)
    st.add_host("web01")
    tree = office()
    det = detector(st)
    first = commit_tree(st, tree).snapshot
    det.judge("web01", first)
    clock.now += timedelta(days=1)
    bad = commit_tree(st, encrypt(tree)).snapshot
    det.judge("web01", bad)
    st.close()
    assert main(["snapshots", "web01", "--config", str(cfg)]) == 0
    lines = {ln.split()[1]: ln for ln in capsys.readouterr().out.splitlines()[1:]}
    assert "SUSPICIOUS" in lines[bad] and "held" in lines[bad]
    assert "held" in lines[first] and "SUSPICIOUS" not in lines[first]
    assert main(["holds", "list", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"web01/{bad}" in out and f"holds: {first}" in out and "extension changes" in out
    assert main(["holds", "lift", "web01", bad, "--config", str(cfg)]) == 0
    assert "hold lifted by cli:" in capsys.readouterr().out
    assert main(["holds", "lift", "web01", bad, "--config", str(cfg)]) == 1  # one line, no trace
    assert "lifted already" in capsys.readouterr().err
    assert main(["holds", "list", "--config", str(cfg)]) == 0
    assert "no holds" in capsys.readouterr().out
