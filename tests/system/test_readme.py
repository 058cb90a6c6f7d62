"""The README, run as a newcomer runs it (issue 22, "Show"): its shell code blocks, in order,
as printed, in a fresh directory, the database dump included -- then nothing the newcomer
backed up may have been pruned: every backup source still has its newest snapshot after the
README's `rdr prune && rdr gc`.

The commands are read from README.md, not copied here. What is substituted, and why (each
rule below names the README text it applies to; nothing else is changed):

- Where the README runs as root on a fresh Debian machine, this test runs as root in private
  mount and network namespaces: a loopback of its own (so port 8443 is free and nothing
  outside is reached), empty tmpfs on /var/lib (the embedded default store /var/lib/rdr),
  /tmp and /srv, so the README's own paths (/tmp/restore, /srv/restore) are used as printed
  and nothing of this machine is touched, and a fresh HOME (root's holds this machine's
  Python). /etc and /home are this machine's, read only, as the README backs them up.
- The install (`apt-get ... && python3 -m venv .venv && .venv/bin/pip install .`) is the venv
  running the tests, linked as the fresh directory's `.venv`: it is this checkout installed,
  and installing again needs the network and minutes (tests/integration/test_agent_dist.py
  installs the agent's distribution for real).
- `rdr serve` "stays in the foreground, so use a second terminal": it runs in the background.
- `bash .ci/run` runs the whole test suite, this test included: skipped.
- `<token>` and `<fingerprint from the log>`: what `rdr hosts add` printed and what the
  daemon logged, as the README says.
- `systemctl enable --now rdr-agent` (no systemd here): what its unit runs (read from
  systemd/rdr-agent.service, as the README names it), with the config file the README
  describes ("holds url, token and fingerprint") written to the fresh directory instead of
  /etc/rdr-agent/.
- The example snapshot id (`2026-11-03T22-15-07Z`): the host's first snapshot.
- `pg_dump mydb`: PostgreSQL's client is installed here but no server runs, so a tiny
  stand-in `pg_dump` first on PATH prints a small dump (it stands for the database, not for
  the README's command, which runs as printed).
- `rdr admin add alice` "asks for the password twice": it runs on a terminal (a pty) and
  the test types the password at each prompt.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: The venv running these tests (`.ci/run`'s `.ci/venv`, or a developer's `.venv`): this checkout
#: installed, with its `rdr` and `rdr-agent`.
VENV = Path(sys.prefix)
WORK = "/mnt/readme"  # the fresh directory, inside the namespaces
PASSWORD = "a newcomer's long password 1"
DUMP = ("-- PostgreSQL database dump (a stand-in)\nCREATE TABLE t (x int);\n"
        "COPY t FROM stdin;\n1\n\\.\n")
SNAPSHOT_ID = re.compile(r"\b\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ\b")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0,
                       reason="needs root (namespaces; the README runs as root)"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("unshare", "nsenter", "ip")),
                       reason="needs unshare, nsenter and ip"),
    pytest.mark.skipif(not (VENV / "bin" / "rdr").exists(),
                       reason="needs a venv with this checkout installed (its rdr)"),
]


def readme_commands(text: str) -> list[str]:
    """The shell commands of the README's ```sh blocks, in order: continuation lines joined,
    blank and comment-only lines dropped."""
    out: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M):
        line = ""
        for raw in block.splitlines():
            if raw.rstrip().endswith("\\"):
                line += raw.rstrip()[:-1] + " "
                continue
            line += raw
            if line.strip() and not line.lstrip().startswith("#"):
                out.append(line.strip())
            line = ""
    return out


@dataclass
class Step:
    line: str  # as printed in the README
    ran: str | None  # what ran (None: skipped)
    rc: int = 0
    out: str = ""
    err: str = ""


@dataclass
class Newcomer:
    """A root shell in the namespaces: commands run in the fresh directory with the
    environment the README's `export` lines build."""

    holder: subprocess.Popen
    host_dir: Path  # the fresh directory, as this process sees it
    env: dict[str, str]
    background: list[subprocess.Popen] = field(default_factory=list)

    def argv(self, line: str) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--", "bash", "-c",
                f"cd {WORK} && {line}"]

    def run(self, line: str, timeout: float = 300) -> tuple[int, str, str]:
        p = subprocess.run(self.argv(line), env=self.env, capture_output=True, text=True,
                           timeout=timeout, check=False)
        return p.returncode, p.stdout, p.stderr

    def start(self, line: str, log: str) -> subprocess.Popen:
        with open(self.host_dir / log, "wb") as f:
            p = subprocess.Popen(self.argv(f"exec {line}"), env=self.env, stdout=f,
                                 stderr=subprocess.STDOUT)
        self.background.append(p)
        return p

    def on_terminal(self, line: str, answers: list[tuple[str, str]],
                    timeout: float = 60) -> tuple[int, str]:
        """Run `line` on a pty, typing each answer when its prompt appears."""
        master, slave = pty.openpty()
        p = subprocess.Popen(self.argv(line), env=self.env, stdin=slave, stdout=slave,
                             stderr=slave, start_new_session=True)
        os.close(slave)
        seen, pending = b"", list(answers)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.2)
                if ready:
                    try:
                        chunk = os.read(master, 4096)
                    except OSError:
                        break  # the other side closed
                    if not chunk:
                        break
                    seen += chunk
                    if pending and pending[0][0].encode() in seen.split(b"\n")[-1]:
                        os.write(master, pending.pop(0)[1].encode() + b"\n")
                elif p.poll() is not None:
                    break
            return p.wait(timeout=10), seen.decode(errors="replace")
        finally:
            os.close(master)
            if p.poll() is None:
                p.kill()


