"""What a scenario needs from a rig: the appliance's hosts, its admin commands, its page API
and metrics, and the faults. The virtual rig (hil/virtual.py) and a real unit over SSH
(hil/ssh.py) implement the same interface, so the same scenarios run on both.
"""

from __future__ import annotations

import abc
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hil import netns

BIN = Path(sys.executable).parent


class RigError(RuntimeError):
    """The rig could not do what a scenario asked (setup, a fault, a command)."""


@dataclass
class Host:
    """A LAN host with an agent: its name on the appliance and the tree it backs up."""

    name: str
    source: Path
    state: Path


@dataclass
class DcAccess:
    """How the data center's own tools reach a unit's replicas: ``rdr dc snapshots`` and
    ``rdr dc restore`` run on this machine with CONFIG alone (the bucket at the S3 endpoint,
    the credentials, the unit's data key as escrow gives it back: hil.datacenter.write_access)
    -- in network namespace NETNS when the endpoint answers only there -- and restore to
    SCRATCH here. So what the harness restores from the data center proves the data center
    can restore without the unit."""

    config: Path
    scratch: Path
    netns: str = ""

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        cmd = [str(BIN / "rdr"), "dc", *args, "--config", str(self.config)]
        if self.netns:
            cmd = netns.exec_argv(self.netns, cmd)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              check=False)


class Faults(abc.ABC):
    """Fault injection: what happens to appliances on customer sites."""

    @abc.abstractmethod
    def power_cut(self) -> None:
        """Everything on the appliance stops at once (no shutdown, unflushed writes lost)."""

    @abc.abstractmethod
    def power_on(self, timeout: float = 120.0) -> float:
        """Boot after a power cut; returns the seconds until the daemon is ready."""

    @abc.abstractmethod
    def link_down(self, link: str) -> None:
        """Take LINK ("wan" or "lan") down."""

    @abc.abstractmethod
    def link_up(self, link: str) -> None:
        """Bring LINK back."""

    @abc.abstractmethod
    def fill_disk(self, leave_bytes: int) -> None:
        """Fill the data disk until only LEAVE_BYTES are free."""

    @abc.abstractmethod
    def free_disk(self) -> None:
        """Remove what fill_disk wrote."""

    @abc.abstractmethod
    def remove_disk(self) -> None:
        """The data disk dies under the running appliance and is removed."""

    @abc.abstractmethod
    def return_disk(self) -> None:
        """The data disk comes back."""

    @abc.abstractmethod
    def dc_down(self) -> None:
        """The data center's object store stops answering."""

    @abc.abstractmethod
    def dc_up(self) -> None:
        """The data center's object store is back."""

    @abc.abstractmethod
    def shape_wan(self, rtt_ms: float = 0.0, rate_kbit: int = 0) -> None:
        """Add RTT_MS of round-trip latency and cap the WAN at RATE_KBIT (0 = no cap)."""

    @abc.abstractmethod
    def rekey(self) -> None:
        """Rekey the tunnel's IKE and CHILD SAs now."""


class Rig(Faults):
    """An appliance with hosts and a data center behind a WAN, plus its faults."""

    hosts: list[Host]
    quick: bool
    #: The rig has the unit's data center (its S3 store behind the tunnel). Without it the
    #: scenarios leave replication out -- no replication step, no restores from the data
    #: center, no tunnel or pending-replication checks -- and say so in their notes; the
    #: scenarios that are about the WAN or the data center are skipped.
    has_dc: bool = True
    #: Whether the data center's bucket has Object Lock, so the appliance must report its
    #: off-site copy immutable (None: the rig does not know its data center's store).
    dc_object_lock: bool | None = None
    #: Where ``rdr dc snapshots|restore`` run: None, on the appliance with its config.
    dc_access: DcAccess | None = None

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    @abc.abstractmethod
    def agent(self, host: Host, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run ``rdr-agent ARGS`` as HOST."""

    @abc.abstractmethod
    def agent_popen(self, host: Host, *args: str) -> subprocess.Popen:
        """Start ``rdr-agent ARGS`` as HOST without waiting."""

    @abc.abstractmethod
    def admin(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run ``rdr ARGS --config <the unit's config>`` on the appliance."""

    @abc.abstractmethod
    def admin_popen(self, *args: str) -> subprocess.Popen:
        """Start ``rdr ARGS --config ...`` on the appliance without waiting."""

    @abc.abstractmethod
    def https_full(self, method: str, path: str, body: bytes = b"",
                   headers: dict[str, str] | None = None,
                   timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
        """One HTTPS request to the appliance's LAN API (pinned certificate): status,
        response headers, body."""

    def https(self, method: str, path: str, body: bytes = b"",
              headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, bytes]:
        """`https_full` for the scenarios that need only the status and the body."""
        status, _, payload = self.https_full(method, path, body, headers, timeout)
        return status, payload

    @abc.abstractmethod
    def tree_hashes(self, path: str) -> dict[str, str]:
        """{relative path: sha256} of every regular file under PATH on the appliance (where
        ``admin`` commands such as ``dc restore --to`` wrote), then PATH is removed."""

    @property
    @abc.abstractmethod
    def scratch(self) -> str:
        """A directory on the appliance for restores the harness reads back."""

    @property
    def agent_scratch(self) -> str:
        """Where the agents' restores go (on the machine the agents run on)."""
        return self.scratch

    def agent_tree_hashes(self, path: str) -> dict[str, str]:
        """tree_hashes of an agent's restore at PATH (then removed)."""
        return self.tree_hashes(path)

    def dc_tool(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """``rdr dc ARGS`` at the data center's side (DcAccess), or on the appliance."""
        if self.dc_access is None:
            return self.admin("dc", *args, timeout=timeout)
        return self.dc_access.run(*args, timeout=timeout)

    @property
    def dc_scratch(self) -> str:
        """Where ``rdr dc restore`` writes what the harness reads back."""
        if self.dc_access is None:
            return self.scratch
        self.dc_access.scratch.mkdir(parents=True, exist_ok=True)
        return str(self.dc_access.scratch)

    def dc_tree_hashes(self, path: str) -> dict[str, str]:
        """tree_hashes of a restore from the data center at PATH (then removed)."""
        if self.dc_access is None:
            return self.tree_hashes(path)
        from hil.verify import source_hashes  # (hil.verify imports this module)

        try:
            return source_hashes(Path(path))
        finally:
            shutil.rmtree(path, ignore_errors=True)

    @property
    @abc.abstractmethod
    def admin_password(self) -> str: ...

    @property
    @abc.abstractmethod
    def metrics_token(self) -> str: ...

    def admin_json(self, *args: str, timeout: float = 600) -> object:
        proc = self.admin(*args, "--json", timeout=timeout)
        if proc.returncode != 0:
            raise RigError(f"rdr {' '.join(args)} failed ({proc.returncode}): "
                           f"{proc.stderr.strip()[-500:]}")
        return json.loads(proc.stdout)

    def first_scrape(self) -> None:
        """What the provider's Prometheus does from the moment a unit is up: scrape it. The
        daemon accepts a scrape token from memory while its disk is gone only once it has
        seen the token (appliance/api/auth.py), so a rig whose first scenario pulls the
        disk must have scraped before, as Prometheus would have."""
        self.metrics()

    def metrics(self) -> str:
        status, body = self.https("GET", "/metrics",
                                  headers={"Authorization": f"Bearer {self.metrics_token}"})
        if status != 200:
            raise RigError(f"/metrics answered {status}")
        return body.decode()

    def __enter__(self) -> Rig:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
