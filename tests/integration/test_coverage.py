"""The premier check against a real backup's catalog: files changed after the backup, new
files and directories, excluded entries, unreadable files and missing plan paths are listed
(each once, a new or excluded directory as one entry), and nothing else."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

from rdr_agent.coverage import Coverage, check_coverage
from rdr_format.catalog import iter_raw_blocks

from ..conftest import Appliance, agent_cmd
from ..treeutil import run


async def test_coverage_lists_exactly_what_is_not_in_the_backup(appliance: Appliance,
                                                                tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "docs" / "deep").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text("a\n")
    (src / "docs" / "deep" / "b.txt").write_text("b\n")
    (src / "busy.log").write_text("line 1\n")
    (src / "skip.tmp").write_text("scratch\n")
    (src / "cache").mkdir()
    (src / "cache" / "blob").write_bytes(b"x" * 1000)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "app.sock"))  # never backed up, never listed
    token = appliance.add_host("pc1")
    state = tmp_path / "state"
    env_excludes = ["*.tmp", "cache"]
    # the CLI backup with the same excludes the plan would give the service
    rc, out, err = await run(agent_cmd() + ["backup", str(src), "--json",
                                            *[f"--exclude={x}" for x in env_excludes]],
                             appliance.env(token, state))
    assert rc == 0, err
    snap = json.loads(out)["snapshot"]
    manifest = appliance.store.snapshots.manifest("pc1", snap)

    def catalog() -> Iterator[tuple[bytes, list[bytes]]]:
        return iter_raw_blocks(appliance.store.stream(manifest.catalog))

    def check(unreadable: Iterable[tuple[str, str]] = ()) -> Coverage:
        return check_coverage([os.fsencode(src), os.fsencode(tmp_path / "gone")],
                              env_excludes, False, catalog(), unreadable)

    cov = check()
    assert sorted((f["path"], f["reason"]) for f in cov.files) == sorted([
        (str(src / "skip.tmp"), "excluded"), (str(src / "cache"), "excluded"),
        (str(tmp_path / "gone"), "missing")])
    assert cov.count == 3

    # after the backup: a file is written to, a file and a directory tree appear
    with open(src / "busy.log", "a") as f:
        f.write("line 2\n")
    (src / "new.txt").write_text("new\n")
    (src / "docs" / "fresh" / "sub").mkdir(parents=True)
    (src / "docs" / "fresh" / "sub" / "c.txt").write_text("c\n")
    cov = check(unreadable=[(str(src / "docs" / "locked.db"), "Permission denied")])
    got = {(f["path"], f["reason"]) for f in cov.files}
    assert got == {
        (str(src / "skip.tmp"), "excluded"), (str(src / "cache"), "excluded"),
        (str(tmp_path / "gone"), "missing"), (str(src / "busy.log"), "changed"),
        (str(src / "new.txt"), "new"), (str(src / "docs" / "fresh"), "new"),
        (str(src / "docs" / "locked.db"), "unreadable")}
    assert cov.count == len(got)
    changed = next(f for f in cov.files if f["reason"] == "changed")
    assert "7 bytes backed up, 14 on disk now" in changed["detail"]
    unread = next(f for f in cov.files if f["reason"] == "unreadable")
    assert unread["detail"] == "Permission denied"

    limited = check_coverage([os.fsencode(src)], [], False, catalog(), [], limit=2)
    assert len(limited.files) == 2 and limited.count > 2  # listed up to the limit, all counted
    sock.close()
