"""The comparative benchmark harness works end to end on a small tree: every tool that is
installed backs up, re-backs up, restores (verified) and restores one file; the JSON has every
figure; the scale check runs. Figures are not judged here, only that they exist and are sane --
a harness that silently measures nothing (or times a wrong restore) is the failure to catch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import dataset as dsm

ROOT = Path(__file__).resolve().parents[2]  # the repository (tests/<kind>/ is two down)
POSITIVE = ("backup1_seconds", "backup2_seconds", "backup2_added_bytes", "restore_seconds",
            "restore_one_seconds", "repo_bytes", "client_peak_rss_bytes")


def bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_run_quick_measures_every_tool_and_verifies_restores(tmp_path: Path) -> None:
    tools = ["appliance"] + [t for t in ("restic", "borg") if shutil.which(t)]
    out = tmp_path / "run.json"
    res = bench("run", "--quick", "--tools", ",".join(tools), "--size-mb", "8", "--agents",
                "2", "--warm", "--work", str(tmp_path / "work"), "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert list(r["results"]) == tools  # the appliance's column first
    files = r["dataset"]["files"]
    assert files > 100 and r["dataset"]["bytes"] > 4 << 20
    for tool in tools:
        med = r["results"][tool]["median"]
        for key in POSITIVE:
            assert isinstance(med[key], int | float) and med[key] > 0, (tool, key, med)
        run = r["results"][tool]["runs"][0]
        assert run["restore_verified_files"] == files - run["change"]["deleted"] + \
            run["change"]["added"]
        assert run["restore_one_verified"] is True
        # The second backup of a 1 % change adds far less than the first.
        assert med["backup2_added_bytes"] < med["repo_bytes_after_backup1"] / 2
    app = r["results"]["appliance"]["median"]
    assert app["server_peak_rss_bytes"] > 10 << 20
    assert set(app["server_rss_bytes"]) == {"backup1", "backup2", "restore", "restore_one"}
    for peer in tools[1:]:
        assert r["ratios"][peer]["backup1_seconds"] > 0
    conc = r["concurrency"]["median"]
    assert conc["agents"] == 2 and conc["seconds"] > 0 and conc["daemon_peak_rss_bytes"] > 0
    assert conc["bytes"] > 0
    m = r["machine"]
    assert m["cores"] >= 1 and m["ram_bytes"] > 0 and set(m["versions"]) == set(tools)
    assert "| initial backup |" in res.stdout and "appliance" in res.stdout
    # The scratch space is gone; only the dataset cache stays.
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["datasets"]


def test_scale_check_small(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    res = bench("scale", "--chunks", "20000", "--batches", "3", "--work", str(tmp_path),
                "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["chunks"] == 20000 and r["create"]["files_per_second"] > 0
    tm = r["touch_missing"]
    assert tm["warm"]["lookups_per_second"] > 0
    assert (tm.get("cold") or tm["first_pass"])["lookups_per_second"] > 0
    dc = r["dc_chunks"]
    assert dc["file_bytes"] > 0 and dc["dc_missing_warm"]["lookups_per_second"] > 0
    assert dc["dc_verify_sort"]["ids"] == 20000
    cc = r["commit_check"]  # the check itself asserts that exactly the new 1 % was touched
    assert (cc["reused_chunks"], cc["not_in_parent"]) == (10000, 100)
    assert cc["vouched_check_seconds"] > 0 and cc["touch_all"]["per_second"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["scale.json"]  # the store is removed


def test_change_never_writes_into_the_cached_tree_and_bad_restores_fail(
        tmp_path: Path) -> None:
    ds = dsm.build(tmp_path / "cache", dsm.Params.for_size(4), log=lambda _: None)
    again = dsm.build(tmp_path / "cache", dsm.Params.for_size(4), log=lambda _: None)
    assert again.files == ds.files  # reused, not regenerated
    work = tmp_path / "src"
    assert dsm.link_copy(ds.root, work) == "link"
    change, expected = dsm.apply_change(ds, work, seed=1)
    assert change.modified and change.added and change.deleted
    assert dsm.scan(ds.root) == ds.files  # the hard-linked cache is untouched
    assert dsm.verify_tree(work, expected) == len(expected)
    # Deterministic: the same change on a fresh copy gives the same tree.
    work2 = tmp_path / "src2"
    dsm.link_copy(ds.root, work2)
    assert dsm.apply_change(ds, work2, seed=1)[1] == expected
    # A restore with one flipped byte, or one file short, fails the check.
    victim = work2 / change.probe
    data = bytearray(victim.read_bytes())
    data[0] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(dsm.RestoreMismatch, match="differs"):
        dsm.verify_tree(work2, expected)
    victim.unlink()
    with pytest.raises(dsm.RestoreMismatch, match="missing"):
        dsm.verify_tree(work2, expected)


def test_agentgc_times_the_agents_collections_at_each_threshold(tmp_path: Path) -> None:
    out = tmp_path / "agentgc.json"
    res = bench("agentgc", "--size", "6M", "--thresholds", "700,10000", "--warm", "--work",
                str(tmp_path / "work"), "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["files"] > 100 and set(r["thresholds"]) == {"700", "10000"}
    for threshold, runs in r["thresholds"].items():
        assert list(runs) == ["initial", "second (1 % changed)", "third (unchanged)"]
        for one in runs.values():
            assert one["seconds"] > 0 and one["cpu_seconds"] > 0 and one["peak_rss_mib"] > 10
            assert len(one["gc_collections"]) == 3 and len(one["gc_seconds"]) == 3
            assert one["gc_threshold"][0] == int(threshold)  # the agent ran with it
    # The lower threshold collects the young generation more often over the same work.
    young = {t: r["thresholds"][t]["initial"]["gc_collections"][0] for t in ("700", "10000")}
    assert young["700"] > young["10000"]
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["datasets"]


def test_restorefs_restores_into_each_fresh_filesystem_and_verifies(tmp_path: Path) -> None:
    tools = ["appliance"] + (["restic"] if shutil.which("restic") else [])
    out = tmp_path / "restorefs.json"
    res = bench("restorefs", "--size", "6M", "--runs", "1", "--tools", ",".join(tools),
                "--warm", "--work", str(tmp_path / "work"), "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert list(r["states"]) == ["journal", "no-journal", "no-journal, after deletion"]
    for state, per in r["states"].items():
        assert list(per) == tools
        for tool in tools:
            (run,) = per[tool]["runs"]
            assert run["verified_files"] == r["files"] > 100
            assert run["journal"] is (state == "journal")  # as the filesystem itself says
            assert run["seconds"] > 0 and per[tool]["median_seconds"] == run["seconds"]
    assert "| journal | " in res.stdout
    # the scratch tree, and with it every filesystem image, is gone; nothing stays mounted
    assert not (tmp_path / "work" / "restorefs").exists()
    assert str(tmp_path) not in Path("/proc/mounts").read_text()
