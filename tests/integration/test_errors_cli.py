"""Issue 22, error text: each case runs the real `rdr` / `rdr-agent` command and checks the
exact line it prints and its exit code."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ..conftest import Appliance, agent_cmd, rdr_cmd
from ..treeutil import run


async def init_store(cfg: Path) -> None:
    """Only `rdr init` (or `rdr serve`) creates a store; the other commands refuse to."""
    rc, _, err = await run(rdr_cmd() + ["init", "--config", str(cfg)])
    assert rc == 0, err


def only_line(rc: int, err: str, code: int = 1) -> str:
    """The one line on stderr of a command that failed with `code`."""
    assert rc == code, (rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_tree(root: Path) -> Path:
    """One file, one directory, one symlink: the counts the summaries print."""
    (root / "d").mkdir(parents=True)
    (root / "d" / "a.txt").write_text("alpha\n")
    (root / "d" / "link").symlink_to("a.txt")
    return root


async def test_a_wrong_fingerprint_is_one_readable_line(appliance: Appliance,
                                                        tmp_path: Path) -> None:
    env = appliance.env(appliance.add_host("web01"), tmp_path / "state")
    wrong = ":".join(["AB"] * 32)
    rc, _, err = await run(agent_cmd() + ["snapshots", "--fingerprint", wrong], env)
    assert only_line(rc, err) == (
        f"rdr-agent: error: the appliance at {appliance.url} failed TLS verification: its "
        f"certificate's fingerprint is {appliance.fingerprint}, not the pinned {wrong} "
        "(check --fingerprint)")


async def test_no_fingerprint_does_not_blame_the_fingerprint(appliance: Appliance,
                                                             tmp_path: Path) -> None:
    env = appliance.env(appliance.add_host("web01"), tmp_path / "state")
    del env["RDR_FINGERPRINT"]
    rc, _, err = await run(agent_cmd() + ["snapshots"], env)
    line = only_line(rc, err)
    assert line == (
        f"rdr-agent: error: the appliance at {appliance.url} failed TLS verification: "
        "self-signed certificate (pin its certificate with --fingerprint (the appliance logs "
        "it at start) or give its CA with --ca)")
    assert "wrong --fingerprint" not in line


async def test_a_wrong_port_fails_at_once_without_retry_warnings(appliance: Appliance,
                                                                 tmp_path: Path) -> None:
    env = appliance.env(appliance.add_host("web01"), tmp_path / "state")
    url = f"https://127.0.0.1:{free_port()}"
    env["RDR_URL"] = url
    started = time.monotonic()
    rc, _, err = await run(agent_cmd() + ["snapshots"], env)
    took = time.monotonic() - started
    assert only_line(rc, err) == (
        f"rdr-agent: error: cannot reach the appliance at {url}: connection refused (is the "
        "URL and port right, and is the appliance running?)")
    assert took < 5, took  # was five retry warnings over 14 s


def _into_closed_pipe(cmd: list[str], env: dict[str, str] | None = None,
                      ) -> subprocess.CompletedProcess:
    """Run `cmd` with its stdout a pipe nobody reads any more (`| head` after it quit)."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run(cmd, stdout=w, stderr=subprocess.PIPE, env=env, timeout=120,
                              text=True, check=False)
    finally:
        os.close(w)


async def test_a_closed_pipe_ends_both_commands_quietly(appliance: Appliance,
                                                        tmp_path: Path) -> None:
    cfg = tmp_path / "a.toml"
    cfg.write_text(f"[store]\npath = '{tmp_path / 'data'}'\n")
    await init_store(cfg)
    rc, _, err = await run(rdr_cmd() + ["hosts", "add", "web01", "--config", str(cfg)])
    assert rc == 0, err
    res = await asyncio.to_thread(_into_closed_pipe,
                                  rdr_cmd() + ["hosts", "list", "--json", "--config", str(cfg)])
    assert (res.returncode, res.stderr) == (141, "")
    env = appliance.env(appliance.add_host("web02"), tmp_path / "state")
    res = await asyncio.to_thread(_into_closed_pipe, agent_cmd() + ["snapshots", "--json"], env)
    assert (res.returncode, res.stderr) == (141, "")


async def _backup(appliance: Appliance, env: dict[str, str], src: Path) -> str:
    rc, out, err = await run(agent_cmd() + ["backup", str(src)], env)
    assert rc == 0, err
    return out


async def test_backup_and_restore_summaries_count_in_words(appliance: Appliance,
                                                           tmp_path: Path) -> None:
    env = appliance.env(appliance.add_host("web01"), tmp_path / "state")
    src = small_tree(tmp_path / "src")
    out = await _backup(appliance, env, src / "d")
    lines = out.splitlines()
    dirs = len((src / "d").parts) - 1  # the path's directories are in the snapshot too
    assert lines[1] == f"  1 file, {dirs} dirs, 1 symlink, 6 B in all", out
    assert lines[2] == "  read 6 B from 1 file, 0 files unchanged (not read)", out
    rc, out, err = await run(agent_cmd() + ["restore", "latest", "--to",
                                            str(tmp_path / "o")], env)
    assert rc == 0, err
    assert out.startswith(f"restored 1 file, {dirs} dirs, 1 symlink, 6 B to "), out