@pytest.fixture
def newcomer(tmp_path: Path) -> Iterator[Newcomer]:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".venv").symlink_to(VENV)
    standin = tmp_path / "standin"
    standin.mkdir()
    (standin / "pg_dump").write_text(f"#!/bin/sh\ncat <<'EOF'\n{DUMP}EOF\n")
    (standin / "pg_dump").chmod(0o755)
    holder = subprocess.Popen(["unshare", "--mount", "--net", "--propagation", "private",
                               "sleep", "infinity"])
    try:
        time.sleep(0.2)
        setup = (f"ip link set lo up && mount -t tmpfs none /mnt && mkdir {WORK} && "
                 f"mount --bind {fresh} {WORK} && mkdir /mnt/standin && "
                 f"mount --bind {standin} /mnt/standin && "
                 "mkdir /mnt/home && for d in /tmp /srv /var/lib; do mount -t tmpfs none $d; done")
        subprocess.run(["nsenter", "-t", str(holder.pid), "-m", "-n", "--", "sh", "-c", setup],
                       check=True)
        env = {"PATH": "/mnt/standin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": "/mnt/home", "LANG": "C.UTF-8", "TERM": "dumb"}
        nc = Newcomer(holder, fresh, env)
        yield nc
    finally:
        for p in locals().get("nc", Newcomer(holder, fresh, {})).background:
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        holder.kill()
        holder.wait()


def _wait_for(path: Path, pattern: str, timeout: float = 60) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, path.read_text(errors="replace")) if path.exists() else None
        if m:
            return m
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not in {path}: {path.read_text(errors='replace')}")


def _snapshots(nc: Newcomer) -> list[dict]:
    rc, out, err = nc.run(".venv/bin/rdr snapshots web01 --json")
    assert rc == 0, err
    data = json.loads(out)
    return data["snapshots"] if isinstance(data, dict) else data


