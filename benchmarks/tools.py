"""The contestants behind one interface, and the measuring around them.

Every tool runs as real processes, exactly as a user runs it: the appliance as an `rdr serve`
subprocess (TLS on 127.0.0.1, its fingerprint pinned by the agent) with `rdr-agent` commands,
restic and borg as their own commands on a local repository. Each command is timed as a whole
(wall clock, start to exit) and its peak RSS and CPU time come from the kernel's accounting of
the child (`wait4` rusage, taken by a small launcher process: see `_LAUNCHER`). A long-running
server's peak is read from /proc: its high-water mark is reset (`clear_refs` 5) before a phase
and read after, with a sampler as a fallback when the reset is not allowed.

Nothing listens or connects anywhere but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
PASSWORD = "benchmark password, not a secret"


class ToolError(RuntimeError):
    """A tool failed a step: the run fails (a failed backup must never be timed)."""


# --- processes ------------------------------------------------------------------------------


@dataclass(slots=True)
class Proc:
    seconds: float
    rc: int
    maxrss: int  # bytes
    out: str
    err: str
    cpu: float = 0.0  # user + system seconds of the child


def _popen(cmd: list[str], env: dict[str, str] | None, cwd: Path | None, out, err
           ) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=err, start_new_session=True)


#: Runs the measured command for us. Why a launcher: Linux charges a child's `ru_maxrss` with
#: the high-water RSS of the process it was forked from (at exec the kernel keeps the old mm's
#: peak), so a tool forked straight from this harness -- hundreds of MiB after checking a
#: restore -- would report the harness's peak, not its own. Forked from this small launcher
#: (python -S, ~10 MiB: the floor of every figure), the tool reports its own peak. The launcher
#: also times spawn-to-exit itself, so its own start-up is not in the timing.
_LAUNCHER = r"""
import json, os, sys, time
t0 = time.perf_counter()
try:
    pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
except OSError as exc:
    sys.stderr.write(f"{sys.argv[2]}: {exc}\n")
    sys.exit(127)
_, st, ru = os.wait4(pid, 0)
t = time.perf_counter() - t0
os.write(int(sys.argv[1]), json.dumps([t, os.waitstatus_to_exitcode(st), ru.ru_maxrss,
                                       ru.ru_utime + ru.ru_stime]).encode())
