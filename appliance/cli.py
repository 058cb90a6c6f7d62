"""`rdr`: the appliance's admin command. Thin: parses, calls the store, prints.

Every failure is one line on stderr and a non-zero exit; no traceback reaches the admin.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from rdr_agent.util.textfmt import human_bytes
from rdr_format.catalog import CatalogError
from rdr_format.chunkfile import ChunkError
from rdr_format.objects import DecryptError
from rdr_format.objects import KeyError_ as ReplicationKeyError
from rdr_restore.disk import PROTECT, RECOVER, DamagedDisk, DiskLayout, Reporter
from rdr_restore.disk import Progress as DiskProgress
from rdr_restore.errors import DcError, SeedError
from rdr_restore.objects import checkpoints, dc_restore

from . import __version__, wiring
from .capacity.windows import parse_window_start
from .config import Config, ConfigError, load
from .health.status import gather as gather_status
from .replication.dc import dc_verify
from .replication.engine import PassResult
from .replication.status import replication_status
from .replication.targets import TargetError
from .replication.tunnel import route_present
from .seed import mounts as seed_mounts
from .seed import pending as seed_pending
from .seed.dcside import export_recover, import_seed
from .seed.disk import one_operation
from .seed.export import export_seed
from .seed.recover import import_recovery
from .store.accounts import Accounts, check_password_rules
from .store.backup_plans import HostPlan
from .store.datastore import Datastore
from .store.errors import StoreError
from .store.index import TOKEN_SCOPES
from .store.jobs import Progress
from .store.maintenance import Maintenance
from .store.rebuild import rebuild_index

#: `rdr replicate`: another pass was running; a follow-up that includes everything
#: committed until now is queued behind it (not yet at the data center).
EXIT_QUEUED = 4


_SCOPE_TEXT = {"metrics": "/metrics only", "read": "/metrics and appliance-wide reads",
               "admin": "reads and changes: plans, backups"}


def _ts(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def print_plan(rec: dict, plan: HostPlan, cfg: Config) -> None:
    policy = rec["policy"] or f"{cfg.retention.policy} (default)"
    start = rec["window_start"] or f"{cfg.contract.default_window} (default)"
    tz = plan.timezone or cfg.appliance.timezone
    print(f"host {rec['name']}: retention {policy}, backup window from {start} {tz} for "
          "12 hours")
    if not plan.paths:
        print("  no scheduled backups (no paths in the plan; set them with --paths)")
        return
    print(f"  paths: {' '.join(plan.paths)}")
    if plan.excludes:
        print(f"  excludes: {' '.join(plan.excludes)}")
    bw = f"{plan.bandwidth_kbps} kbit/s" if plan.bandwidth_kbps else "unlimited"
    print(f"  LAN bandwidth: {bw}{', one file system' if plan.one_file_system else ''}")
    if plan.dump_command:
        print(f"  before each backup: {plan.dump_command} > {plan.dump_name}")
    if plan.paused:
        print("  PAUSED: no backup starts until 'rdr hosts resume'")


def print_usage(rep: dict) -> None:
    """The monthly report as an admin reads it."""
    bw, disk, net = rep["backup_windows"], rep["disk"], rep["network"]
    print(f"usage for {rep['month']} ({rep['timezone']})")
    print(f"  capacity {rep['capacity_gb']:.1f} GB; data disk {disk['used_percent']:.1f}% used "
          f"({disk['level']})")
    print(f"  protected {rep['protected_gb']:.3f} GB; billable {rep['billable_gb']:.3f} GB "
          f"(tier {rep['tier']}; 50% minimum use "
          f"{'APPLIED' if rep['minimum_use_applied'] else 'not applied'})")
    print(f"  early termination: {'FLAGGED' if rep['early_termination_flag'] else 'no'} "
          f"({rep['commitment_months']}-month commitment)")
    rate = "-" if bw["success_rate"] is None else f"{bw['success_rate'] * 100:.1f}%"
    print(f"  backup windows: {bw['successful']}/{bw['scheduled']} = {rate} "
          f"(service level {bw['service_level'] * 100:.0f}%)")
    r = rep["restores"]
    worst = "-" if r["max_start_seconds"] is None else f"{r['max_start_seconds']:.1f} s"
    print(f"  restores: {r['count']}, slowest start {worst}, over 30 min: {r['over_30_minutes']}")
    def check(ok: bool | None, measured: float | None, unit: str) -> str:
        if ok is None:
            return "not measured yet"
        return f"{measured:.1f} {unit} ({'ok' if ok else 'FALLS SHORT'})"

    print(f"  link to the data center (needs {net['required_kbps']:.0f} kbit/s and <= 200 ms):"
          f" throughput {check(net['meets_throughput'], net['throughput_kbps'], 'kbit/s')},"
          f" latency {check(net['meets_latency'], net['rtt_ms'], 'ms')}")
    print(f"  {'HOST':20} {'PROTECTED GB':>12} {'WINDOW':>6} {'BACKUPS':>9}  MISSED")
    for h in rep["hosts"]:
        print(f"  {h['host']:20} {h['protected_gb']:>12.3f} {h['window_start']:>6} "
              f"{h['successful_backups']:>4}/{h['scheduled_backups']:<4}  "
              f"{', '.join(h['missed_days']) or '-'}")


class Cli:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cfg: Config = load(args.config or os.environ.get("RDR_CONFIG") or None)

    def open_store(self, create: bool = False) -> Datastore:
        if not create and not (self.cfg.data_dir / "index.sqlite").exists():
            raise ConfigError(f"no appliance data at {self.cfg.data_dir}; run 'rdr serve' or "
                              "'rdr hosts add' first, or pass --config")
        return wiring.open_store(self.cfg)

    @contextlib.contextmanager
    def stored(self, create: bool = False) -> Iterator[Datastore]:
        store = self.open_store(create)
        try:
            yield store
        finally:
            store.close()

    def maintenance(self, store: Datastore) -> Maintenance:
        return wiring.maintenance(self.cfg, store)

    @staticmethod
    def echo(kind: str) -> Progress | None:
        """Progress on stderr when it is a terminal (the job history records it anyway)."""
        if not sys.stderr.isatty():
            return None

        def show(fraction: float, message: str) -> None:
            sys.stderr.write(f"\r{kind}: {fraction * 100:5.1f}% {message}"[:120].ljust(120))
            sys.stderr.flush()

        return show

    @staticmethod
    def end_echo() -> None:
        if sys.stderr.isatty():
            sys.stderr.write("\r" + " " * 120 + "\r")

    # --- commands ---
    def serve(self) -> int:
        from rdr_agent.util.memory import tune_malloc

        from .daemon import serve

        # One arena: the daemon's workers hand buffers to the event loop and back, and with
        # 20 agents a second arena only added fragmentation (peak RSS ~201 -> ~196 MiB).
        tune_malloc(arenas=1)
        asyncio.run(serve(self.cfg))
        return 0

    def hosts_add(self) -> int:
        with self.stored(create=True) as store:
            token = store.add_host(self.args.name)
        print(f"host {self.args.name} added; its token (shown once, store it on the host):")
        print(token)
        return 0

    def hosts_set(self) -> int:
        a = self.args
        window = None
        if a.window:
            try:
                window = parse_window_start(a.window).strftime("%H:%M")
            except ValueError as exc:
                raise ConfigError(f"--window: {exc}") from None
        changes: dict[str, object] = {}
        if a.paths is not None:
            changes["paths"] = [p for p in a.paths if p]
        if a.exclude is not None:
            changes["excludes"] = [x for x in a.exclude if x]
        if a.bandwidth is not None:
            changes["bandwidth_kbps"] = a.bandwidth
        if a.dump_command is not None:
            changes["dump_command"] = a.dump_command or None
        if a.dump_name is not None:
            changes["dump_name"] = a.dump_name or None
        if a.timezone is not None:
            changes["timezone"] = a.timezone or None
        if a.one_file_system is not None:
            changes["one_file_system"] = a.one_file_system == "yes"
        with self.stored() as store:
            if changes:  # checked whole before anything is written
                store.plans.update(a.name, actor=f"cli:{_user()}", **changes)
            if a.policy is not None:
                store.set_policy(a.name, a.policy or None)
            if a.window is not None:
                store.set_window(a.name, window)
            rec = store.index.host_record(a.name)
            plan = store.plans.get(a.name)
        print_plan(rec, plan, self.cfg)
        return 0

    def hosts_show(self) -> int:
        with self.stored() as store:
            rec = store.index.host_record(self.args.name)
            plan = store.plans.get(self.args.name)
            runs = store.runs.list(self.args.name, 10)
            gaps = store.runs.gaps(self.args.name)
            agent = store.plans.agents().get(self.args.name)
            audit = store.plans.audit(self.args.name, 5)
        if self.args.json:
            rec.pop("token_hash", None)
            print(json.dumps({"host": rec, "plan": plan.to_json(), "agent": agent,
                              "runs": [r.to_json() for r in runs], "not_backed_up": gaps,
                              "plan_audit": audit}, indent=1))
            return 0
        print_plan(rec, plan, self.cfg)
        for a in audit:
            print(f"  dump command changed {_ts(a['at'])} by {a['who']}: "
                  f"{a['old'] or '(none)'} -> {a['new'] or '(none)'}")
        seen = "never seen" if agent is None else \
            f"last seen {_ts(agent['last_seen'])} ({agent['version']})"
        print(f"  agent: {seen}")
        print("  recent runs:")
        for r in runs:
            where = {None: "", True: ", in window", False: ", OUT of window"}[r.in_window]
            print(f"    {r.id:>5} {r.kind:9} {r.state:8} {_ts(r.created_at)}{where}"
                  f"{', MISSED window ' + (r.window_day or '') if r.missed else ''}"
                  f"{': ' + r.message if r.message else ''}")
        if gaps["run"] is not None:
            print(f"  premier check of {gaps['snapshot']}: {gaps['count']} files not backed up")
            for f in gaps["files"][:50]:
                print(f"    {f['reason']:10} {f['path']}  {f['detail']}")
            if gaps["count"] > 50:
                print(f"    ... and {gaps['count'] - 50} more (--json)")
        return 0

    def hosts_backup(self) -> int:
        with self.stored() as store:
            run = wiring.backup_scheduler(self.cfg, store).request_now(
                self.args.name, f"cli:{_user()}")
        print(f"backup run {run.id} of {run.host} queued; its agent starts it at its next "
              "poll (within half a minute)")
        return 0

    def hosts_pause(self) -> int:
        with self.stored() as store:
            wiring.backup_scheduler(self.cfg, store).pause(self.args.name)
        print(f"backups of {self.args.name} paused: a running backup stops at its next report "
              "and resumes with 'rdr hosts resume'")
        return 0

    def hosts_resume(self) -> int:
        with self.stored() as store:
            res = wiring.backup_scheduler(self.cfg, store).resume(self.args.name)
        print(f"backups of {self.args.name} resumed ({res['resumed_runs']} paused run(s) "
              "queued again)")
        return 0

    def usage(self) -> int:
        with self.stored() as store:
            try:
                rep = wiring.capacity(self.cfg, store).report(self.args.month)
            except ValueError as exc:
                raise ConfigError(f"--month: {exc}") from None
        if self.args.json:
            print(json.dumps(rep, indent=1))
        elif self.args.csv:
            w = csv.writer(sys.stdout)
            w.writerow(["month", "host", "max_logical_bytes", "protected_gb",
                        "scheduled_backups", "successful_backups", "success_rate",
                        "missed_days"])
            for h in rep["hosts"]:
                w.writerow([rep["month"], h["host"], h["max_logical_bytes"], h["protected_gb"],
                            h["scheduled_backups"], h["successful_backups"],
                            "" if h["success_rate"] is None else f"{h['success_rate']:.4f}",
                            " ".join(h["missed_days"])])
            w.writerow([rep["month"], "TOTAL", "", rep["protected_gb"], "", "", "", ""])
            floor = "applied" if rep["minimum_use_applied"] else "not applied"
            early = "FLAGGED" if rep["early_termination_flag"] else "no"
            w.writerow([rep["month"], "BILLABLE", "", rep["billable_gb"], "", "", "",
                        f"tier {rep['tier']}; minimum use {floor}; early termination {early}"])
        else:
            print_usage(rep)
        return 0

    # --- replication ---
    def _need_replication(self) -> None:
        if not self.cfg.replication.enabled:
            raise ConfigError("replication is off in this configuration ([replication] "
                              "enabled = false)")

    def replicate(self) -> int:
        self._need_replication()
        store = self.open_store()
        pool = ThreadPoolExecutor(self.cfg.store.workers, thread_name_prefix="rdr-work")

        async def go() -> PassResult:
            target = wiring.replication_target(self.cfg)
            try:
                tunnel = None
                if self.cfg.replication.tunnel_subnet:
                    subnet = self.cfg.replication.tunnel_subnet
                    tunnel = lambda: route_present(subnet)  # noqa: E731
                rep = wiring.replicator(self.cfg, store, pool, target, tunnel)
                return await rep.run_pass(wait=self.args.wait)
            finally:
                await target.close()

        try:
            res = asyncio.run(go())
        finally:
            pool.shutdown()
            store.close()
        if self.args.json:
            print(json.dumps(res.to_json(), indent=1))
        elif res.queued:
            print("another replication pass is running (the daemon's or another rdr "
                  "replicate): a follow-up pass is queued; it starts when that one ends and "
                  "includes every snapshot committed until now. `rdr replicate --wait` waits "
                  "for it instead; `rdr replication status` shows how far it is")
        elif res.paused:
            print(f"replication did not run: {res.paused}")
        else:
            print(f"replicated {res.snapshots_replicated} snapshots: {res.objects_sent} objects "
                  f"({human_bytes(res.bytes_sent)}) sent, {res.objects_skipped} already at the "
                  f"data center; removed {res.snapshots_removed_at_dc} pruned snapshots and "
                  f"{res.chunks_removed_at_dc} unreferenced chunks there")
        # 0: everything committed before the command is at the data center; 4: not yet, a
        # pass that will include it is queued; 3: replication cannot run now
        # (docs/REPLICATION.md)
        return EXIT_QUEUED if res.queued else 3 if res.paused else 0

    def replication_status(self) -> int:
        with self.stored() as store:
            st = replication_status(store, self.cfg)
        if self.args.json:
            print(json.dumps(st, indent=1))
            return 0
        lag = st["lag"]
        print(f"replication {'on' if st['enabled'] else 'OFF'} to {st['target']}")
        behind = "-" if lag["seconds"] is None else f"{lag['seconds']:.0f} s"
        print(f"  lag: {lag['snapshots']} snapshots, {human_bytes(lag['bytes'])}, {behind}")
        cp = st["last_checkpoint"]
        print(f"  last checkpoint: {'-' if cp is None else cp['host'] + '/' + cp['snapshot']}")
        t = st["tunnel"]
        print(f"  tunnel: {t['state']}, {t['outages_24h']} outages in 24 h")
        if st["last_error"]:
            print(f"  last error: {st['last_error']['error']}")
        return 0

    def _dc_access(self) -> tuple:
        """Target and cipher from the config or flags: all the DC tools need."""
        r = self.cfg.replication
        for flag in ("endpoint", "bucket", "access_key", "secret_key"):
            v = getattr(self.args, flag, None)
            if v:
                setattr(r, flag, v)
                r.target = "s3"
        if getattr(self.args, "directory", None):
            r.target, r.directory = "dir", self.args.directory
        if getattr(self.args, "key_file", None):
            r.key_file = self.args.key_file
        if r.target == "s3" and not (r.endpoint and r.bucket and r.access_key and r.secret_key):
            raise ConfigError("data center access needs --endpoint, --bucket, --access-key and "
                              "--secret-key (or a config with [replication] target = 's3')")
        if not r.key_file and not (self.cfg.data_dir / "replication.key").exists():
            raise ConfigError("the data key is needed: --key-file (the escrowed key)")
        return wiring.replication_target(self.cfg, limited=False), \
            wiring.replication_cipher(self.cfg)

    def dc_snapshots(self) -> int:
        target, cipher = self._dc_access()

        async def go() -> list[dict]:
            try:
                return await checkpoints(target, cipher)
            finally:
                await target.close()

        cps = asyncio.run(go())
        if self.args.json:
            print(json.dumps(cps, indent=1))
            return 0
        print(f"{'HOST':20} {'SNAPSHOT':22} {'FILES':>9} {'SIZE':>10}")
        for c in cps:
            print(f"{c['host']:20} {c['snapshot']:22} {c['file_count']:>9} "
                  f"{human_bytes(c['logical_size']):>10}")
        return 0

    def dc_verify(self) -> int:
        target, cipher = self._dc_access()
        store = self.open_store()

        async def go():
            try:
                return await dc_verify(store, target, cipher, self.args.deep)
            finally:
                await target.close()

        try:
            res = asyncio.run(go())
        finally:
            store.close()
        if self.args.json:
            print(json.dumps(res.to_json(), indent=1))
        else:
            print(f"data center: {res.snapshots_checked} replicated snapshots and "
                  f"{res.chunks_expected} chunks checked"
                  f"{f' ({res.chunks_checked} downloaded and verified)' if self.args.deep else ''}")
            for label, items in (("missing snapshot", res.missing_snapshots),
                                 ("damaged snapshot", res.bad_snapshots),
                                 ("missing chunk", res.missing_chunks),
                                 ("damaged chunk", res.bad_chunks)):
                for item in items[:50]:
                    print(f"  {label}: {item}")
            print("OK: the data center holds everything replicated" if res.ok else
                  "PROBLEMS FOUND at the data center")
        return 0 if res.ok else 3

    def dc_restore(self) -> int:
        target, cipher = self._dc_access()
        to = Path(self.args.to)
        to.mkdir(parents=True, exist_ok=True)
        include = [os.fsencode(os.path.normpath(p)).lstrip(b"/") for p in self.args.paths] \
            or None
        pool = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="rdr-dc")

        async def go():
            try:
                return await dc_restore(target, cipher, self.args.host, self.args.snapshot, to,
                                        include, pool)
            finally:
                await target.close()

        try:
            cp, summary = asyncio.run(go())
        finally:
            pool.shutdown()
        if self.args.json:
            print(json.dumps({"snapshot": cp["snapshot"], **summary.to_json()}, indent=1))
        else:
            print(f"restored {self.args.host}/{cp['snapshot']} from the data center: "
                  f"{summary.files} files, {summary.dirs} dirs, "
                  f"{human_bytes(summary.bytes_written)} to {to}")
            for path, err in summary.errors[:50]:
                print(f"  not restored: {path}: {err}")
        return 3 if summary.errors else 0

    # --- Rapid Protect / Rapid Recover disks ---
    def _disk_reporter(self, kind: str, layout: DiskLayout | None = None) -> Reporter:
        echo = self.echo(kind)

        def report(p: DiskProgress) -> None:
            if layout is not None:
                layout.write_progress(p)  # the daemon's panel reads it from the disk
            if echo is not None and p.total_objects:
                echo(p.done_objects / p.total_objects,
                     f"{p.done_objects}/{p.total_objects} objects, {human_bytes(p.done_bytes)}")

        return report

    @staticmethod
    def _print_damage(exc: DamagedDisk) -> int:
        print(f"rdr: error: {exc}", file=sys.stderr)
        for name, why in exc.damaged[:50]:
            print(f"  damaged: {name}: {why}", file=sys.stderr)
        return 3

    def seed_export(self) -> int:
        cipher = wiring.replication_cipher(self.cfg)
        progress = DiskProgress("export")
        with self.stored() as store, one_operation(store.root), seed_mounts.opened(
                self.args.device, PROTECT, Path(self.cfg.seed.mount_root),
                writable=True) as root:
            layout = DiskLayout(root)
            try:
                h = export_seed(store, cipher, layout, self.cfg.appliance.serial,
                                self.args.hosts or None, progress,
                                self._disk_reporter("seed export", layout))
            except OSError as exc:
                raise SeedError(f"the disk failed or was removed ({exc.strerror or exc}): "
                                "insert it again and run the same command to resume") from None
            finally:
                self.end_echo()
        if self.args.json:
            print(json.dumps({"header": h, "progress": progress.to_json()}, indent=1))
        else:
            print(f"seed written: {len(h['snapshots'])} snapshots of {', '.join(h['hosts'])}, "
                  f"{h['objects']} objects ({human_bytes(h['bytes'])}); replication holds "
                  "these hosts until the data center has imported the disk")
        return 0

    def seed_import(self) -> int:
        cipher = wiring.replication_cipher(self.cfg)
        progress = DiskProgress("import")
        with self.stored() as store, one_operation(store.root), seed_mounts.opened(
                self.args.device, RECOVER, Path(self.cfg.seed.mount_root),
                writable=False) as root:
            try:
                done = import_recovery(store, cipher, DiskLayout(root), progress,
                                       self._disk_reporter("seed import"))
            except DamagedDisk as exc:
                return self._print_damage(exc)
            finally:
                self.end_echo()
        if self.args.json:
            print(json.dumps({"imported": done, "progress": progress.to_json()}, indent=1))
        else:
            print(f"{progress.message}; {progress.done_objects} objects checked and read")
        return 0

    def seed_status(self) -> int:
        with self.stored() as store:
            seed = seed_pending.get(store.index)
        if self.args.json:
            print(json.dumps({"pending_seed": seed}, indent=1))
        elif not seed:
            print("no seed pending: replication sends everything over the link")
        else:
            print(f"seed {seed['state']} since {_ts(seed['since'])}: hosts "
                  f"{', '.join(seed['hosts'])} ({len(seed['snapshots'])} snapshots) wait for "
                  "the data center's import; replication holds them until then")
        return 0

    def seed_cancel(self) -> int:
        with self.stored() as store:
            was = seed_pending.clear(store.index)
        print("no seed was pending" if not was else
              f"seed of {', '.join(was['hosts'])} cancelled: they replicate over the link now")
        return 0

    def dc_import_seed(self) -> int:
        target, cipher = self._dc_access()
        progress = DiskProgress("import-seed")

        async def go() -> dict:
            try:
                return await import_seed(target, cipher, DiskLayout(Path(self.args.dir)),
                                         progress, self._disk_reporter("import seed"))
            finally:
                await target.close()

        try:
            h = asyncio.run(go())
        except DamagedDisk as exc:
            return self._print_damage(exc)
        finally:
            self.end_echo()
        if self.args.json:
            print(json.dumps({"header": h, "progress": progress.to_json()}, indent=1))
        else:
            print(f"seed of appliance {h.get('appliance')} imported: {len(h['snapshots'])} "
                  f"snapshots ({', '.join(h['hosts'])}), {progress.done_objects} objects "
                  "checked and stored; the appliance marks them replicated on its next pass")
        return 0

    def dc_export_recover(self) -> int:
        target, cipher = self._dc_access()
        progress = DiskProgress("export-recover")
        layout = DiskLayout(Path(self.args.dir))

        async def go() -> dict:
            try:
                return await export_recover(target, cipher, self.args.host, self.args.snapshot,
                                            layout, progress,
                                            self._disk_reporter("export recover", layout))
            finally:
                await target.close()

        try:
            h = asyncio.run(go())
        finally:
            self.end_echo()
        if self.args.json:
            print(json.dumps({"header": h, "progress": progress.to_json()}, indent=1))
        else:
            s = h["snapshots"][0]
            print(f"recovery disk written: {s['host']}/{s['snapshot']}, {h['objects']} objects "
                  f"({human_bytes(progress.done_bytes)}) in {self.args.dir}")
        return 0

    def status(self) -> int:
        with self.stored() as store:
            st = gather_status(self.cfg, store)
        if self.args.json:
            print(json.dumps(st, indent=1))
            return 0
        d = st["daemon"]
        print(f"RDR appliance {st['serial']} (rdr {st['version']}), data in {st['data_dir']}")
        where = "running on " + ", ".join(d["addresses"]) if d["running"] else "NOT RUNNING"
        print(f"  daemon: {where}")
        if st["degraded"]:
            print(f"  DEGRADED: {'; '.join(st['degraded'].values())}")
        disk = st["disk"]
        print(f"  data disk: {disk['used_percent']:.1f}% used ({disk['level']}), capacity "
              f"{disk['capacity_gb']:.0f} GB")
        b = st["billing"]
        print(f"  {b['month']}: protected {b['protected_gb']:.1f} GB, billable "
              f"{b['billable_gb']:.1f} GB (tier {b['tier']})")
        for h in st["hosts"]:
            rate = "-" if h["window_success_rate"] is None else \
                f"{h['window_success_rate'] * 100:.0f}%"
            print(f"  host {h['host']:20} last backup {_ts(h['last_backup'])}, windows {rate}"
                  f"{', missed ' + ', '.join(h['missed_days']) if h['missed_days'] else ''}")
        r = st["replication"]
        if r is not None:
            behind = "-" if r["lag"]["seconds"] is None else f"{r['lag']['seconds']:.0f} s"
            print(f"  replication: {r['lag']['snapshots']} snapshots behind ({behind}), tunnel "
                  f"{r['tunnel']['state']}")
        hw = st["hardware"]
        if hw:
            for dev, disk_state in hw["disks"].items():
                print(f"  disk {dev}: {'present' if disk_state['present'] else 'MISSING'}, "
                      f"{disk_state['io_errors']} I/O errors")
            for ifname, up in hw["links"].items():
                print(f"  link {ifname}: {'up' if up else 'DOWN'}")
        for kind, j in st["jobs"].items():
            print(f"  last {kind}: {j['state']} {_ts(j['finished_at'])} {j['message']}")
        if st["damaged_chunks"]:
            print(f"  {st['damaged_chunks']} damaged chunks await re-upload")
        return 0

    def tokens_add(self) -> int:
        with self.stored(create=True) as store:
            token = store.index.add_api_token(self.args.name, self.args.scope)
        print(f"admin API token {self.args.name}, scope {self.args.scope} "
              f"({_SCOPE_TEXT[self.args.scope]}; no host data), shown once:")
        print(token)
        return 0

    def tokens_scope(self) -> int:
        with self.stored() as store:
            store.index.set_api_token_scope(self.args.name, self.args.scope)
        print(f"admin API token {self.args.name} now has scope {self.args.scope} "
              f"({_SCOPE_TEXT[self.args.scope]})")
        return 0

    def tokens_list(self) -> int:
        with self.stored() as store:
            rows = store.index.api_tokens()
        for t in rows:
            print(f"{t['name']:24} {t['scope']:8} created {_ts(t['created_at'])}")
        return 0

    def tokens_revoke(self) -> int:
        with self.stored() as store:
            store.index.revoke_api_token(self.args.name)
        print(f"admin API token {self.args.name} revoked")
        return 0

    def _new_password(self) -> str:
        """Asked twice on a terminal; one line on stdin with --password-stdin (scripts)."""
        if self.args.password_stdin:
            pw = sys.stdin.readline().rstrip("\n")
        else:
            import getpass

            if not sys.stdin.isatty():
                raise StoreError("no_terminal", "no terminal to ask for the password; "
                                 "use --password-stdin")
            pw = getpass.getpass(f"password for {self.args.name}: ")
            if getpass.getpass("again: ") != pw:
                raise StoreError("password_mismatch", "the two passwords differ")
        check_password_rules(pw)
        return pw

    def admin_add(self) -> int:
        pw = self._new_password()
        with self.stored(create=True) as store:
            Accounts(store.index).add(self.args.name, pw)
        print(f"admin account {self.args.name} created; sign in at https://<appliance>/")
        return 0

    def admin_passwd(self) -> int:
        pw = self._new_password()
        with self.stored() as store:
            Accounts(store.index).set_password(self.args.name, pw)
        print(f"password of {self.args.name} changed; its sessions were signed out")
        return 0

    def admin_remove(self) -> int:
        with self.stored() as store:
            Accounts(store.index).remove(self.args.name)
        print(f"admin account {self.args.name} removed")
        return 0

    def admin_unlock(self) -> int:
        with self.stored() as store:
            Accounts(store.index).unlock(self.args.name)
        print(f"sign-in lockout of {self.args.name} lifted (the running daemon applies it at "
              "the next sign-in)")
        return 0

    def admin_list(self) -> int:
        with self.stored() as store:
            rows = Accounts(store.index).list()
        for a in rows:
            print(f"{a['name']:24} created {_ts(a['created_at'])}")
        return 0

    def hosts_token(self) -> int:
        with self.stored() as store:
            token = store.rotate_token(self.args.name)
        print(f"new token for {self.args.name} (the old one no longer works):")
        print(token)
        return 0

    def hosts_list(self) -> int:
        with self.stored() as store:
            hosts = store.index.hosts()
        if self.args.json:
            print(json.dumps(hosts, indent=1))
            return 0
        print(f"{'HOST':24} {'SNAPSHOTS':>9}  {'RETENTION':10} LAST BACKUP")
        for h in hosts:
            print(f"{h['name']:24} {h['snapshots']:>9}  "
                  f"{h['policy'] or self.cfg.retention.policy:10} {_ts(h['last_backup'])}")
        return 0

    def snapshots(self) -> int:
        with self.stored() as store:
            if self.args.host and not store.index.host_exists(self.args.host):
                raise StoreError("no_such_host", f"no host named {self.args.host!r}")
            rows = store.index.snapshots(self.args.host)
        if self.args.json:
            print(json.dumps([r.to_json() for r in rows], indent=1))
            return 0
        print(f"{'HOST':20} {'SNAPSHOT':22} {'FILES':>9} {'SIZE':>10} {'NEW':>10}  REPLICATED")
        for r in rows:
            print(f"{r.host:20} {r.snapshot:22} {r.file_count:>9} "
                  f"{human_bytes(r.logical_size):>10} {human_bytes(r.new_bytes):>10}  "
                  f"{'yes' if r.replicated_at else 'no'}{'  protected' if r.protected else ''}")
        return 0

    def protect(self) -> int:
        with self.stored() as store:
            store.protect(self.args.host, self.args.snapshot, not self.args.off)
        print(f"{self.args.host}/{self.args.snapshot}: "
              f"{'no longer protected' if self.args.off else 'protected from prune'}")
        return 0

    def prune(self) -> int:
        with self.stored() as store:
            try:
                decisions = self.maintenance(store).prune(
                    [self.args.host] if self.args.host else None, self.args.dry_run,
                    self.args.force, self.echo("prune"))
            finally:
                self.end_echo()
        if self.args.force:
            print("rdr: warning: --force removes snapshots not yet replicated to the data "
                  "center", file=sys.stderr)
        if self.args.json:
            print(json.dumps([d.to_json() for d in decisions], indent=1))
            return 0
        verb = "would remove" if self.args.dry_run else "removed"
        for d in decisions:
            print(f"{'keep  ' if d.keep else 'REMOVE'} {d.host:20} {d.snapshot:22} {d.reason}")
        gone = sum(not d.keep for d in decisions)
        print(f"{verb} {gone} of {len(decisions)} snapshots")
        return 0

    def gc(self) -> int:
        with self.stored() as store:
            try:
                res = self.maintenance(store).gc(self.args.dry_run, self.echo("gc"))
            finally:
                self.end_echo()
        if self.args.json:
            print(json.dumps(res.to_json(), indent=1))
            return 0
        verb = "would free" if res.dry_run else "freed"
        young = f", {res.chunks_too_young} too recent to collect" if res.chunks_too_young else ""
        print(f"{verb} {human_bytes(res.bytes_removed)} in {res.chunks_removed} chunks; "
              f"{res.live_chunks} chunks in use by {res.snapshots} snapshots{young}")
        return 0

    def verify(self) -> int:
        with self.stored() as store:
            try:
                res = self.maintenance(store).verify(self.args.sample, self.args.rate,
                                                     self.echo("verify"))
            finally:
                self.end_echo()
        if self.args.json:
            print(json.dumps(res.to_json(), indent=1))
        else:
            print(f"checked {res.chunks_checked} of {res.chunks_total} chunks "
                  f"({human_bytes(res.bytes_checked)}) and {res.snapshots_checked} snapshots")
            for cid in res.damaged:
                print(f"  damaged chunk {cid}: quarantined")
            for a in res.affected:
                print(f"  affected snapshot {a['host']}/{a['snapshot']}: {a['reason']}")
            print("OK: all checked data is intact" if res.ok else
                  "PROBLEMS FOUND: the next backup of each affected host re-sends what it "
                  "still has")
        return 0 if res.ok else 3

    def rebuild_index(self) -> int:
        try:
            res = rebuild_index(self.cfg.data_dir, self.echo("rebuild-index"))
        finally:
            self.end_echo()
        print(f"index rebuilt: {res['hosts']} hosts, {res['snapshots']} snapshots"
              f"{'; old index kept at ' + res['old_index'] if res['old_index'] else ''}")
        for name in res["hosts_without_record"]:
            print(f"  host {name} had no record: issue it a token with 'rdr hosts token {name}'")
        return 0

    def jobs(self) -> int:
        with self.stored() as store:
            rows = store.jobs(self.args.kind, self.args.limit)
        if self.args.json:
            print(json.dumps(rows, indent=1))
            return 0
        print(f"{'ID':>5} {'KIND':14} {'STARTED':21} {'STATE':12} MESSAGE")
        for j in rows:
            print(f"{j['id']:>5} {j['kind']:14} {_ts(j['started_at']):21} {j['state']:12} "
                  f"{j['message']}")
        return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rdr", description="RDR backup appliance administration")
    p.add_argument("--version", action="version", version=f"rdr {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="appliance TOML config (default: embedded default, "
                        "or $RDR_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", parents=[common], help="run the appliance daemon")
    s.set_defaults(run=Cli.serve)

    hosts = sub.add_parser("hosts", help="manage backed-up hosts")
    hsub = hosts.add_subparsers(dest="hosts_command", required=True, metavar="ACTION")
    a = hsub.add_parser("add", parents=[common], help="register a host and print its token")
    a.add_argument("name")
    a.set_defaults(run=Cli.hosts_add)
    hs = hsub.add_parser("set", parents=[common], help="change a host's settings")
    hs.add_argument("name")
    hs.add_argument("--policy", help="retention D-W-M (8-5-4, 30-0-0, 7-0-0); '' = default")
    hs.add_argument("--window", help="backup window start HH:MM (17:00 or 01:00 usually; "
                    "12 hours long); '' = default")
    hs.add_argument("--paths", nargs="*", metavar="PATH", help="absolute paths the agent "
                    "backs up daily (none: no scheduled backups)")
    hs.add_argument("--exclude", nargs="*", metavar="GLOB", help="names (or, with a '/', "
                    "absolute paths) to skip")
    hs.add_argument("--bandwidth", type=int, metavar="KBPS", help="LAN upload limit in "
                    "kbit/s (0 = unlimited)")
    hs.add_argument("--dump-command", metavar="CMD", help="run before each backup, its "
                    "stdout stored (e.g. 'pg_dump mydb'); '' = none")
    hs.add_argument("--dump-name", metavar="NAME", help="file name of the dump (db.sql)")
    hs.add_argument("--timezone", metavar="ZONE", help="the window's time zone (default: "
                    "the appliance's); '' = default")
    hs.add_argument("--one-file-system", choices=("yes", "no"),
                    help="do not cross into other mounted filesystems")
    hs.set_defaults(run=Cli.hosts_set)
    hw = hsub.add_parser("show", parents=[common], help="a host's plan, agent, recent runs "
                         "and the files its last backup missed")
    hw.add_argument("name")
    hw.add_argument("--json", action="store_true")
    hw.set_defaults(run=Cli.hosts_show)
    for action, fn, text in (("backup", Cli.hosts_backup, "back the host up now"),
                             ("pause", Cli.hosts_pause, "pause the host's backups"),
                             ("resume", Cli.hosts_resume, "resume the host's backups")):
        hp = hsub.add_parser(action, parents=[common], help=text)
        hp.add_argument("name")
        hp.set_defaults(run=fn)
    ht = hsub.add_parser("token", parents=[common], help="issue a new token (revokes the old)")
    ht.add_argument("name")
    ht.set_defaults(run=Cli.hosts_token)
    lst = hsub.add_parser("list", parents=[common], help="list hosts")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(run=Cli.hosts_list)

    sn = sub.add_parser("snapshots", parents=[common], help="list snapshots")
    sn.add_argument("host", nargs="?")
    sn.add_argument("--json", action="store_true")
    sn.set_defaults(run=Cli.snapshots)

    pr = sub.add_parser("protect", parents=[common], help="protect a snapshot from prune")
    pr.add_argument("host")
    pr.add_argument("snapshot")
    pr.add_argument("--off", action="store_true", help="remove the protection")
    pr.set_defaults(run=Cli.protect)

    pn = sub.add_parser("prune", parents=[common], help="apply retention, explaining each "
                        "decision")
    pn.add_argument("--host")
    pn.add_argument("--dry-run", action="store_true")
    pn.add_argument("--force", action="store_true",
                    help="also remove snapshots not yet replicated to the data center")
    pn.add_argument("--json", action="store_true")
    pn.set_defaults(run=Cli.prune)

    g = sub.add_parser("gc", parents=[common], help="delete chunks no snapshot references")
    g.add_argument("--dry-run", action="store_true")
    g.add_argument("--json", action="store_true")
    g.set_defaults(run=Cli.gc)

    v = sub.add_parser("verify", parents=[common], help="re-read chunks and check snapshots")
    v.add_argument("--sample", type=_percent, default=100.0, metavar="PERCENT",
                   help="check this share of the chunks (default all)")
    v.add_argument("--rate", type=_positive, default=None, metavar="MB/s",
                   help="read at most this fast")
    v.add_argument("--json", action="store_true")
    v.set_defaults(run=Cli.verify)

    st = sub.add_parser("store", help="store administration")
    ssub = st.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    rb = ssub.add_parser("rebuild-index", parents=[common],
                         help="rebuild the SQLite index from the files (daemon stopped)")
    rb.set_defaults(run=Cli.rebuild_index)

    sta = sub.add_parser("status", parents=[common], help="the appliance's health at a glance")
    sta.add_argument("--json", action="store_true")
    sta.set_defaults(run=Cli.status)

    us = sub.add_parser("usage", parents=[common], help="monthly usage, billing and service "
                        "levels")
    us.add_argument("--month", help="YYYY-MM (default: this month)")
    fmt = us.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    us.set_defaults(run=Cli.usage)

    rp = sub.add_parser("replicate", parents=[common], help="replicate to the data center now")
    rp.add_argument("--wait", action="store_true",
                    help="if a pass is running (e.g. in the daemon), wait for it, then run "
                    "(without it: queue a follow-up pass and exit 4)")
    rp.add_argument("--json", action="store_true")
    rp.set_defaults(run=Cli.replicate)
    rs = sub.add_parser("replication", help="replication state")
    rsub = rs.add_subparsers(dest="replication_command", required=True, metavar="ACTION")
    rst = rsub.add_parser("status", parents=[common], help="lag, last checkpoint, tunnel")
    rst.add_argument("--json", action="store_true")
    rst.set_defaults(run=Cli.replication_status)

    dc = sub.add_parser("dc", help="data-center side tools (need only the bucket and key)")
    dcsub = dc.add_subparsers(dest="dc_command", required=True, metavar="ACTION")
    access = argparse.ArgumentParser(add_help=False)
    g = access.add_argument_group("data center access (default: the config's [replication])")
    g.add_argument("--endpoint")
    g.add_argument("--bucket")
    g.add_argument("--access-key", dest="access_key")
    g.add_argument("--secret-key", dest="secret_key")
    g.add_argument("--directory", help="a local directory copy instead of S3")
    g.add_argument("--key-file", dest="key_file", help="the appliance's (escrowed) data key")
    ds = dcsub.add_parser("snapshots", parents=[common, access], help="snapshots held there")
    ds.add_argument("--json", action="store_true")
    ds.set_defaults(run=Cli.dc_snapshots)
    dv = dcsub.add_parser("verify", parents=[common, access], help="compare with this store")
    dv.add_argument("--deep", action="store_true", help="download and check every chunk")
    dv.add_argument("--json", action="store_true")
    dv.set_defaults(run=Cli.dc_verify)
    dr = dcsub.add_parser("restore", parents=[common, access],
                          help="restore a snapshot from the data center alone")
    dr.add_argument("--host", required=True)
    dr.add_argument("--snapshot", default="latest")
    dr.add_argument("paths", nargs="*", metavar="PATH")
    dr.add_argument("--to", required=True, metavar="DIR")
    dr.add_argument("--json", action="store_true")
    dr.set_defaults(run=Cli.dc_restore)

    di = dcsub.add_parser("import-seed", parents=[common, access],
                          help="upload a Rapid Protect disk (mounted at DIR) to the bucket")
    di.add_argument("dir", metavar="DIR")
    di.add_argument("--json", action="store_true")
    di.set_defaults(run=Cli.dc_import_seed)
    de = dcsub.add_parser("export-recover", parents=[common, access],
                          help="write a Rapid Recover disk (mounted at DIR) for one snapshot")
    de.add_argument("--host", required=True)
    de.add_argument("--snapshot", default="latest")
    de.add_argument("dir", metavar="DIR")
    de.add_argument("--json", action="store_true")
    de.set_defaults(run=Cli.dc_export_recover)

    sd = sub.add_parser("seed", help="Rapid Protect / Rapid Recover disks")
    sdsub = sd.add_subparsers(dest="seed_command", required=True, metavar="ACTION")
    se = sdsub.add_parser("export", parents=[common],
                          help="write the first replication to a disk labelled RDR-PROTECT")
    se.add_argument("--device", required=True, help="the disk's filesystem, e.g. /dev/sdb1")
    se.add_argument("--host", dest="hosts", action="append", metavar="HOST",
                    help="a host to seed (repeat; default: every host)")
    se.add_argument("--json", action="store_true")
    se.set_defaults(run=Cli.seed_export)
    si = sdsub.add_parser("import", parents=[common],
                          help="check and import a disk labelled RDR-RECOVER into the store")
    si.add_argument("--device", required=True, help="the disk's filesystem, e.g. /dev/sdb1")
    si.add_argument("--json", action="store_true")
    si.set_defaults(run=Cli.seed_import)
    ss = sdsub.add_parser("status", parents=[common], help="the seed waiting for the DC")
    ss.add_argument("--json", action="store_true")
    ss.set_defaults(run=Cli.seed_status)
    sc = sdsub.add_parser("cancel", parents=[common],
                          help="forget a pending seed (lost disk): replicate over the link")
    sc.set_defaults(run=Cli.seed_cancel)

    tk = sub.add_parser("tokens", help="admin API tokens (for the provider's tools)")
    tsub = tk.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    ta = tsub.add_parser("add", parents=[common], help="create a token and print it once")
    ta.add_argument("name")
    ta.add_argument("--scope", choices=TOKEN_SCOPES, default="metrics",
                    help="metrics: /metrics only (Prometheus; the default); read: also the "
                    "appliance-wide API's reads; admin: also changes (plans, backups)")
    ta.set_defaults(run=Cli.tokens_add)
    tsc = tsub.add_parser("scope", parents=[common], help="change a token's scope")
    tsc.add_argument("name")
    tsc.add_argument("scope", choices=TOKEN_SCOPES)
    tsc.set_defaults(run=Cli.tokens_scope)
    tl = tsub.add_parser("list", parents=[common], help="list tokens")
    tl.set_defaults(run=Cli.tokens_list)
    tr = tsub.add_parser("revoke", parents=[common], help="revoke a token")
    tr.add_argument("name")
    tr.set_defaults(run=Cli.tokens_revoke)

    ad = sub.add_parser("admin", help="admin accounts for the LAN restore page")
    asub = ad.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    for action, helptext in (("add", "create an account (asks for its password)"),
                             ("passwd", "change an account's password"),
                             ("remove", "remove an account"), ("list", "list accounts"),
                             ("unlock", "lift an account's sign-in lockout")):
        ap = asub.add_parser(action, parents=[common], help=helptext)
        if action != "list":
            ap.add_argument("name")
        if action in ("add", "passwd"):
            ap.add_argument("--password-stdin", action="store_true",
                            help="read the password from the first line of stdin")
        ap.set_defaults(run=getattr(Cli, f"admin_{action}"))

    jb = sub.add_parser("jobs", parents=[common], help="history of maintenance jobs")
    jb.add_argument("--kind")
    jb.add_argument("--limit", type=int, default=50)
    jb.add_argument("--json", action="store_true")
    jb.set_defaults(run=Cli.jobs)
    return p


def _percent(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < v <= 100:
        raise argparse.ArgumentTypeError("must be in (0, 100]")
    return v


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return v


#: Every error the appliance's own code raises on purpose, mapped in one place to one line
#: and exit 1 (a damaged or missing chunk read from the store or the data center included).
APPLIANCE_ERRORS: tuple[type[Exception], ...] = (
    ConfigError, StoreError, TargetError, DcError, ReplicationKeyError, DecryptError,
    SeedError, ChunkError, CatalogError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The daemon logs; admin commands say one thing at the end (their result or one error).
    logging.basicConfig(level=logging.INFO if args.command == "serve" else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    run: Callable[[Cli], int] = args.run
    try:
        return run(Cli(args))
    except APPLIANCE_ERRORS as exc:
        print(f"rdr: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"rdr: error: {exc.strerror or exc}"
              f"{': ' + str(exc.filename) if exc.filename else ''}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