def _wait_runs_done(nc: Newcomer, timeout: float = 240) -> None:
    """The agent service takes the queued "back up now" run; a newcomer waits for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc, out, err = nc.run(".venv/bin/rdr hosts show web01 --json")
        assert rc == 0, err
        runs = json.loads(out)["runs"]
        if runs and all(r["state"] not in ("queued", "running") for r in runs):
            return
        time.sleep(1)
    raise AssertionError(f"the backup run did not end: {out}")


def test_the_readme_runs_in_order_and_prunes_nothing_backed_up(newcomer: Newcomer) -> None:
    nc = newcomer
    lines = readme_commands((ROOT / "README.md").read_text())
    assert any("pg_dump" in x for x in lines), "the README's dump example is gone"
    assert any(re.search(r"rdr prune\b(?! --dry-run)", x) for x in lines), \
        "the README applies no prune"
    token = fingerprint = None
    steps: list[Step] = []
    seen: dict[str, dict] = {}  # every snapshot ever listed, by id

    for line in lines:
        ran = line
        if "pip install ." in line and "rdr serve" in line:
            # the install is the checkout's venv; the daemon runs in "a second terminal"
            ran = line.split("&&")[-1].strip()
            assert ran.endswith("rdr serve"), line
            nc.start(ran, "serve.log")
            m = _wait_for(nc.host_dir / "serve.log",
                          r"fingerprint: ([0-9A-F:]{95})[\s\S]*serving on https://127\.0\.0\.1:8443")
            fingerprint = m[1]
            steps.append(Step(line, ran))
            continue
        if line.startswith("bash .ci/run"):
            steps.append(Step(line, None))
            continue
        if line.startswith("systemctl enable --now rdr-agent"):
            unit = (ROOT / "systemd" / "rdr-agent.service").read_text()
            exec_start = shlex.split(re.search(r"^ExecStart=(.*)$", unit, re.M)[1])
            assert Path(exec_start[0]).name == "rdr-agent" and exec_start[1] == "run"
            conf = nc.host_dir / "agent.toml"
            conf.write_text(f'url = "{nc.env["RDR_URL"]}"\ntoken = "{token}"\n'
                            f'fingerprint = "{fingerprint}"\n')
            conf.chmod(0o600)
            args = [a if not a.endswith("agent.toml") else f"{WORK}/agent.toml"
                    for a in exec_start[1:]]
            ran = shlex.join([".venv/bin/rdr-agent", *args])
            nc.start(ran, "agent.log")
            _wait_runs_done(nc)
            steps.append(Step(line, ran))
            continue
        if "<token>" in line or "<fingerprint" in line:
            assert token and fingerprint, "the README uses the token before printing it"
            ran = line.replace("<token>", token).replace("<fingerprint from the log>",
                                                         fingerprint)
        if SNAPSHOT_ID.search(ran):
            first = min(seen.values(), key=lambda s: s["received_at"])
            ran = SNAPSHOT_ID.sub(first["snapshot"], ran)
        if ran.startswith("export "):
            for word in shlex.split(ran.split("#")[0])[1:]:
                k, _, v = word.partition("=")
                nc.env[k] = v
            steps.append(Step(line, ran))
            continue
        if "asks for the password" in line:
            rc, out = nc.on_terminal(ran, [("password", PASSWORD), ("again", PASSWORD)])
            step = Step(line, ran, rc, out)
        else:
            rc, out, err = nc.run(ran)
            step = Step(line, ran, rc, out, err)
        steps.append(step)
        assert step.rc == 0, f"README line failed (exit {step.rc}): {line}\n" \
                             f"ran: {ran}\n{step.out}\n{step.err}"
        if re.search(r"rdr hosts add web01\b", ran):
            token = out.strip().splitlines()[-1]
        if fingerprint and token:
            for s in _snapshots(nc):
                seen[s["snapshot"]] = s

    # --- what the newcomer saw along the way ---------------------------------------------
    restored = next(s for s in steps if "restore latest /etc/hosts" in s.line)
    assert "using snapshot" in restored.err  # it says which snapshot "latest" was
    # before the agent service ran, the host's backups came from its command line
    show = next(s for s in steps if re.search(r"rdr hosts show web01\b", s.line))
    assert "agent: used from the command line only" in show.out, show.out
    status = next(s for s in steps if re.search(r"rdr status\b", s.line))
    assert "last result" in status.out and "agent service online" in status.out, status.out
    pruned = [s for s in steps if re.search(r"rdr prune\b(?! --dry-run)", s.line)]
    assert pruned and pruned[0].rc == 0 and pruned[0].ran

    # --- nothing a user backed up was pruned ---------------------------------------------
    final = {s["snapshot"]: s for s in _snapshots(nc)}
    newest: dict[str, dict] = {}
    for s in sorted(seen.values(), key=lambda s: s["received_at"]):
        newest[s["source"]] = s
    assert "stdin:db.sql" in newest, sorted(newest)
    assert len(newest) >= 3, sorted(newest)  # /etc /home, the dump, the plan's /etc /home /srv
    for source, snap in newest.items():
        assert snap["snapshot"] in final, f"source {source!r} lost its newest snapshot"
    # ... and the dump reads back as it was sent, after prune and gc
    rc, out, err = nc.run(".venv/bin/rdr-agent restore latest --source stdin:db.sql "
                          "--to /tmp/dump-check")
    assert rc == 0, err
    rc, out, err = nc.run("cat /tmp/dump-check/db.sql")
    assert rc == 0 and out == DUMP, (out, err)