async def test_restore_into_a_read_only_directory_is_exit_1(appliance: Appliance,
                                                            tmp_path: Path) -> None:
    env = appliance.env(appliance.add_host("web01"), tmp_path / "state")
    await _backup(appliance, env, small_tree(tmp_path / "src"))
    target = tmp_path / "ro"
    target.mkdir()
    cmd = agent_cmd() + ["restore", "latest", "--to", str(target)]
    if os.geteuid() == 0:  # root writes through any mode: make the filesystem read-only
        if shutil.which("unshare") is None:
            pytest.skip("needs unshare to mount a read-only filesystem as root")
        cmd = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o ro none "{target}" && '
               'exec "$@"', "sh", *cmd]
        why = "Read-only file system"
    else:
        target.chmod(0o555)
        why = "Permission denied"
    rc, out, err = await run(cmd, env)
    assert only_line(rc, err) == f"rdr-agent: error: cannot write the restore target " \
                                 f"{target}: {why}"
    assert out == ""


async def test_restore_keeps_existing_files_unless_told(appliance: Appliance,
                                                        tmp_path: Path) -> None:
    env = appliance.env(appliance.add_host("web01"), tmp_path / "state")
    src = small_tree(tmp_path / "src")
    await _backup(appliance, env, src / "d")
    target = tmp_path / "o"
    restore = agent_cmd() + ["restore", "latest", "--to", str(target)]
    rc, _, err = await run(restore, env)
    assert rc == 0, err
    here = target / str(src / "d").lstrip("/")
    (here / "a.txt").write_text("changed since\n")
    rc, out, err = await run(restore, env)  # default: never
    assert rc == 5, (out, err)
    lines = out.splitlines()
    dirs = len((src / "d").parts) - 1
    assert lines[0].startswith(f"restored 0 files, {dirs} dirs, 0 symlinks, 0 B to "), out
    assert lines[1:] == ["  2 existing entries kept, not overwritten (--overwrite if-changed "
                         "or always replaces them):",
                         f"    {str(src / 'd' / 'a.txt').lstrip('/')}",
                         f"    {str(src / 'd' / 'link').lstrip('/')}"]
    assert (here / "a.txt").read_text() == "changed since\n"
    rc, out, err = await run(restore + ["--overwrite", "if-changed"], env)
    assert rc == 0, err
    assert out.splitlines()[1:] == ["  1 entry already as in the snapshot (not rewritten)"]
    assert out.startswith(f"restored 1 file, {dirs} dirs, 0 symlinks, 6 B to "), out
    assert (here / "a.txt").read_text() == "alpha\n"
    rc, out, err = await run(restore + ["--overwrite", "always"], env)
    assert rc == 0, err
    assert out.startswith(f"restored 1 file, {dirs} dirs, 1 symlink, 6 B to "), out
    assert len(out.splitlines()) == 1


async def test_every_agent_command_lists_its_exit_codes() -> None:
    for command in ("backup", "snapshots", "restore", "run", "plan"):
        rc, out, err = await run(agent_cmd() + [command, "--help"])
        assert rc == 0, err
        codes = out.split("exit codes:\n", 1)[1]
        for code in ("0", "1", "2", "130", "141"):
            assert f"\n  {code} " in "\n" + codes, (command, codes)
    rc, out, _ = await run(agent_cmd() + ["restore", "--help"])
    assert "\n  5    finished, but existing entries were kept" in out
    assert "'never' (the default" in " ".join(out.split())
    rc, out, _ = await run(rdr_cmd() + ["hosts", "list", "--help"])
    assert "\n  141  the reader of its output went away" in out


