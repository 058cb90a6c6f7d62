"""`rdr-agent`: back up this host to the appliance, list its snapshots, restore, show the
plan the appliance holds for it, and `run` as a service that carries out the backups the
appliance schedules and the restores pushed from its page.

Exit codes: 0 success; 1 error (one line on stderr); 3 finished, but some files could not be
read (backup) or written (restore) -- they are listed in the summary; 4 `run --once` found no
job within --wait; 130 interrupted (the backup session stays open on the appliance and the
next run resumes it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rdr_format import __version__

if TYPE_CHECKING:  # imported where used: start-up pays only for the command it runs
    from concurrent.futures import ThreadPoolExecutor

    from rdr_agent.archiver import BackupResult
    from rdr_agent.progress import ProgressBar
    from rdr_agent.settings import AgentSettings
    from rdr_restore.engine import RestoreSummary

EXIT_PARTIAL = 3


def _scan_total(sources: list[bytes], excludes: list[str], one_fs: bool,
                bar: ProgressBar) -> None:
    """Count the bytes to back up, in the background, so the bar can show a percentage."""
    import stat

    from rdr_agent.walker import Walker

    total = 0
    for _, children in Walker(sources, excludes, one_fs).blocks():
        for c in children:
            if stat.S_ISREG(c.st.st_mode):
                total += c.st.st_size
    bar.total_bytes = total


def print_backup_summary(res: BackupResult) -> None:
    from rdr_agent.util.textfmt import human_bytes as human

    s = res.stats
    print(f"snapshot {res.snapshot} of {res.host} committed"
          f"{' (resumed an interrupted session)' if res.resumed else ''}")
    print(f"  files {s.files}, dirs {s.dirs}, other {s.other}, {human(s.bytes_total)} in all")
    print(f"  read {human(s.bytes_read)} from {s.files_read} files, "
          f"{s.files_unchanged} files unchanged (not read)")
    print(f"  new {human(s.bytes_new)} in {s.chunks_new} chunks, "
          f"{s.chunks_known} chunks already on the appliance")
    print(f"  duration {res.duration:.1f} s")
    if s.unreadable:
        print(f"  {len(s.unreadable)} files could not be read and are NOT in this backup:")
        for path, err in s.unreadable[:50]:
            print(f"    {path}: {err}")
        if len(s.unreadable) > 50:
            print(f"    ... and {len(s.unreadable) - 50} more (see --json)")


async def cmd_backup(args: argparse.Namespace, st: AgentSettings) -> int:
    import json
    import threading

    from rdr_agent.archiver import Archiver, BackupStats
    from rdr_agent.client import ApplianceClient
    from rdr_agent.progress import ProgressBar
    from rdr_agent.settings import SettingsError
    from rdr_agent.util.textfmt import human_bytes as human

    if args.stdin:
        if not args.name or args.paths:
            raise SettingsError("--stdin needs --name NAME and no paths")
        name = os.fsencode(args.name)
        if b"/" in name or name in (b".", b".."):
            raise SettingsError("--name must be a plain file name")
    elif not args.paths:
        raise SettingsError("give at least one path to back up (or --stdin --name NAME)")
    if args.source is not None:
        from rdr_format.sources import SourceError, check_explicit
        try:
            check_explicit(args.source)
        except SourceError as exc:
            raise SettingsError(str(exc)) from None
    sources = [os.fsencode(os.path.abspath(p)) for p in args.paths]
    for src in sources:
        if not os.path.lexists(src):
            raise SettingsError(f"{os.fsdecode(src)} does not exist")

    bar = ProgressBar("backup", enabled=None if not args.json else False)
    if bar.enabled and not args.stdin:
        threading.Thread(target=_scan_total, args=(sources, args.exclude, args.one_file_system,
                                                  bar), daemon=True).start()

    def progress(s: BackupStats) -> None:
        bar.update(s.bytes_read + s.bytes_unchanged, lambda: (
            f"{s.files} files, {human(s.bytes_read)} read, {human(s.bytes_new)} new"))

    async with ApplianceClient(st.endpoint) as client:
        archiver = Archiver(client, st.state_dir, on_progress=progress)
        try:
            if args.stdin:
                res = await archiver.backup(stdin_name=name, source=args.source)
            else:
                res = await archiver.backup(sources, excludes=args.exclude,
                                            one_file_system=args.one_file_system,
                                            source=args.source)
        finally:
            bar.close()
    if args.json:
        print(json.dumps(res.to_json(), indent=1))
    else:
        print_backup_summary(res)
    return EXIT_PARTIAL if res.stats.unreadable else 0


async def cmd_snapshots(args: argparse.Namespace, st: AgentSettings) -> int:
    import json

    from rdr_agent.client import ApplianceClient
    from rdr_agent.util.textfmt import human_bytes as human

    async with ApplianceClient(st.endpoint) as client:
        snaps = await client.snapshots()
    if args.json:
        print(json.dumps(snaps, indent=1))
        return 0
    print(f"{'SNAPSHOT':22} {'FILES':>9} {'SIZE':>10}  {'REPLICATED':10}  SOURCE")
    for s in snaps:
        print(f"{s['snapshot']:22} {s['file_count']:>9} {human(s['logical_size']):>10}  "
              f"{'yes' if s['replicated'] else 'no':10}  {s.get('source') or '-'}")
    return 0


async def cmd_restore(args: argparse.Namespace, st: AgentSettings | None) -> int:
    import json
    from concurrent.futures import ThreadPoolExecutor

    from rdr_agent.progress import ProgressBar
    from rdr_agent.util.textfmt import human_bytes as human

    target = Path(args.to)
    target.mkdir(parents=True, exist_ok=True)
    include = [os.fsencode(os.path.normpath(p)).lstrip(b"/") for p in args.paths] or None
    if include and any(p in (b"", b".") for p in include):
        include = None
    bar = ProgressBar("restore", enabled=None if not args.json else False)
    pool = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="rdr-restore")
    try:
        if args.from_disk:
            summary = await _restore_from_disk(args, target, include, pool, bar)
        else:
            summary = await _restore_from_appliance(args, st, target, include, pool, bar)
    finally:
        bar.close()
        pool.shutdown(wait=True)
    if args.json:
        print(json.dumps(summary.to_json(), indent=1))
    else:
        print(f"restored {summary.files} files, {summary.dirs} dirs, {summary.symlinks} "
              f"symlinks, {human(summary.bytes_written)} to {target} in "
              f"{summary.duration:.1f} s")
        if summary.errors:
            print(f"  {len(summary.errors)} entries could not be restored:")
            for path, err in summary.errors[:50]:
                print(f"    {path}: {err}")
    return EXIT_PARTIAL if summary.errors else 0


async def _restore_from_disk(args: argparse.Namespace, target: Path,
                             include: list[bytes] | None, pool: ThreadPoolExecutor,
                             bar: ProgressBar) -> RestoreSummary:
    """Rapid Recover with the disk plugged into this server: every object on it is checked
    before a file is written; needs the appliance's data key."""
    from rdr_agent.settings import SettingsError
    from rdr_agent.util.textfmt import human_bytes as human
    from rdr_format.objects import ObjectCipher, load_or_create_key
    from rdr_restore.disk import RECOVER, DiskLayout, restore_from_disk

    if not args.key_file:
        raise SettingsError("--from-disk needs --key-file (the appliance's data key)")
    root = Path(args.from_disk)
    header = DiskLayout(root).need(RECOVER, complete=True)
    host = args.host or header["hosts"][0]
    cipher = ObjectCipher(load_or_create_key(Path(args.key_file), create=False))
    _, summary = await restore_from_disk(
        root, cipher, host, args.snapshot, target, include, pool,
        on_progress=lambda files, nbytes: bar.update(
            nbytes, lambda: f"{files} files, {human(nbytes)}"))
    return summary


