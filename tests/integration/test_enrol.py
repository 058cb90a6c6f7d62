"""Enrolment over real TLS on loopback (issue 27): the command `rdr hosts add` prints fetches
the installer from the appliance with the certificate's key pinned, installs the agent from a
wheelhouse built here (for Debian 11's Python 3.9 when pyenv has it, else this Python) into a
fresh venv, exchanges the code for the host's token (written 0600, never printed or logged),
and the first poll shows the host enrolled and online with its report. A second run of the
same command fails cleanly on the used code; a wrong pin fails before anything runs; failed
codes are throttled per address.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from benchmarks.tools import Appliance, clean_env

PY39 = Path("/root/.pyenv/versions/3.9.18/bin/python3.9")


def _python() -> tuple[str, str]:
    """(interpreter, "X.Y") the host side runs: 3.9 (the oldest supported) if present."""
    if PY39.exists():
        return str(PY39), "3.9"
    return sys.executable, f"{sys.version_info[0]}.{sys.version_info[1]}"


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from image.wheelhouse import collect

    if not shutil.which("curl") or not shutil.which("sha256sum"):
        pytest.skip("curl and sha256sum are needed on the host side")
    _, version = _python()
    return collect(tmp_path_factory.mktemp("wh") / "wheelhouse", (version,),
                   (platform.machine(),))


@pytest.fixture
def appliance(wheelhouse: Path, tmp_path: Path):
    app = Appliance(tmp_path / "appliance", hosts=0,
                    extra_config=f'[enrol]\nwheelhouse = "{wheelhouse}"\n')
    app.prepare()
    yield app
    app.close()


def _rdr(app: Appliance, *args: str) -> subprocess.CompletedProcess:
    return _run([app.cmd("rdr"), *args, "--config", str(app.cfg)],
                env=clean_env(("RDR_",)))


def _host_env(tmp_path: Path) -> dict[str, str]:
    env = clean_env(("RDR_",))
    py, _ = _python()
    env.update(RDR_PREFIX=str(tmp_path / "opt-rdr-agent"),
               RDR_AGENT_CONFIG=str(tmp_path / "etc" / "agent.toml"),
               RDR_UNIT_DIR=str(tmp_path / "units"), RDR_PYTHON=py,
               RDR_INSTALL_AS_USER="yes", RDR_STATE_DIR=str(tmp_path / "state"))
    return env


def _command(out: str) -> str:
    """The line to paste, as printed, without sudo (the test is its own root)."""
    (line,) = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("sudo sh")]
    return line.removeprefix("sudo ")


def test_enrol_from_the_appliance_alone(appliance: Appliance, tmp_path: Path) -> None:
    res = _rdr(appliance, "hosts", "add", "web01")
    assert res.returncode == 0, res.stderr
    command = _command(res.stdout)
    code = re.search(r"'(rdre_[^']+)'", command).group(1)
    assert "--pinnedpubkey 'sha256//" in command
    env = _host_env(tmp_path)
    install = _run(["sh", "-c", command], env=env)
    assert install.returncode == 0, install.stdout + install.stderr
    assert "files verified (SHA-256)" in install.stdout
    assert "enrolled as host web01" in install.stdout
    cfg = Path(env["RDR_AGENT_CONFIG"])
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    token = re.search(r'token = "(rdr_[^"]+)"', cfg.read_text()).group(1)
    unit = (tmp_path / "units" / "rdr-agent.service").read_text()
    assert f"ExecStart={env['RDR_PREFIX']}/bin/rdr-agent run --config {cfg}" in unit
    agent = Path(env["RDR_PREFIX"]) / "bin" / "rdr-agent"
    py = _run([str(Path(env["RDR_PREFIX"]) / "bin" / "python"), "-c",
               "import sys; print('%d.%d' % sys.version_info[:2])"])
    assert py.stdout.strip() == _python()[1]

    # enrolled, then online the moment the agent first polls; its report is there
    before = json.loads(_rdr(appliance, "hosts", "report", "--json").stdout)["hosts"][0]
    assert before["enrolled"] and not before["online"]
    assert before["report"]["kernel"] == platform.release()
    poll = _run([str(agent), "run", "--once", "--wait", "0", "--config", str(cfg)], env=env)
    assert poll.returncode == 4, poll.stderr  # no job came: the poll itself is the point
    after = json.loads(_rdr(appliance, "hosts", "report", "--json").stdout)["hosts"][0]
    assert after["enrolled"] and after["online"] and after["agent_version"]

    # the installed agent backs up; the report it sends carries the plan's size
    src = tmp_path / "src"
    src.mkdir()
    (src / "app.sqlite").write_bytes(b"SQLite format 3\x00" + b"\0" * 4080)
    backup = _run([str(agent), "backup", str(src), "--config", str(cfg), "--json"], env=env)
    assert backup.returncode == 0, backup.stderr
    restored = tmp_path / "restored"
    restore = _run([str(agent), "restore", "latest", "--to", str(restored), "--config",
                    str(cfg)], env=env)
    assert restore.returncode == 0, restore.stderr
    assert (restored / str(src).lstrip("/") / "app.sqlite").read_bytes() == \
        (src / "app.sqlite").read_bytes()
    assert _rdr(appliance, "hosts", "set", "web01", "--paths", str(src)).returncode == 0
    sent = _run([str(agent), "report", "--config", str(cfg)], env=env)
    assert sent.returncode == 0, sent.stderr
    csv_out = _rdr(appliance, "hosts", "report", "--csv").stdout
    header, row = csv_out.splitlines()[:2]
    assert header.startswith("host,enrolled,online") and row.startswith("web01,")
    assert "sqlite (file header: " in row and ",4096," in row

    # the console's table and RTO (no restore measured yet: no estimate, not flagged)
    table = _rdr(appliance, "hosts", "report").stdout.splitlines()
    assert table[0].split()[:3] == ["HOST", "ENROLLED", "ONLINE"]
    assert table[1].startswith("web01") and " yes " in table[1]
    rto = _rdr(appliance, "hosts", "rto", "web01", "4h")
    assert rto.stdout.strip() == ("host web01: RTO 4.0 h; no restore measured yet, so no "
                                  "estimate")
    bad = _rdr(appliance, "hosts", "rto", "web01", "soon")
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1
    assert "invalid RTO 'soon'" in bad.stderr

    # the same command again: the used code fails cleanly, nothing changes
    before_cfg = cfg.read_bytes()
    again = _run(["sh", "-c", command], env=env)
    assert again.returncode != 0
    assert "already used" in again.stderr and "Traceback" not in again.stderr
    assert cfg.read_bytes() == before_cfg

    # neither the token nor the code is in any output or the daemon's log
    log = (appliance.work / "daemon.log").read_text(errors="replace")
    for text in (install.stdout, install.stderr, again.stdout, again.stderr, log,
                 poll.stderr, sent.stdout, sent.stderr):
        assert token not in text and token.split("_", 2)[2] not in text
    assert code not in log
    assert "host web01 enrolled from 127.0.0.1" in log

    # re-enrolling rotates the token
    new = _rdr(appliance, "hosts", "enrol", "web01")
    assert new.returncode == 0, new.stderr
    assert _run(["sh", "-c", _command(new.stdout)], env=env).returncode == 0
    token2 = re.search(r'token = "(rdr_[^"]+)"', cfg.read_text()).group(1)
    assert token2 != token
    old_token = tmp_path / "old-token"
    old_token.write_text(token + "\n")
    old = _run([str(agent), "plan", "--token-file", str(old_token), "--config", str(cfg)],
               env=env)
    assert old.returncode != 0 and "401" in old.stderr

    # an upgrade: the same line with --upgrade instead of a code keeps the enrolment
    enrolled_cfg = cfg.read_bytes()
    upgrade = _run(["sh", "-c", re.sub(r"'rdre_[^']+'$", "--upgrade", command)], env=env)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert "installed in" in upgrade.stdout and cfg.read_bytes() == enrolled_cfg


def test_a_wrong_pin_fails_before_anything_runs(appliance: Appliance, tmp_path: Path) -> None:
    res = _rdr(appliance, "hosts", "add", "web02")
    command = _command(res.stdout)
    wrong = re.sub(r"sha256//[A-Za-z0-9+/=]+", "sha256//" + "A" * 43 + "=", command)
    env = _host_env(tmp_path)
    out = _run(["sh", "-c", wrong], env=env)
    assert out.returncode == 1 and "public key does not match" in out.stderr
    assert not Path(env["RDR_PREFIX"]).exists() and not Path(env["RDR_AGENT_CONFIG"]).exists()
    # the code was not spent: the right command still works
    assert _run(["sh", "-c", command], env=env).returncode == 0


def test_failed_codes_are_throttled_per_address(appliance: Appliance) -> None:
    ctx = ssl._create_unverified_context()  # a bad code needs no trust: nothing is sent back
    url = f"https://127.0.0.1:{appliance.port}/api/v1/enrol/exchange"
    statuses = []
    for i in range(12):
        body = json.dumps({"code": f"rdre_{i:016x}_{'x' * 32}"}).encode()
        req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, context=ctx, timeout=30)
            statuses.append(200)
        except urllib.error.HTTPError as exc:
            statuses.append(exc.code)
            err = json.loads(exc.read())
            assert set(err) >= {"error", "message"}
    assert statuses[:10] == [401] * 10 and statuses[-1] == 429, statuses


PY38 = Path("/root/.pyenv/versions/3.8.18/bin/python3.8")


@pytest.mark.skipif(not PY38.exists(), reason="needs a Python 3.8 (pyenv) to refuse")
def test_a_too_old_python_is_refused(appliance: Appliance, tmp_path: Path) -> None:
    command = _command(_rdr(appliance, "hosts", "add", "old01").stdout)
    out = _run(["sh", "-c", command], env={**_host_env(tmp_path), "RDR_PYTHON": str(PY38)})
    assert out.returncode == 1
    assert "Python 3.8 is too old: the agent needs 3.9 or later" in out.stderr


def test_page_routes_add_a_host_report_and_rto(appliance: Appliance) -> None:
    """The page's routes with admin API tokens: `admin` adds a host (201 with the code and the
    line), `read` reads the report and the export but may not add; a host token gets 403."""
    import requests

    admin = _rdr(appliance, "tokens", "add", "tool", "--scope", "admin").stdout.split()[-1]
    reader = _rdr(appliance, "tokens", "add", "viewer", "--scope", "read").stdout.split()[-1]
    base = f"https://127.0.0.1:{appliance.port}/api/v1"

    def call(method: str, path: str, token: str, **kw) -> requests.Response:
        return requests.request(method, base + path, verify=False, timeout=30,
                                headers={"Authorization": f"Bearer {token}"}, **kw)

    r = call("POST", "/hosts", admin, json={"name": "nas01"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["host"] == "nas01" and body["code"].startswith("rdre_")
    assert body["command"].startswith("sudo sh -c") and body["code"] in body["command"]
    assert call("POST", "/hosts", admin, json={"name": "nas01"}).status_code == 409
    assert call("POST", "/hosts", reader, json={"name": "x1"}).status_code == 403
    # a PC: billed as one, with the 30-0-0 retention PCs are sold with; a bad kind adds nothing
    assert call("POST", "/hosts", admin, json={"name": "pc7", "kind": "pc"}).status_code == 201
    plan = call("GET", "/hosts/pc7/plan", admin).json()
    assert (plan["kind"], plan["policy"]) == ("pc", "30-0-0")
    bad_kind = call("POST", "/hosts", admin, json={"name": "x2", "kind": "laptop"})
    assert bad_kind.status_code == 400 and "'kind'" in bad_kind.json()["message"]
    assert call("GET", "/hosts/x2/plan", admin).status_code == 404
    status = call("GET", "/hosts/nas01/enrolment", reader).json()
    assert not status["enrolled"] and status["code_pending"]["expires_at"] > time.time()
    r = call("PUT", "/hosts/nas01/rto", admin, json={"rto": "4h"})
    assert r.status_code == 200 and r.json()["rto_seconds"] == 14400
    bad = call("PUT", "/hosts/nas01/rto", admin, json={"rto": "soon"})
    assert bad.status_code == 400 and bad.json()["error"] == "bad_rto"
    assert call("GET", "/hosts/nobody/enrolment", reader).status_code == 404
    csv_text = call("GET", "/hosts-report?format=csv", reader).text
    assert csv_text.splitlines()[1].startswith("nas01,,no,")
    assert call("GET", "/hosts-report?format=xml", reader).status_code == 400
    # the host's own token may not use the page's routes
    host_token = call("POST", "/enrol/exchange", "", json={"code": body["code"]}).json()
    assert host_token["host"] == "nas01"
    assert call("GET", "/hosts-report", host_token["token"]).status_code == 403
    assert call("PUT", "/agent/report", host_token["token"],
                json={"kernel": "6.1"}).status_code == 204
    again = call("POST", "/enrol/exchange", "", json={"code": body["code"]})
    assert again.status_code == 410 and again.json()["error"] == "code_used"
