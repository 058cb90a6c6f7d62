"""`rdr-agent`: back up this host to the appliance, list its snapshots, restore, show the
plan the appliance holds for it, and `run` as a service that carries out the backups the
appliance schedules and the restores pushed from its page.

Exit codes (each command's `--help` lists its own, from `exit_table`): 0 success; 1 error
(one line on stderr); 2 bad arguments; 3 finished, but some files could not be read (backup)
or written (restore) -- they are listed in the summary; 4 `run --once` found no job within
--wait; 5 `restore` kept existing entries it was not allowed to overwrite; 130 interrupted
(the backup session stays open on the appliance and the next run resumes it); 141 the reader
of the output went away (`| head`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from rdr_format import __version__

if TYPE_CHECKING:  # imported where used: start-up pays only for the command it runs
    from rdr_agent.archiver import BackupResult
    from rdr_agent.progress import ProgressBar
    from rdr_agent.settings import AgentSettings
    from rdr_format.workers import WorkerPool
    from rdr_restore.engine import RestoreSummary

#: `restore --overwrite` (rdr_restore.engine.OVERWRITE_CHOICES, named here so `--help` does
#: not load the engine).
OVERWRITE_CHOICES = ("always", "if-changed", "never")

EXIT_ERROR = 1
EXIT_PARTIAL = 3
EXIT_NO_JOB = 4
#: `restore`: existing entries were kept, not overwritten (--overwrite never, the default).
EXIT_KEPT = 5
EXIT_INTERRUPTED = 130
#: The reader of standard output went away: 128 + SIGPIPE, as a shell reports `cat`.
EXIT_BROKEN_PIPE = 141

#: The codes every command can end with.
COMMON_EXITS = {0: "done", EXIT_ERROR: "error, one line on stderr (bad settings, appliance "
                "unreachable or refusing, TLS verification failed)",
                2: "bad arguments",
                EXIT_INTERRUPTED: "interrupted",
                EXIT_BROKEN_PIPE: "the reader of its output went away (e.g. '| head'): "
                                  "stopped quietly"}


def exit_table(own: dict[int, str]) -> str:
    """The `--help` epilog of one command: the common codes with its own over them."""
    import textwrap

    table = dict(sorted({**COMMON_EXITS, **own}.items()))
    rows = (textwrap.fill(text, 79, initial_indent=f"  {code:<4} ", subsequent_indent=" " * 7)
            for code, text in table.items())
    return "exit codes:\n" + "\n".join(rows)


BACKUP_EXITS = {EXIT_PARTIAL: "committed, but some files could not be read and are not in "
                              "the backup (listed)",
                EXIT_INTERRUPTED: "interrupted: the session stays open on the appliance and "
                                  "the next backup resumes it"}
RESTORE_EXITS = {EXIT_ERROR: "error, one line on stderr, nothing restored (the target "
                             "directory cannot be written, appliance unreachable or "
                             "refusing, no such snapshot)",
                 EXIT_PARTIAL: "finished, but some entries could not be restored (listed)",
                 EXIT_KEPT: "finished, but existing entries were kept, not overwritten "
                            "(listed; see --overwrite)"}
RUN_EXITS = {0: "stopped (SIGTERM), or with --once: the job succeeded",
             EXIT_ERROR: "error, one line on stderr; with --once: the job failed",
             EXIT_PARTIAL: "with --once: the job finished, some entries failed",
             EXIT_NO_JOB: "with --once: no job came within --wait"}


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
    from rdr_agent.util.textfmt import plural

    s = res.stats
    print(f"snapshot {res.snapshot} of {res.host} committed"
          f"{' (resumed an interrupted session)' if res.resumed else ''}")
    kinds = [plural(s.files, "file"), plural(s.dirs, "dir"), plural(s.symlinks, "symlink")]
    if s.other:
        kinds.append(f"{plural(s.other, 'special file')} (fifos, devices)")
    print(f"  {', '.join(kinds)}, {human(s.bytes_total)} in all")
    print(f"  read {human(s.bytes_read)} from {plural(s.files_read, 'file')}, "
          f"{plural(s.files_unchanged, 'file')} unchanged (not read)")
    print(f"  new {human(s.bytes_new)} in {plural(s.chunks_new, 'chunk')}, "
          f"{plural(s.chunks_known, 'chunk')} already on the appliance")
    print(f"  duration {res.duration:.1f} s")
    if s.unreadable:
        print(f"  {plural(len(s.unreadable), 'file')} could not be read and "
              f"{'is' if len(s.unreadable) == 1 else 'are'} NOT in this backup:")
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
    from rdr_agent.util.textfmt import plural

    if args.stdin:
        if not args.name or args.paths:
            raise SettingsError("--stdin needs --name NAME and no paths")
        name = os.fsencode(args.name)
        if b"/" in name or name in (b".", b".."):
            raise SettingsError("--name must be a plain file name")
        # `pg_dump db | rdr-agent backup --stdin`: a dump that failed sends nothing, and an
        # empty backup would look like a good one (peek keeps the bytes for the backup).
        if not sys.stdin.buffer.peek(1):
            raise SettingsError("standard input is empty: nothing backed up (did the command "
                                "before '|' fail?)")
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
            f"{plural(s.files, 'file')}, {human(s.bytes_read)} read, "
            f"{human(s.bytes_new)} new"))

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
        # the appliance's ransomware marks (absent from an older appliance)
        mark = ("  SUSPICIOUS" if s.get("suspicious") else
                "  not clean" if s.get("clean") is False else "")
        print(f"{s['snapshot']:22} {s['file_count']:>9} {human(s['logical_size']):>10}  "
              f"{'yes' if s['replicated'] else 'no':10}  {s.get('source') or '-'}{mark}")
    return 0


def _writable_target(to: str) -> Path:
    """The restore's target directory, made if missing; TargetError when it cannot take files
    (permissions, a read-only filesystem): one error before anything is fetched, not one per
    entry."""
    import errno

    from rdr_agent.errors import TargetError

    target = Path(to)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TargetError(f"cannot create the restore target {target}: "
                          f"{exc.strerror or exc}") from None
    if not target.is_dir():
        raise TargetError(f"the restore target {target} is not a directory")
    if not os.access(target, os.W_OK | os.X_OK):
        why = os.strerror(errno.EROFS if _read_only_fs(target) else errno.EACCES)
        raise TargetError(f"cannot write the restore target {target}: {why}")
    return target


def _read_only_fs(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def print_restore_summary(summary: RestoreSummary, target: Path) -> None:
    from rdr_agent.util.textfmt import human_bytes as human
    from rdr_agent.util.textfmt import plural

    print(f"restored {plural(summary.files, 'file')}, {plural(summary.dirs, 'dir')}, "
          f"{plural(summary.symlinks, 'symlink')}, {human(summary.bytes_written)} to "
          f"{target} in {summary.duration:.1f} s")
    if summary.unchanged:
        print(f"  {plural(summary.unchanged, 'entry', 'entries')} already as in the snapshot "
              "(not rewritten)")
    if summary.kept:
        print(f"  {plural(len(summary.kept), 'existing entry', 'existing entries')} kept, not "
              "overwritten (--overwrite if-changed or always replaces them):")
        for path in summary.kept[:50]:
            print(f"    {path}")
        if len(summary.kept) > 50:
            print(f"    ... and {len(summary.kept) - 50} more (see --json)")
    if summary.errors:
        print(f"  {plural(len(summary.errors), 'entry', 'entries')} could not be restored:")
        for path, err in summary.errors[:50]:
            print(f"    {path}: {err}")
        if len(summary.errors) > 50:
            print(f"    ... and {len(summary.errors) - 50} more (see --json)")


async def cmd_restore(args: argparse.Namespace, st: AgentSettings | None) -> int:
    import json

    from rdr_agent.progress import ProgressBar
    from rdr_format.workers import WorkerPool

    target = _writable_target(args.to)
    include = [os.fsencode(os.path.normpath(p)).lstrip(b"/") for p in args.paths] or None
    if include and any(p in (b"", b".") for p in include):
        include = None
    bar = ProgressBar("restore", enabled=None if not args.json else False)
    pool = WorkerPool(max(2, os.cpu_count() or 2), "rdr-restore")
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
        print_restore_summary(summary, target)
    if summary.errors:
        return EXIT_PARTIAL
    return EXIT_KEPT if summary.kept else 0


async def _restore_from_disk(args: argparse.Namespace, target: Path,
                             include: list[bytes] | None, pool: WorkerPool,
                             bar: ProgressBar) -> RestoreSummary:
    """Rapid Recover with the disk plugged into this server: every object on it is checked
    before a file is written; needs the appliance's data key."""
    from rdr_agent.settings import SettingsError
    from rdr_agent.util.textfmt import human_bytes as human
    from rdr_agent.util.textfmt import plural
    from rdr_format.objects import ObjectCipher, load_or_create_key
    from rdr_restore.disk import RECOVER, DiskLayout, restore_from_disk

    if not args.key_file:
        raise SettingsError("--from-disk needs --key-file (the appliance's data key)")
    if args.clean or args.snapshot == "clean-latest":
        raise SettingsError("a disk holds no ransomware verdicts: give a snapshot id")
    root = Path(args.from_disk)
    header = DiskLayout(root).need(RECOVER, complete=True)
    host = args.host or header["hosts"][0]
    cipher = ObjectCipher(load_or_create_key(Path(args.key_file), create=False))
    _, summary = await restore_from_disk(
        root, cipher, host, args.snapshot, target, include, pool,
        on_progress=lambda files, nbytes: bar.update(
            nbytes, lambda: f"{plural(files, 'file')}, {human(nbytes)}"),
        overwrite=args.overwrite, sparse=not args.no_sparse)
    return summary