"""


def run_measured(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
                 timeout: float = 7200.0, check: bool = True, what: str = "",
                 started: list[int] | None = None) -> Proc:
    """Run cmd to completion: wall time, exit code, the child's own peak RSS and CPU time
    (wait4, through `_LAUNCHER`), its output.

    Output goes to temporary files rather than pipes so a chatty tool never blocks on a full
    pipe while we sit in wait (and reading pipes would cost the measuring process CPU).
    `started` collects the launcher's pid (the leader of the command's process group), for a
    caller that must kill it from elsewhere."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        rfd, wfd = os.pipe()
        try:
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, str(wfd), *cmd],
                                    env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, start_new_session=True, pass_fds=(wfd,))
        except BaseException:
            os.close(rfd)
            raise
        finally:
            os.close(wfd)
        if started is not None:
            started.append(proc.pid)
        timer = threading.Timer(timeout, kill_group, (proc.pid,))
        timer.start()
        try:
            proc.wait()
        except BaseException:
            kill_group(proc.pid)
            proc.wait()
            raise
        finally:
            timer.cancel()
            with os.fdopen(rfd, "rb") as f:
                report = f.read()
        seconds = time.perf_counter() - t0
        rc, maxrss, cpu = proc.returncode, 0, 0.0
        with contextlib.suppress(ValueError):
            seconds, rc, maxrss_kib, cpu = json.loads(report)
            maxrss = maxrss_kib * 1024
        out.seek(0)
        err.seek(0)
        res = Proc(seconds, rc, maxrss, out.read().decode(errors="replace"),
                   err.read().decode(errors="replace"), cpu)
    if check and rc != 0:
        tail = (res.err.strip() or res.out.strip())[-2000:]
        raise ToolError(f"{what or cmd[0]}: exit {rc} after {seconds:.1f} s: {tail}")
    return res


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def drop_caches() -> bool:
    """Start a phase cold: flush dirty pages and drop the page cache, dentries and inodes.
    Needs root; False (and nothing dropped) otherwise or in a container that forbids it."""
    os.sync()
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def du(path: Path, skip_top: tuple[str, ...] = ()) -> tuple[int, int]:
    """(bytes allocated on disk, apparent bytes) of a tree, each inode once -- what `du`
    and `du --apparent-size` say. `skip_top` names top-level entries left out (the
    appliance's preallocated `reserve` file is free space held back, not backup data)."""
    disk = apparent = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(path):
        top = os.path.samefile(dirpath, path)
        for name in dirnames + filenames:
            if top and name in skip_top:
                continue
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            disk += st.st_blocks * 512
            apparent += st.st_size
        if top:
            dirnames[:] = [d for d in dirnames if d not in skip_top]
    return disk, apparent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(drop_prefixes: tuple[str, ...]) -> dict[str, str]:
    """The caller's environment without the tools' own variables (a user's RESTIC_REPOSITORY
    or RDR_TOKEN must never point a benchmark at a real repository)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)}


# --- a server process and its memory ---------------------------------------------------------


def _status_kib(pid: int, field_name: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a running process (all its threads), from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class RssWatch:
    """Peak resident memory of a running process over a phase: the kernel's high-water mark,
    reset at the start (or, where the reset is not allowed, a 20 ms sampler of VmRSS); and
    the CPU time it spent meanwhile."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_sampled = 0
        self.peak = 0
        self.cpu = 0.0
        self.reset_ok = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RssWatch:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5\n")
            self.reset_ok = True
        except OSError:
            self.reset_ok = False
        self._cpu0 = _cpu_seconds(self.pid)
        if not self.reset_ok:  # the kernel's mark covers the phase otherwise: no sampling load
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            kib = _status_kib(self.pid, "VmRSS")
            if kib:
                self.peak_sampled = max(self.peak_sampled, kib * 1024)
            self._stop.wait(0.02)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        hwm = _status_kib(self.pid, "VmHWM") if self.reset_ok else None
        self.peak = max(self.peak_sampled, (hwm or 0) * 1024)
        self.rss_after = (_status_kib(self.pid, "VmRSS") or 0) * 1024
        self.cpu = _cpu_seconds(self.pid) - self._cpu0


class Server:
    """A long-running process (the appliance daemon, rclone): started with output to a log
    file in its own process group, stopped with SIGTERM then SIGKILL, always."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._logf = open(log, "wb")  # noqa: SIM115 -- closed in stop()
        self.proc = _popen(cmd, env, None, self._logf, subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def check_alive(self, what: str) -> None:
        if self.proc.poll() is not None:
            raise ToolError(f"{what} exited ({self.proc.returncode}): {self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                kill_group(self.proc.pid)  # the group: anything it started goes too
                self.proc.wait()
        self._logf.close()


def wait_https(port: int, server: Server, what: str, path: str = "/healthz",
               timeout: float = 60.0) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.check_alive(what)
        try:
            urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=ctx, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise ToolError(f"{what} did not answer on 127.0.0.1:{port} within {timeout:.0f} s: "
                    f"{server.log_tail()}")


# --- the tools -------------------------------------------------------------------------------


@dataclass(slots=True)
class Phase:
    """One timed command, with what the tool itself reported and a server's peak RSS."""

    seconds: float
    client_rss: int
    client_cpu: float
    server_rss: int | None = None
    server_cpu: float | None = None
    reported_new_bytes: int | None = None
    extra: dict = field(default_factory=dict)

    @staticmethod
    def of(res: Proc, server: RssWatch | None = None, reported: int | None = None,
           extra: dict | None = None) -> Phase:
        return Phase(res.seconds, res.maxrss, res.cpu, server.peak if server else None,
                     server.cpu if server else None, reported, extra or {})