async def _restore_from_appliance(args: argparse.Namespace, st: AgentSettings, target: Path,
                                  include: list[bytes] | None, pool: ThreadPoolExecutor,
                                  bar: ProgressBar) -> RestoreSummary:
    from rdr_agent.catalog_cache import CatalogCache
    from rdr_agent.client import ApplianceClient
    from rdr_agent.restore import restore_snapshot
    from rdr_agent.util.textfmt import human_bytes as human

    async with ApplianceClient(st.endpoint) as client:
        me = await client.whoami()
        cache = CatalogCache(st.state_dir / "catalog-cache" / me["host"])
        snap = args.snapshot
        if snap == "latest" or args.source is not None:
            snap = await _pick_latest(client, args)
        return await restore_snapshot(
            client, snap, target, include, cache, pool,
            on_progress=lambda files, nbytes: bar.update(
                nbytes, lambda: f"{files} files, {human(nbytes)}"))


async def _pick_latest(client, args: argparse.Namespace) -> str:
    """The snapshot "latest" (or `--source`) means for this restore, said on stderr: the
    newest of the given source, or the newest whose source holds every PATH."""
    import sys

    from rdr_agent import latest
    from rdr_agent.settings import SettingsError

    if args.snapshot != "latest":
        raise SettingsError("--source picks the latest snapshot of a source: give 'latest', "
                            "not a snapshot id")
    rows = await client.snapshots()
    if not latest.has_sources(rows):
        return "latest"  # an appliance from before sources: the host's newest
    if args.source is not None:
        row = latest.newest_of_source(rows, args.source)
        if row is None:
            raise SettingsError(f"no snapshot of source {args.source!r} on the appliance")
    else:
        row = latest.newest_holding(rows, args.paths)
        if row is None:
            raise SettingsError("no snapshot's source holds " + ", ".join(args.paths)
                                + " (see rdr-agent snapshots; or give --source or an id)")
    print(f"using snapshot {row['snapshot']} (source {row['source']}), the latest of its "
          "source", file=sys.stderr)
    return row["snapshot"]