async def _restore_from_appliance(args: argparse.Namespace, st: AgentSettings, target: Path,
                                  include: list[bytes] | None, pool: WorkerPool,
                                  bar: ProgressBar) -> RestoreSummary:
    from rdr_agent.catalog_cache import CatalogCache
    from rdr_agent.client import ApplianceClient
    from rdr_agent.restore import restore_snapshot
    from rdr_agent.util.textfmt import human_bytes as human
    from rdr_agent.util.textfmt import plural

    async with ApplianceClient(st.endpoint) as client:
        me = await client.whoami()
        cache = CatalogCache(st.state_dir / "catalog-cache" / me["host"])
        snap = args.snapshot
        if snap in ("latest", "clean-latest") or args.source is not None or args.clean:
            snap = await _pick_latest(client, args)
        return await restore_snapshot(
            client, snap, target, include, cache, pool,
            on_progress=lambda files, nbytes: bar.update(
                nbytes, lambda: f"{plural(files, 'file')}, {human(nbytes)}"),
            overwrite=args.overwrite, sparse=not args.no_sparse)


async def _pick_latest(client, args: argparse.Namespace) -> str:
    """The snapshot "latest" (or `--source`) means for this restore, said on stderr: the
    newest of the given source, or the newest whose source holds every PATH."""
    import sys

    from rdr_agent import latest
    from rdr_agent.settings import SettingsError

    clean = args.clean or args.snapshot == "clean-latest"
    if args.snapshot not in ("latest", "clean-latest"):
        raise SettingsError("--source and --clean pick the latest snapshot: give 'latest', "
                            "not a snapshot id")
    rows = await client.snapshots()
    if clean:
        if not latest.has_marks(rows):
            raise SettingsError("this appliance does not judge snapshots for ransomware "
                                "signs: give a snapshot id (see rdr-agent snapshots)")
        rows = latest.clean(rows)
    if not latest.has_sources(rows) and not clean:
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
    print(f"using snapshot {row['snapshot']} (source {row['source']}), the latest "
          f"{'clean one ' if clean else ''}of its source", file=sys.stderr)
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
    import asyncio

    from rdr_agent.enrol import report_forever

    reporter = None if args.once else asyncio.ensure_future(report_forever(st))
    try:
        return await run_service(st, once=args.once, wait=wait, as_json=args.json)
    finally:
        if reporter is not None:
            reporter.cancel()


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
    print(f"  paths: {' '.join(plan['paths'])}"
          f"{' (backup source ' + plan['source'] + ')' if plan.get('source') else ''}")
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
    p = argparse.ArgumentParser(
        prog="rdr-agent", description="Back up this host to the RDR appliance and restore "
        "from it", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=exit_table({EXIT_PARTIAL: "backup, restore: some files could not be read or "
                                         "written (see COMMAND --help)",
                           EXIT_NO_JOB: "run --once: no job came",
                           EXIT_KEPT: "restore: existing entries were kept"}))
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

    def command(name: str, exits: dict[int, str], **kw: str) -> argparse.ArgumentParser:
        """A command whose `--help` ends with its exit codes, one a line (so the help is
        raw text: a description is wrapped here)."""
        import textwrap

        if "description" in kw:
            kw["description"] = textwrap.fill(kw["description"], 79)
        return sub.add_parser(name, parents=[common], epilog=exit_table(exits),
                              formatter_class=argparse.RawDescriptionHelpFormatter, **kw)

    b = command("backup", BACKUP_EXITS, help="back up paths or stdin")
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

    s = command("snapshots", {}, help="list this host's snapshots")
    s.set_defaults(run=cmd_snapshots)

    r = command("restore", RESTORE_EXITS, help="restore a snapshot")
    r.add_argument("snapshot", help="snapshot id, 'latest', or 'clean-latest' (the latest "
                   "snapshot the appliance found no ransomware signs in, nor after an "
                   "unreviewed suspicious one)")
    r.add_argument("paths", nargs="*", metavar="PATH", help="restore only these paths")
    r.add_argument("--to", required=True, metavar="DIR", help="directory to restore into")
    r.add_argument("--source", help="with 'latest': the latest snapshot of this source "
                   "(default: the latest whose source holds every PATH)")
    r.add_argument("--clean", action="store_true", help="with 'latest': the latest clean "
                   "snapshot (as 'clean-latest')")
    r.add_argument("--overwrite", choices=OVERWRITE_CHOICES, default="never",
                   help="what to do with an entry already in the target: 'never' (the "
                   "default: a restore cannot destroy a file that may be newer than the "
                   "backup; the entries kept are listed and the exit code is 5), "
                   "'if-changed' (replace those whose size or modification time differ "
                   "from the snapshot's; a symlink, its target), 'always' (replace all)")
    r.add_argument("--no-sparse", action="store_true", help="write runs of zeros as data: "
                   "by default a file's all-zero chunks are left as holes, so a sparse file "
                   "(a VM disk image) takes no more room than on its host; use this for a "
                   "swap file or a file preallocated on purpose")
    r.add_argument("--from-disk", metavar="DIR", help="restore from a Rapid Recover disk "
                   "mounted at DIR instead of the appliance")
    r.add_argument("--key-file", help="with --from-disk: the appliance's data key")
    r.add_argument("--host", help="with --from-disk: whose snapshot (default: the disk's)")
    r.set_defaults(run=cmd_restore)

    j = command("run", RUN_EXITS, help="the agent service: scheduled backups and pushed "
                "restores from the appliance (polls it; stops on SIGTERM)",
                description="Poll the appliance for this host's backup runs (its daily "
                "window, 'back up now') and restore jobs, and carry them out. The plan "
                "(paths, excludes, LAN limit, dump command) comes from the appliance; a dump "
                "command runs only with allow_dump_commands = yes "
                "($RDR_ALLOW_DUMP_COMMANDS). Pushed restores write only below absolute "
                "directories, and only below restore_roots ($RDR_RESTORE_ROOTS) when that is "
                "set.")
    j.add_argument("--once", action="store_true",
                   help="handle at most one job, then exit: 0 restored, 3 some entries "
                   "failed, 1 failed, 4 no job came")
    j.add_argument("--wait", type=int, metavar="SECONDS",
                   help="with --once: how long to wait for a job (default 0); otherwise the "
                   "length of one poll (default 25, at most 60)")
    j.set_defaults(run=cmd_run)

    pl = command("plan", {}, help="show the backup plan the appliance holds for this "
                 "host")
    pl.set_defaults(run=cmd_plan)
    from rdr_agent.enrol import add_commands  # enrol, report (issue 27)
    add_commands(command)
    return p