class Tool:
    """One backup system on one fresh repository (prepare .. close)."""

    name = "tool"
    binaries: tuple[str, ...] = ()

    def __init__(self, work: Path) -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        #: The server's figures over the last command, for tools with a server process.
        self._watch: RssWatch | None = None

    @classmethod
    def available(cls) -> bool:
        return all(shutil.which(b) for b in cls.binaries)

    @classmethod
    def version(cls) -> str:
        raise NotImplementedError

    def prepare(self) -> None:
        """Create the empty repository (and start servers); not timed."""

    def backup(self, src: Path, n: int) -> Phase:
        raise NotImplementedError

    def restore(self, target: Path) -> Phase:
        """Restore the newest snapshot into target (paths keep the source's absolute path)."""
        raise NotImplementedError

    def restore_one(self, target: Path, path: Path) -> Phase:
        """Restore one file (absolute source path) of the newest snapshot into target."""
        raise NotImplementedError

    def usage(self) -> tuple[int, int]:
        """(disk, apparent) bytes of the repository."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop servers; always called, also after a failure."""


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


class Appliance(Tool):
    """`rdr serve` as a subprocess and the `rdr-agent` command, like a customer's LAN."""

    name = "appliance"

    def __init__(self, work: Path, hosts: int = 1, replication: str = "enabled = false\n",
                 server_toml: str = "", extra_config: str = "") -> None:
        super().__init__(work)
        self.data = work / "data"
        self.cfg = work / "appliance.toml"
        self.hosts = hosts
        #: The body of the config's [replication] section (off unless a caller wants it).
        self.replication = replication
        #: More lines of the [server] section (tests: shorter timeouts).
        self.server_toml = server_toml
        #: Further sections appended to the config (e.g. "[limits]\n...").
        self.extra_config = extra_config
        self.tokens: list[str] = []
        self.server: Server | None = None
        self.port = 0
        self.fingerprint = ""

    @staticmethod
    def cmd(name: str) -> str:
        path = BIN / name
        return str(path) if path.exists() else (shutil.which(name) or name)

    @classmethod
    def available(cls) -> bool:
        return Path(cls.cmd("rdr")).exists() and Path(cls.cmd("rdr-agent")).exists()

    @classmethod
    def version(cls) -> str:
        return _first_line([cls.cmd("rdr-agent"), "--version"])

    def prepare(self) -> None:
        self.port = free_port()
        # Scheduled jobs off (restic and borg run none either); the reserve at its default.
        self.cfg.write_text(
            f'[server]\nlisten = "127.0.0.1:{self.port}"\n{self.server_toml}'
            f'[store]\npath = "{self.data}"\n'
            f"[replication]\n{self.replication}[maintenance]\nprune_interval_hours = 0\n"
            "gc_interval_hours = 0\nverify_interval_hours = 0\n[capacity]\n"
            "sample_interval_hours = 0\n[health]\nwatch_disks = false\n" + self.extra_config)
        env = clean_env(("RDR_",))
        run_measured([self.cmd("rdr"), "init", "--config", str(self.cfg)], env=env,
                     what="rdr init")
        for i in range(self.hosts):
            res = run_measured([self.cmd("rdr"), "hosts", "add", f"bench{i:02d}", "--config",
                                str(self.cfg)], env=env, what="rdr hosts add")
            self.tokens.append(res.out.strip().splitlines()[-1])
        self.server = Server([self.cmd("rdr"), "serve", "--config", str(self.cfg)], env,
                             self.work / "daemon.log")
        wait_https(self.port, self.server, "rdr serve")
        from appliance.api.tls import fingerprint

        self.fingerprint = fingerprint(self.data / "tls" / "cert.pem")

    def agent_env(self, i: int = 0) -> dict[str, str]:
        env = clean_env(("RDR_",))
        env.update(RDR_URL=f"https://127.0.0.1:{self.port}", RDR_TOKEN=self.tokens[i],
                   RDR_FINGERPRINT=self.fingerprint,
                   RDR_STATE_DIR=str(self.work / f"agent-state-{i:02d}"))
        return env

    def _agent(self, args: list[str], what: str, i: int = 0) -> tuple[Proc, RssWatch, dict]:
        assert self.server is not None
        with RssWatch(self.server.pid) as watch:
            res = run_measured([self.cmd("rdr-agent"), *args, "--json"], env=self.agent_env(i),
                               what=what, check=False)
        if res.rc != 0:
            self.server.check_alive("rdr serve")
            raise ToolError(f"{what}: exit {res.rc}: {(res.err or res.out).strip()[-2000:]}")
        try:
            summary = json.loads(res.out)
        except ValueError:
            summary = {}
        return res, watch, summary

    def backup(self, src: Path, n: int) -> Phase:
        res, watch, s = self._agent(["backup", str(src)], f"rdr-agent backup #{n}")
        return Phase.of(res, watch, s.get("bytes_new"),
                        {"files_read": s.get("files_read"), "chunks_new": s.get("chunks_new")})

    def restore(self, target: Path) -> Phase:
        res, watch, _ = self._agent(["restore", "latest", "--to", str(target)],
                                    "rdr-agent restore")
        return Phase.of(res, watch)

    def restore_one(self, target: Path, path: Path) -> Phase:
        res, watch, _ = self._agent(["restore", "latest", str(path), "--to", str(target)],
                                    "rdr-agent restore (one file)")
        return Phase.of(res, watch)

    def usage(self) -> tuple[int, int]:
        # The data dir as a whole (chunks, snapshots, index.sqlite and its WAL, TLS files),
        # less the reserve (see appliance/store/space.py).
        return du(self.data, skip_top=("reserve",))

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


