"""The two commands as an admin and a host's owner use them: one-line errors, clean stops."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from rdr_agent.client import ApplianceClient, Endpoint

from ..conftest import Appliance, agent_cmd, rdr_cmd
from ..treeutil import run


def one_line_error(rc: int, err: str) -> str:
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


async def test_hosts_and_snapshots_commands(tmp_path: Path) -> None:
    cfg = tmp_path / "a.toml"
    cfg.write_text(f"[store]\npath = '{tmp_path / 'data'}'\n")
    rc, out, err = await run(rdr_cmd() + ["init", "--config", str(cfg)])
    assert rc == 0 and out.strip() == f"appliance store created at {tmp_path / 'data'}", err
    rc, out, err = await run(rdr_cmd() + ["hosts", "add", "web01", "--config", str(cfg)])
    assert rc == 0, err
    token = out.strip().splitlines()[-1]
    assert token.startswith("rdr_") and len(token) > 50
    # The token is stored hashed: it appears nowhere in the data directory.
    for p in (tmp_path / "data").rglob("*"):
        if p.is_file():
            assert token.encode() not in p.read_bytes()
            assert token.split("_", 2)[2].encode() not in p.read_bytes()
    rc, out, err = await run(rdr_cmd() + ["hosts", "add", "web01", "--config", str(cfg)])
    assert "already exists" in one_line_error(rc, err)
    rc, out, err = await run(rdr_cmd() + ["hosts", "add", "bad/name", "--config", str(cfg)])
    assert "invalid host name" in one_line_error(rc, err)
    rc, out, _ = await run(rdr_cmd() + ["hosts", "list", "--config", str(cfg)])
    assert rc == 0 and "web01" in out
    rc, out, _ = await run(rdr_cmd() + ["snapshots", "--json", "--config", str(cfg)])
    assert rc == 0 and out.strip() == "[]"
    rc, out, err = await run(rdr_cmd() + ["snapshots", "nohost", "--config", str(cfg)])
    assert "no host" in one_line_error(rc, err)


async def test_bad_config_is_one_line_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "a.toml"
    cfg.write_text("[server]\nlisten = 'x'\n")
    rc, _, err = await run(rdr_cmd() + ["serve", "--config", str(cfg)])
    assert "server.listen" in one_line_error(rc, err)
    rc, _, err = await run(rdr_cmd() + ["snapshots", "--config", str(tmp_path / "none.toml")])
    assert "does not exist" in one_line_error(rc, err)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_serve(cfg: Path, port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        *rdr_cmd(), "serve", "--config", str(cfg), stderr=asyncio.subprocess.PIPE)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    for _ in range(100):
        try:
            await asyncio.to_thread(urllib.request.urlopen, f"https://127.0.0.1:{port}/healthz",
                                    context=ctx, timeout=1)
            return proc
        except OSError:
            await asyncio.sleep(0.1)
    proc.kill()
    raise AssertionError("rdr serve did not start")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_serve_stops_cleanly_and_sessions_stay_resumable(tmp_path: Path, sig) -> None:
    port = free_port()
    cfg = tmp_path / "a.toml"
    cfg.write_text(f"[server]\nlisten = '127.0.0.1:{port}'\n[store]\npath = 'data'\n")
    assert (await run(rdr_cmd() + ["init", "--config", str(cfg)]))[0] == 0
    rc, out, _ = await run(rdr_cmd() + ["hosts", "add", "web01", "--config", str(cfg)])
    token = out.strip().splitlines()[-1]
    proc = await start_serve(cfg, port)
    assert proc.stderr is not None
    key = tmp_path / "data" / "tls" / "key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    from appliance.api.tls import fingerprint

    fp = fingerprint(tmp_path / "data" / "tls" / "cert.pem")
    ep = Endpoint(f"https://127.0.0.1:{port}", token, fp)
    async with ApplianceClient(ep) as c:
        sid = (await c.open_session())["session"]
    proc.send_signal(sig)
    err = (await proc.stderr.read()).decode()
    assert await proc.wait() == 0
    assert f"fingerprint: {fp}" in err and "stopped cleanly" in err
    assert "Traceback" not in err
    proc = await start_serve(cfg, port)
    try:
        async with ApplianceClient(ep) as c:
            again = await c.open_session(sid)
        assert again["session"] == sid and again["resumed"]
        # The same certificate is reused on the next start: agents' pins stay valid.
        assert fingerprint(tmp_path / "data" / "tls" / "cert.pem") == fp
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.communicate()


async def test_agent_errors_are_one_line(appliance: Appliance, tmp_path: Path) -> None:
    token = appliance.add_host("web01")
    env = appliance.env(token, tmp_path / "state")
    bad = tmp_path / "bad-token"
    bad.write_text("rdr_0_bad\n")
    rc, _, err = await run(agent_cmd() + ["snapshots", "--token-file", str(bad)], env)
    assert "401" in one_line_error(rc, err)
    # A token in argv is refused (every user of the host reads argv): one line, exit 1.
    rc, _, err = await run(agent_cmd() + ["snapshots", "--token", "rdr_0_bad"], env)
    assert "--token-file" in one_line_error(rc, err)
    wrong_fp = ":".join(["AB"] * 32)
    rc, _, err = await run(agent_cmd() + ["snapshots", "--fingerprint", wrong_fp], env)
    assert "TLS" in one_line_error(rc, err)
    rc, _, err = await run(agent_cmd() + ["backup", str(tmp_path / "missing")], env)
    assert "does not exist" in one_line_error(rc, err)
    rc, _, err = await run(agent_cmd() + ["restore", "2020-01-01T00-00-00Z", "--to",
                                          str(tmp_path / "o")], env)
    assert "404" in one_line_error(rc, err)
    bare = {k: v for k, v in env.items() if not k.startswith("RDR_")}
    bare["HOME"] = str(tmp_path)
    rc, _, err = await run(agent_cmd() + ["snapshots"], bare)
    assert "URL" in one_line_error(rc, err)


async def test_progress_bar_on_a_terminal(appliance: Appliance, tmp_path: Path) -> None:
    """On a terminal the agent draws a bar on stderr; it still ends with the summary."""
    import pty

    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(64 * 1024 * 1024))
    token = appliance.add_host("web01")
    env = appliance.env(token, tmp_path / "state")
    master, slave = pty.openpty()
    proc = await asyncio.create_subprocess_exec(*agent_cmd(), "backup", str(src), env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=slave)
    os.close(slave)

    def drain() -> bytes:
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO once the agent has exited and closed its side
                return b"".join(chunks)
            if not data:
                return b"".join(chunks)
            chunks.append(data)

    reader = asyncio.get_running_loop().run_in_executor(None, drain)
    out, _ = await proc.communicate()
    screen = await reader
    os.close(master)
    assert proc.returncode == 0
    assert b"backup" in screen and b"%" in screen
    assert "committed" in out.decode()


async def test_agent_reads_its_config_file(appliance: Appliance, tmp_path: Path) -> None:
    token = appliance.add_host("web01")
    conf = tmp_path / "agent.toml"
    conf.write_text(f'url = "{appliance.url}"\ntoken = "{token}"\n'
                    f'fingerprint = "{appliance.fingerprint}"\n'
                    f'state_dir = "{tmp_path / "state"}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("RDR_")}
    rc, out, err = await run(agent_cmd() + ["snapshots", "--config", str(conf)], env)
    assert rc == 0, err
    env["RDR_AGENT_CONFIG"] = str(conf)
    rc, out, err = await run(agent_cmd() + ["snapshots", "--json"], env)
    assert rc == 0 and out.strip() == "[]", err
    conf.write_text('url = "https://x"\ntokn = "typo"\n')
    rc, _, err = await run(agent_cmd() + ["snapshots"], env)
    assert "tokn" in one_line_error(rc, err)


async def rdr_in(cwd: Path, *args: str, env: dict[str, str] | None = None,
                 as_user: bool = False) -> tuple[int, str, str]:
    """`rdr ARGS` run from CWD; AS_USER runs it as an unprivileged user (nobody when the
    tests run as root), so the embedded default points at a per-user store under the test's
    HOME and never at /var/lib/rdr, where a real appliance may be running."""
    prefix = (["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
              if as_user and os.geteuid() == 0 else [])
    proc = await asyncio.create_subprocess_exec(
        *prefix, *rdr_cmd(), *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def user_dir() -> Iterator[Path]:
    """A directory the unprivileged user of `rdr_in` can reach (pytest's own tmp_path is
    root's, 0700, when the tests run as root)."""
    d = Path(tempfile.mkdtemp(prefix="rdr-cli-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def user_home(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A HOME the unprivileged user of `rdr_in` may write, and the environment pointing at
    it (no RDR_CONFIG, no XDG_STATE_HOME: the embedded default's own rule)."""
    home = tmp_path / "home"
    home.mkdir()
    if os.geteuid() == 0:
        os.chown(home, 65534, 65534)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RDR_CONFIG", "XDG_STATE_HOME")}
    env["HOME"] = str(home)
    return home, env


def nothing_created(*dirs: Path) -> None:
    for d in dirs:
        assert not any(d.iterdir()), list(d.iterdir())


async def test_embedded_default_store_found_from_any_directory(user_dir: Path) -> None:
    """The embedded default's store is one absolute place (the per-user XDG state directory
    when not root): created by `rdr init`, found by every command wherever it runs."""
    tmp_path = user_dir
    home, env = user_home(tmp_path)
    here, there = tmp_path / "here", tmp_path / "there"
    for d in (here, there):
        d.mkdir()
        d.chmod(0o777)
    store = home / ".local" / "state" / "rdr"
    # A missing store: one line naming where rdr looked, not suggesting 'hosts add'; nothing
    # made in the working directory or at the store's place.
    for args in (["hosts", "add", "web02"], ["snapshots"], ["status"], ["prune"], ["gc"],
                 ["admin", "list"], ["tokens", "add", "x"], ["store", "rebuild-index"]):
        rc, _, err = await rdr_in(there, *args, env=env, as_user=True)
        line = one_line_error(rc, err)
        assert rc == 1 and f"no appliance store at {store} " in line, line
        assert "embedded default" in line and "hosts add" not in line, line
        assert not store.exists() and not (home / ".local").exists()
        nothing_created(there)
    rc, out, err = await rdr_in(here, "init", env=env, as_user=True)
    assert rc == 0 and out.strip() == f"appliance store created at {store}", err
    assert (store / "index.sqlite").exists()
    nothing_created(here)
    rc, out, err = await rdr_in(there, "hosts", "add", "web02", env=env, as_user=True)
    assert rc == 0, err
    rc, out, err = await rdr_in(tmp_path, "hosts", "list", env=env, as_user=True)
    assert rc == 0 and "web02" in out, err
    nothing_created(there)
    rc, out, err = await rdr_in(there, "init", env=env, as_user=True)
    assert rc == 0 and out.strip() == f"appliance store already at {store}", err


async def test_missing_store_from_a_config_is_an_error_that_creates_nothing(
        tmp_path: Path) -> None:
    cfg = tmp_path / "a.toml"
    cfg.write_text("[store]\npath = 'data'\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, RDR_CONFIG=str(cfg))
    for args, via in ((["hosts", "add", "web02", "--config", str(cfg)], "--config"),
                      (["snapshots"], "$RDR_CONFIG")):
        rc, _, err = await rdr_in(elsewhere, *args, env=env)
        line = one_line_error(rc, err)
        assert line == (f"rdr: error: no appliance store at {tmp_path / 'data'} (store.path "
                        f"of {cfg} ({via})); pass the appliance's --config, or create a "
                        "store with 'rdr init' or 'rdr serve'"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.toml", "elsewhere"]
    nothing_created(elsewhere)


async def test_serve_creates_the_store_every_command_finds(tmp_path: Path) -> None:
    """`rdr serve` makes its store; admin commands from another directory (the config given
    by $RDR_CONFIG) use that store: the token they print is one the running daemon knows."""
    port = free_port()
    cfg = tmp_path / "a.toml"
    cfg.write_text(f"[server]\nlisten = '127.0.0.1:{port}'\n[store]\npath = 'data'\n"
                   "[health]\nwatch_disks = false\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = await start_serve(cfg, port)
    try:
        assert (tmp_path / "data" / "index.sqlite").exists()
        env = dict(os.environ, RDR_CONFIG=str(cfg))
        rc, out, err = await rdr_in(elsewhere, "hosts", "add", "web02", env=env)
        assert rc == 0, err
        token = out.strip().splitlines()[-1]
        from appliance.api.tls import fingerprint

        fp = fingerprint(tmp_path / "data" / "tls" / "cert.pem")
        async with ApplianceClient(Endpoint(f"https://127.0.0.1:{port}", token, fp)) as c:
            assert (await c.open_session())["session"]
        rc, out, err = await rdr_in(elsewhere, "status", env=env)
        assert rc == 0 and f"data in {tmp_path / 'data'}" in out, err
        nothing_created(elsewhere)
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.communicate()