def run() -> NoReturn:
    """The `rdr-agent` command: `main`, then an exit without the interpreter's teardown.

    Freeing a large backup's objects one by one (the parent catalog, the chunk heap) took
    0.11-0.14 s after a 30,000-file backup (strace: no system call from the event loop's
    close to the munmaps), as long as a one-file restore's whole transfer. Every file a
    command writes is closed (and fsynced where it matters) before `main` returns; what
    the teardown would still do, flushing the standard streams and the log handlers, is
    done here."""
    code = main()
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """Run one command: every failure is one line on stderr and an exit code of its table;
    a reader of the output that went away ends it quietly (EXIT_BROKEN_PIPE)."""
    from rdr_agent.util.pipes import flushed

    return flushed(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)  # --help, --version, usage errors: end here
    import asyncio
    import logging

    from rdr_agent.errors import ApplianceError, ConnectError, TargetError
    from rdr_agent.settings import SettingsError, resolve
    from rdr_agent.util.memory import tune_agent_gc, tune_malloc
    from rdr_agent.util.pipes import silence_stdout
    from rdr_restore.errors import DcError, SeedError

    tune_malloc()
    tune_agent_gc()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="rdr-agent: %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        # no appliance involved (a disk), or no settings yet (enrol writes them)
        if getattr(args, "from_disk", None) or getattr(args, "without_settings", False):
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
    except (SettingsError, ConnectError, TargetError, ValueError, SeedError, DcError) as exc:
        print(f"rdr-agent: error: {exc}", file=sys.stderr)
    except BrokenPipeError:
        return silence_stdout()
    except OSError as exc:
        print(f"rdr-agent: error: {exc.strerror or exc}"
              f"{': ' + os.fsdecode(exc.filename) if exc.filename else ''}", file=sys.stderr)
    except KeyboardInterrupt:
        print("rdr-agent: interrupted; the next backup resumes where this one stopped",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_ERROR


if __name__ == "__main__":
    run()
