"""A live appliance for black-box tests: `rdr serve` as a subprocess (TLS on loopback, a port
from the kernel) with two hosts, a committed backup, an admin account and an admin API token,
driven with plain synchronous HTTP (requests) as an outside client would.

Why a subprocess rather than the in-process fixture: schemathesis and the log scan need the
daemon exactly as it runs on the appliance (its own process, its own log file), and sync
clients cannot share a thread with the daemon's event loop.
"""

from __future__ import annotations

import json
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import requests
import urllib3

from benchmarks.tools import Appliance

from .treeutil import make_tree

PASSWORD = "fuzz-and-load horse battery"


@dataclass
class Live:
    app: Appliance
    tokens: list[str] = field(repr=False)  # host tokens: bench00, bench01
    admin_token: str = field(repr=False)
    snapshot: str = ""  # bench00's committed snapshot
    chunks: list[str] = field(default_factory=list)  # chunk ids of that snapshot
    src: Path = Path()
    secrets: list[str] = field(default_factory=list, repr=False)  # what must never reach a log

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.app.port}"

    def rdr(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([self.app.cmd("rdr"), *args, "--config", str(self.app.cfg)],
                              input=stdin, capture_output=True, text=True, timeout=120,
                              env=self.app.agent_env(0), check=True)

    def http(self, token: str | None = None) -> requests.Session:
        s = requests.Session()
        s.verify = False  # the self-signed certificate of our own daemon on loopback
        s.trust_env = False  # a CA bundle from the environment would override verify
        if token:
            s.headers["Authorization"] = f"Bearer {token}"
        return s

    def login(self) -> tuple[requests.Session, str]:
        """A signed-in page session and its CSRF token."""
        s = self.http()
        r = s.post(self.base + "/api/v1/auth/login", json={"name": "alice",
                                                             "password": PASSWORD}, timeout=30)
        r.raise_for_status()
        return s, r.json()["csrf"]

    def log_text(self) -> str:
        """The daemon's log, with those of its earlier runs (a test may restart it)."""
        return "".join(p.read_text(errors="replace")
                       for p in sorted(self.app.work.glob("daemon*.log")))


def start_live(work: Path, daemon_config: str = "enabled = false\n",
               server_config: str = "", extra_config: str = "") -> Live:
    """Start the daemon (replication section `daemon_config`, more [server] lines
    `server_config`, further sections `extra_config`) and give it something to serve: two
    hosts, one backup of a small tree by the first, an account, an admin token."""
    warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
    app = Appliance(work / "appliance", hosts=2, replication=daemon_config,
                    server_toml=server_config, extra_config=extra_config)
    app.prepare()
    try:
        live = Live(app, list(app.tokens), "", src=make_tree(work / "src", big_mb=1))
        live.rdr("admin", "add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        live.admin_token = live.rdr("tokens", "add", "prober", "--scope",
                                   "admin").stdout.strip().splitlines()[-1]
        out = subprocess.run([app.cmd("rdr-agent"), "backup", str(live.src), "--json"],
                             env=app.agent_env(0), capture_output=True, text=True,
                             timeout=300, check=True).stdout
        live.snapshot = json.loads(out)["snapshot"]
        r = live.http(live.tokens[0]).get(f"{live.base}/api/v1/snapshots/{live.snapshot}",
                                          timeout=30)
        r.raise_for_status()
        manifest = r.json()["manifest"]
        live.chunks = [c for c, _ in manifest["catalog"]["chunks"]]
        live.secrets = [*live.tokens, live.admin_token, PASSWORD]
        return live
    except BaseException:
        app.close()
        raise