async def cmd_run(args: argparse.Namespace, st: AgentSettings) -> int:
    from rdr_agent.jobs import MAX_POLL_SECONDS, run_service
    from rdr_agent.settings import SettingsError

    if args.once:
        wait = 0 if args.wait is None else args.wait
        if not 0 <= wait <= 86400:
            raise SettingsError("--wait must be 0 to 86400 seconds with --once")
    else:
        wait = 25 if args.wait is None else args.wait
        if not 1 <= wait <= MAX_POLL_SECONDS:
            raise SettingsError(f"--wait must be 1 to {MAX_POLL_SECONDS} seconds (the "
                                "length of one poll)")
    return await run_service(st, once=args.once, wait=wait, as_json=args.json)


async def cmd_plan(args: argparse.Namespace, st: AgentSettings) -> int:
    import json

    from rdr_agent.client import ApplianceClient

    async with ApplianceClient(st.endpoint) as client:
        res = await client.plan()
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    plan = res["plan"]
    print(f"plan of {res['host']}{' (PAUSED)' if res['paused'] else ''}:")
    if not plan["paths"]:
        print("  no scheduled backups (the appliance has no paths for this host)")
        return 0
    print(f"  paths: {' '.join(plan['paths'])}")
    if plan["excludes"]:
        print(f"  excludes: {' '.join(plan['excludes'])}")
    if plan["bandwidth_kbps"]:
        print(f"  LAN limit: {plan['bandwidth_kbps']} kbit/s")
    if plan["dump_command"]:
        allowed = "" if st.allow_dump_commands else \
            " (NOT run here: allow_dump_commands is off)"
        print(f"  before each backup: {plan['dump_command']} > {plan['dump_name']}{allowed}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rdr-agent", description="Back up this host to the RDR "
                                "appliance and restore from it")
    p.add_argument("--version", action="version", version=f"rdr-agent {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("appliance")
    g.add_argument("--url", help="appliance URL, e.g. https://appliance:8443 ($RDR_URL)")
    # A token on the command line is readable by every user of the host (ps, /proc): it is
    # taken only from a file, the environment or the config file. --token stays parsed so
    # it can be refused with one clear line instead of an argparse usage dump.
    g.add_argument("--token", help=argparse.SUPPRESS)
    g.add_argument("--token-file", metavar="PATH",
                   help="file holding this host's token ($RDR_TOKEN_FILE; or $RDR_TOKEN, or "
                   "token in the config file)")
    g.add_argument("--fingerprint", help="pinned SHA-256 of the appliance certificate "
                   "($RDR_FINGERPRINT)")
    g.add_argument("--ca", help="CA file to verify the appliance certificate ($RDR_CA)")
    g.add_argument("--config", help="agent TOML config file ($RDR_AGENT_CONFIG)")
    g.add_argument("--state-dir", help="where the agent keeps its caches ($RDR_STATE_DIR)")
    common.add_argument("--json", action="store_true", help="print the summary as JSON")
    common.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("backup", parents=[common], help="back up paths or stdin")
    b.add_argument("paths", nargs="*", metavar="PATH")
    b.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="skip names (or, with a '/', absolute paths) matching GLOB; repeatable")
    b.add_argument("--one-file-system", action="store_true",
                   help="do not cross into other mounted filesystems")
    b.add_argument("--stdin", action="store_true", help="back up standard input as one file")
    b.add_argument("--name", help="file name for --stdin, e.g. db.sql")
    b.add_argument("--source", help="name the backup source (retention and 'latest' work per "
                   "source; default: the paths, or stdin:NAME)")
    b.set_defaults(run=cmd_backup)

    s = sub.add_parser("snapshots", parents=[common], help="list this host's snapshots")
    s.set_defaults(run=cmd_snapshots)

    r = sub.add_parser("restore", parents=[common], help="restore a snapshot")
    r.add_argument("snapshot", help="snapshot id, or 'latest'")
    r.add_argument("paths", nargs="*", metavar="PATH", help="restore only these paths")
    r.add_argument("--to", required=True, metavar="DIR", help="directory to restore into")
    r.add_argument("--source", help="with 'latest': the latest snapshot of this source "
                   "(default: the latest whose source holds every PATH)")
    r.add_argument("--from-disk", metavar="DIR", help="restore from a Rapid Recover disk "
                   "mounted at DIR instead of the appliance")
    r.add_argument("--key-file", help="with --from-disk: the appliance's data key")
    r.add_argument("--host", help="with --from-disk: whose snapshot (default: the disk's)")
    r.set_defaults(run=cmd_restore)

    j = sub.add_parser("run", parents=[common], help="the agent service: scheduled backups "
                       "and pushed restores from the appliance (polls it; stops on SIGTERM)",
                       description="Poll the appliance for this host's backup runs (its "
                       "daily window, 'back up now') and restore jobs, and carry them out. "
                       "The plan (paths, excludes, LAN limit, dump command) comes from the "
                       "appliance; a dump command runs only with allow_dump_commands = yes "
                       "($RDR_ALLOW_DUMP_COMMANDS). Pushed restores write only below "
                       "absolute directories, and only below restore_roots "
                       "($RDR_RESTORE_ROOTS) when that is set.")
    j.add_argument("--once", action="store_true",
                   help="handle at most one job, then exit: 0 restored, 3 some entries "
                   "failed, 1 failed, 4 no job came")
    j.add_argument("--wait", type=int, metavar="SECONDS",
                   help="with --once: how long to wait for a job (default 0); otherwise the "
                   "length of one poll (default 25, at most 60)")
    j.set_defaults(run=cmd_run)

    pl = sub.add_parser("plan", parents=[common], help="show the backup plan the appliance "
                        "holds for this host")
    pl.set_defaults(run=cmd_plan)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # --help, --version, usage errors: end here
    import asyncio
    import logging

    from rdr_agent.errors import ApplianceError, ConnectError
    from rdr_agent.settings import SettingsError, resolve
    from rdr_agent.util.memory import tune_agent_malloc
    from rdr_restore.errors import DcError, SeedError

    tune_agent_malloc()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="rdr-agent: %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        if getattr(args, "from_disk", None):  # no appliance involved
            return asyncio.run(args.run(args, None))
        if args.token is not None:
            raise SettingsError("--token would show the token to every user of this host "
                                "(ps); use --token-file PATH, RDR_TOKEN or the config file")
        settings = resolve({"url": args.url, "token_file": args.token_file,
                            "fingerprint": args.fingerprint, "ca": args.ca,
                            "state_dir": args.state_dir}, args.config)
        return asyncio.run(args.run(args, settings))
    except ApplianceError as exc:
        print(f"rdr-agent: error: the appliance refused: {exc.message} ({exc.status} "
              f"{exc.code})", file=sys.stderr)
    # (CatalogError and ChunkError are ValueErrors: their modules load only with a command)
    except (SettingsError, ConnectError, ValueError, SeedError, DcError) as exc:
        print(f"rdr-agent: error: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"rdr-agent: error: {exc.strerror or exc}"
              f"{': ' + os.fsdecode(exc.filename) if exc.filename else ''}", file=sys.stderr)
    except KeyboardInterrupt:
        print("rdr-agent: interrupted; the next backup resumes where this one stopped",
              file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
