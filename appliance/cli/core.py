"""What every `rdr` command shares: the exit codes and their `--help` table, the one mapping
of errors to exit codes, the context a command runs in, and the output helpers.

Kept light on purpose: `rdr --help` and every command import this module, so the store, the
replication engine and the daemon are imported inside the commands that use them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from rdr_agent.util import pipes

from ..config import Config, ConfigError, load

if TYPE_CHECKING:
    from ..jobs.maintenance import Maintenance
    from ..store.datastore import Datastore
    from ..store.progress import Progress

#: Success: the command did what it says.
EXIT_OK = 0
#: An error the appliance raised on purpose (`exit_codes`) or an OS error: one line on
#: stderr.
EXIT_ERROR = 1
#: Bad arguments: argparse prints the usage and one line.
EXIT_USAGE = 2
#: The command ran but found or left a problem it names (damaged data, files not restored,
#: replication that cannot run now).
EXIT_PROBLEMS = 3
#: `rdr replicate`: another pass was running; a follow-up that includes everything
#: committed until now is queued behind it (not yet at the data center).
EXIT_QUEUED = 4
#: Interrupted (Ctrl-C).
EXIT_INTERRUPTED = 130
#: The reader of standard output went away (`rdr ... | head`): stopped quietly, as `cat`.
EXIT_BROKEN_PIPE = pipes.EXIT_BROKEN_PIPE

#: What a command's exit code means, by code: each command has one table (the `exits` of
#: `command`), shown in its `--help`.
ExitTable = Mapping[int, str]

#: The codes every command can end with; a command's own table adds to them or says more
#: precisely what its 0 means.
COMMON_EXITS: ExitTable = {
    EXIT_OK: "done",
    EXIT_ERROR: "error, one line on stderr (bad config, unknown name, store, data center or "
                "disk error)",
    EXIT_USAGE: "bad arguments",
    EXIT_INTERRUPTED: "interrupted",
    EXIT_BROKEN_PIPE: "the reader of its output went away (e.g. '| head'): stopped quietly",
}

#: A command: runs in its context, returns its exit code.
Run = Callable[["Context"], int]
#: Where a command group adds its commands, and the parsers of the options all share.
Subparsers = argparse._SubParsersAction
Parents = Sequence[argparse.ArgumentParser]


def exit_table(own: ExitTable | None = None) -> dict[int, str]:
    """The whole table of one command: the common codes, its own over them, by code."""
    return dict(sorted({**COMMON_EXITS, **(own or {})}.items()))


def exit_epilog(table: ExitTable) -> str:
    """The `--help` text of a table, wrapped here (argparse keeps it as it is:
    RawDescriptionHelpFormatter, so the codes stay one a line)."""
    import textwrap

    rows = (textwrap.fill(text, 79, initial_indent=f"  {code:<4} ", subsequent_indent=" " * 7)
            for code, text in table.items())
    return "exit codes:\n" + "\n".join(rows)


def command(sub: Subparsers, name: str, run: Run, help: str, parents: Parents,
            exits: ExitTable | None = None) -> argparse.ArgumentParser:
    """Add one command that runs `run`, its `--help` ending with its exit codes."""
    p = sub.add_parser(name, parents=list(parents), help=help,
                       epilog=exit_epilog(exit_table(exits)),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(run=run)
    return p


def group(sub: Subparsers, name: str, help: str) -> Subparsers:
    """Add a command group (`rdr NAME ACTION`); its actions are added with `command`."""
    p = sub.add_parser(name, help=help, epilog=f"exit codes: see 'rdr {name} ACTION --help'")
    return p.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")


def exit_codes() -> tuple[tuple[type[BaseException], int], ...]:
    """THE mapping of errors to exit codes, most specific first: every error the appliance
    raises on purpose is an `ApplianceError` (appliance/errors.py: store, config, data
    center, heavy-work admission...); the agent side's packages import nothing of the
    appliance, so their errors that reach a command (a damaged chunk or catalog, a bad data
    key, a data-center or disk restore that failed) are mapped here by type. Each one is
    one line on stderr; any other exception is a bug and keeps its traceback.

    Imported when an error is being mapped, not with the CLI: `rdr --help` loads none of it."""
    import sqlite3

    from rdr_format.catalog import CatalogError
    from rdr_format.chunkfile import ChunkError
    from rdr_format.objects import DecryptError
    from rdr_format.objects import KeyError_ as ReplicationKeyError
    from rdr_restore.errors import DcError, SeedError

    from ..errors import ApplianceError

    return ((KeyboardInterrupt, EXIT_INTERRUPTED),
            (ApplianceError, EXIT_ERROR),
            (DcError, EXIT_ERROR), (SeedError, EXIT_ERROR), (ReplicationKeyError, EXIT_ERROR),
            (DecryptError, EXIT_ERROR), (ChunkError, EXIT_ERROR), (CatalogError, EXIT_ERROR),
            (OSError, EXIT_ERROR), (sqlite3.OperationalError, EXIT_ERROR))


def exit_code_of(exc: BaseException) -> int | None:
    """The exit code of `exc` by `exit_codes`, None for an unexpected one."""
    return next((code for cls, code in exit_codes() if isinstance(exc, cls)), None)


def error_line(exc: BaseException) -> str:
    """The one line on stderr for a mapped error (an OS error names its file)."""
    if isinstance(exc, OSError):
        return (f"rdr: error: {exc.strerror or exc}"
                f"{': ' + str(exc.filename) if exc.filename else ''}")
    import sqlite3

    if isinstance(exc, sqlite3.OperationalError):  # e.g. a full data disk, a locked index
        return f"rdr: error: the appliance's index: {exc}"
    return f"rdr: error: {exc}"


def run(args: argparse.Namespace) -> int:
    """Run the parsed command: THE place errors become exit codes (`exit_codes`) and one
    line on stderr; no traceback reaches the admin."""
    fn: Run = args.run
    try:
        return fn(Context(args))
    except (Exception, KeyboardInterrupt) as exc:
        if pipes.is_broken_pipe(exc):
            return pipes.silence_stdout()
        code = exit_code_of(exc)
        if code is None:
            raise
        if code != EXIT_INTERRUPTED:
            print(error_line(exc), file=sys.stderr)
        return code


class Context:
    """What a command runs with: its arguments, the config, the store."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        #: The config file the command runs with (None: the embedded default).
        self.config_path: str | None = args.config or os.environ.get("RDR_CONFIG") or None
        self.cfg: Config = load(self.config_path)

    def store_source(self) -> str:
        """Where the data directory came from, for the error that says where `rdr` looked."""
        if self.config_path is None:
            return "the embedded default's store.path"
        via = "--config" if self.args.config else "$RDR_CONFIG"
        return f"store.path of {self.config_path} ({via})"

    def require_store(self, marker: str = "index.sqlite") -> None:
        """Fail with one line naming where `rdr` looked when there is no store there: only
        `rdr serve` and `rdr init` create one, so a command run with the wrong config (or
        as another user) never makes a second, empty store the daemon does not know."""
        if not (self.cfg.data_dir / marker).exists():
            raise ConfigError(f"no appliance store at {self.cfg.data_dir} "
                              f"({self.store_source()}); pass the appliance's --config, or "
                              "create a store with 'rdr init' or 'rdr serve'",
                              code="no_store")

    def open_store(self, create: bool = False) -> Datastore:
        """The store at the configured data directory; it must exist unless CREATE
        (`rdr init`), and only then is the directory made."""
        if create:
            self.cfg.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        else:
            self.require_store()
        from .. import wiring

        return wiring.open_store(self.cfg)

    @contextlib.contextmanager
    def stored(self, create: bool = False) -> Iterator[Datastore]:
        store = self.open_store(create)
        try:
            yield store
        finally:
            store.close()

    def maintenance(self, store: Datastore) -> Maintenance:
        from .. import wiring

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


# --- output helpers ---
def print_json(value: object) -> None:
    """`--json` output: one document, indented by one."""
    print(json.dumps(value, indent=1))


def ts(t: float | None) -> str:
    """A time as the tables show it (UTC), "-" for none."""
    return "-" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def user() -> str:
    """Who runs the command, for audit trails (``cli:NAME``)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