class Restic(Tool):
    """restic on a local repository (its default, zstd "auto" compression)."""

    name = "restic"
    binaries = ("restic",)

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.repo = work / "repo"
        self.env = clean_env(("RESTIC_",))
        self.env.update(RESTIC_REPOSITORY=str(self.repo), RESTIC_PASSWORD=PASSWORD,
                        RESTIC_CACHE_DIR=str(work / "cache"))
        self.flags: list[str] = []

    @classmethod
    def version(cls) -> str:
        return _first_line(["restic", "version"])

    def prepare(self) -> None:
        run_measured(["restic", *self.flags, "init"], env=self.env, what="restic init")

    def _run(self, args: list[str], what: str) -> Proc:
        return run_measured(["restic", *self.flags, *args], env=self.env, what=what)

    def backup(self, src: Path, n: int) -> Phase:
        res = self._run(["backup", "--json", str(src)], f"restic backup #{n}")
        added = None
        for line in res.out.splitlines():
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                if isinstance(msg, dict) and msg.get("message_type") == "summary":
                    added = msg.get("data_added")
        return Phase.of(res, self._watch, added)

    def restore(self, target: Path) -> Phase:
        res = self._run(["restore", "latest", "--target", str(target)], "restic restore")
        return Phase.of(res, self._watch)

    def restore_one(self, target: Path, path: Path) -> Phase:
        res = self._run(["restore", "latest", "--target", str(target), "--include", str(path)],
                        "restic restore (one file)")
        return Phase.of(res, self._watch)

    def usage(self) -> tuple[int, int]:
        return du(self.repo)