async def test_admin_add_prints_the_page_address(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "a.toml"
    cfg.write_text(f"[server]\nlisten = ['127.0.0.1:{port}']\n"
                   f"[store]\npath = '{tmp_path / 'data'}'\n")
    await init_store(cfg)
    rc, out, err = await run(rdr_cmd() + ["admin", "add", "alice", "--password-stdin",
                                          "--config", str(cfg)],
                             stdin=b"a long enough pass phrase 42\n")
    assert rc == 0, err
    assert out.strip() == f"admin account alice created; sign in at https://127.0.0.1:{port}/"


async def test_hosts_remove_keeps_snapshots_and_purge_asks(appliance: Appliance,
                                                           tmp_path: Path) -> None:
    token = appliance.add_host("web01")
    env = appliance.env(token, tmp_path / "state")
    await _backup(appliance, env, small_tree(tmp_path / "src"))
    cfg = tmp_path / "a.toml"
    cfg.write_text(f"[store]\npath = '{appliance.data_dir}'\n")

    async def rdr(*args: str) -> tuple[int, str, str]:
        return await run(rdr_cmd() + [*args, "--config", str(cfg)], stdin=b"")

    rc, out, err = await rdr("hosts", "remove", "web01")
    assert rc == 0, err
    assert out.strip() == ("host web01 removed: its token no longer works; its 1 snapshot "
                           "stays until pruned (the newest is kept; 'rdr hosts remove web01 "
                           "--purge' deletes them)")
    rc, out, _ = await rdr("hosts", "list")
    assert "web01" not in out
    assert len(appliance.store.index.snapshots("web01")) == 1
    rc, _, err = await run(agent_cmd() + ["snapshots"], env)
    assert "401" in only_line(rc, err)
    rc, out, err = await rdr("snapshots", "web01", "--json")
    assert rc == 0 and len(json.loads(out)) == 1, err
    # Prune still sees the removed host's snapshots (and keeps the newest).
    rc, out, err = await rdr("prune", "--dry-run", "--json")
    assert rc == 0, err
    assert [(d["host"], d["keep"]) for d in json.loads(out)] == [("web01", True)]
    rc, _, err = await rdr("hosts", "remove", "web01", "--purge")  # stdin is no terminal
    assert only_line(rc, err) == ("rdr: error: --purge deletes every snapshot of web01; "
                                  "confirm on a terminal or add --yes")
    assert len(appliance.store.index.snapshots("web01")) == 1
    rc, out, err = await rdr("hosts", "remove", "web01", "--purge", "--yes")
    assert rc == 0, err
    assert out.strip() == ("host web01 removed with its 1 snapshot (their chunks are freed "
                           "by the next 'rdr gc')")
    assert appliance.store.index.snapshots("web01") == []
    rc, _, err = await rdr("hosts", "remove", "web01")
    assert only_line(rc, err) == "rdr: error: no host named 'web01'"
    rc, out, _ = await rdr("hosts", "remove", "--help")
    assert "\n  0    removed\n" in out and "--purge" in out


def _typed(cmd: list[str], typed: bytes) -> tuple[int, str]:
    """Run `cmd` with a terminal as stdin on which `typed` is entered; (exit code, stdout)."""
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(cmd, stdin=slave, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        os.write(master, typed)
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    return proc.returncode, out.decode()


async def test_hosts_remove_purge_confirmed_on_a_terminal(tmp_path: Path) -> None:
    cfg = tmp_path / "a.toml"
    cfg.write_text(f"[store]\npath = '{tmp_path / 'data'}'\n")
    await init_store(cfg)
    for name in ("web01", "web02"):
        rc, _, err = await run(rdr_cmd() + ["hosts", "add", name, "--config", str(cfg)])
        assert rc == 0, err
    purge = ["--purge", "--config", str(cfg)]
    ask = ("delete host web01 and its 0 snapshots for good? type the host's name to "
           "confirm: ")  # (the answer's echo goes to the terminal, not to this pipe)
    remove = rdr_cmd() + ["hosts", "remove", "web01", *purge]
    rc, out = await asyncio.to_thread(_typed, remove, b"web02\n")
    assert rc == 1, out
    assert out == ask + "rdr: error: not confirmed; host web01 kept\n"
    rc, out = await asyncio.to_thread(_typed, remove, b"web01\n")
    assert rc == 0, out
    assert out == ask + ("host web01 removed with its 0 snapshots (their chunks are freed by "
                         "the next 'rdr gc')\n")
    rc, out, _ = await run(rdr_cmd() + ["hosts", "list", "--config", str(cfg)])
    assert "web01" not in out and "web02" in out


async def test_an_unknown_host_name_fails_at_once(appliance: Appliance, tmp_path: Path) -> None:
    env = appliance.env(appliance.add_host("web01"), tmp_path / "state")
    env["RDR_URL"] = url = "https://no-such-appliance.invalid:8443"
    started = time.monotonic()
    rc, _, err = await run(agent_cmd() + ["snapshots"], env)
    assert only_line(rc, err) == (
        f"rdr-agent: error: cannot reach the appliance at {url}: unknown host name (is the "
        "URL and port right, and is the appliance running?)")
    assert time.monotonic() - started < 10


async def test_a_refusal_after_the_appliance_answered_is_retried(caplog) -> None:
    """Refused before any answer: a wrong address, no retry. Refused after one: the
    appliance restarting, worth the retries (each one logged)."""
    from aiohttp import web

    from rdr_agent.client import ApplianceClient, ConnectError, Endpoint

    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"host": "web01"})

    app = web.Application()
    app.router.add_get("/api/v1/whoami", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    url = f"http://127.0.0.1:{port}"
    async with ApplianceClient(Endpoint(url, "rdr_x"), retries=2) as client:
        assert (await client.whoami())["host"] == "web01"
        await runner.cleanup()
        with pytest.raises(ConnectError, match="cannot reach the appliance"):
            await client.whoami()
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 2
    caplog.clear()
    async with ApplianceClient(Endpoint(url, "rdr_x"), retries=2) as client:
        with pytest.raises(ConnectError, match="connection refused"):
            await client.whoami()
    assert not any("retrying" in r.getMessage() for r in caplog.records)
