"""The two commands as an admin and a host's owner use them: one-line errors, clean stops."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import urllib.request
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