class ResticRest(Restic):
    """restic through its REST protocol over TLS on 127.0.0.1, served by `rclone serve
    restic` (the closest thing to the appliance's shape: a client and a server process)."""

    name = "restic-rest"
    binaries = ("restic", "rclone")

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.server: Server | None = None

    @classmethod
    def version(cls) -> str:
        return f"{Restic.version()}; {_first_line(['rclone', 'version'])}"

    def prepare(self) -> None:
        from appliance.api.tls import create_self_signed

        cert, key = self.work / "tls" / "cert.pem", self.work / "tls" / "key.pem"
        create_self_signed(cert, key, "rdr-bench")
        port = free_port()
        self.repo.mkdir()
        self.server = Server(["rclone", "serve", "restic", "--addr", f"127.0.0.1:{port}",
                              "--cert", str(cert), "--key", str(key), str(self.repo)],
                             clean_env(("RCLONE_",)), self.work / "rclone.log")
        wait_https(port, self.server, "rclone serve restic", path="/config")
        self.env["RESTIC_REPOSITORY"] = f"rest:https://127.0.0.1:{port}/"
        self.flags = ["--cacert", str(cert)]  # restic 0.14 has no RESTIC_CACERT
        super().prepare()

    def _run(self, args: list[str], what: str) -> Proc:
        assert self.server is not None
        with RssWatch(self.server.pid) as self._watch:
            return super()._run(args, what)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


class Borg(Tool):
    """borg 1.x on a local repository: repokey encryption, zstd level 3."""

    name = "borg"
    binaries = ("borg",)

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.repo = work / "repo"
        self.env = clean_env(("BORG_",))
        self.env.update(BORG_REPO=str(self.repo), BORG_PASSPHRASE=PASSWORD,
                        BORG_BASE_DIR=str(work / "home"),
                        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
                        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="no")
        self.last = ""

    @classmethod
    def version(cls) -> str:
        return _first_line(["borg", "--version"])

    def prepare(self) -> None:
        run_measured(["borg", "init", "--encryption=repokey"], env=self.env, what="borg init")

    def backup(self, src: Path, n: int) -> Phase:
        self.last = f"b{n}"
        res = run_measured(["borg", "create", "--json", "--compression", "zstd,3",
                            f"::{self.last}", str(src)], env=self.env,
                           what=f"borg create #{n}")
        added = None
        with contextlib.suppress(ValueError, KeyError, TypeError):
            added = json.loads(res.out)["archive"]["stats"]["deduplicated_size"]
        return Phase.of(res, self._watch, added)

    def restore(self, target: Path) -> Phase:
        target.mkdir(parents=True, exist_ok=True)
        res = run_measured(["borg", "extract", f"::{self.last}"], env=self.env, cwd=target,
                           what="borg extract")
        return Phase.of(res, self._watch)

    def restore_one(self, target: Path, path: Path) -> Phase:
        target.mkdir(parents=True, exist_ok=True)
        res = run_measured(["borg", "extract", f"::{self.last}", str(path).lstrip("/")],
                           env=self.env, cwd=target, what="borg extract (one file)")
        return Phase.of(res, self._watch)

    def usage(self) -> tuple[int, int]:
        return du(self.repo)


TOOLS: dict[str, type[Tool]] = {t.name: t for t in (Appliance, Restic, ResticRest, Borg)}


def ensure_installed(names: list[str]) -> None:
    """Install restic and borg from Debian when a requested one is missing (as root);
    otherwise stop with one clear line."""
    missing = [n for n in names if not TOOLS[n].available()]
    if not missing:
        return
    if "appliance" in missing:
        raise SystemExit("benchmark: rdr/rdr-agent not found next to this Python; install "
                         "the appliance (pip install -e .) into the venv that runs this")
    if "restic-rest" in missing and shutil.which("rclone") is None:
        raise SystemExit("benchmark: restic-rest needs rclone (apt-get install rclone)")
    if os.geteuid() != 0:
        raise SystemExit(f"benchmark: {', '.join(missing)} not installed and not root: run "
                         "'apt-get install -y borgbackup restic' as root, or pick --tools")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "borgbackup", "restic"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(f"benchmark: installing {', '.join(missing)}: {' '.join(cmd)}", file=sys.stderr)
    if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL)
    still = [n for n in missing if not TOOLS[n].available()]
    if still:
        raise SystemExit(f"benchmark: could not install {', '.join(still)} with apt-get")
