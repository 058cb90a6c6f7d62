"""The `rdr` command line: the parser's skeleton, which asks each command group for its
commands, and `main`."""

from __future__ import annotations

import argparse
import logging
import sys

from rdr_agent.util import pipes

from .. import __version__
from . import (
    access,
    audit,
    dc,
    holds,
    hosts,
    maintenance,
    notify,
    replication,
    seed,
    serve,
    status,
    usage,
)
from .core import COMMON_EXITS, EXIT_PROBLEMS, EXIT_QUEUED, exit_epilog, run

#: The top-level commands in the order `rdr --help` lists them.
COMMANDS = ("serve", "init", "hosts", "snapshots", "holds", "protect", "prune", "gc", "verify",
            "store", "status", "usage", "statement", "tier", "replicate", "replication", "dc",
            "seed", "tokens", "admin", "jobs", "notify", "audit")

#: The command groups, each a module with a PARSERS table: command name -> adder.
GROUPS = (serve, hosts, maintenance, holds, status, usage, replication, dc, seed, access, notify,
          audit)

#: `rdr --help`'s table: the codes every command shares, and where the others are told.
TOP_EXITS = {**COMMON_EXITS,
             EXIT_PROBLEMS: "a problem the command found or left (verify, replicate, dc, "
                            "seed: see COMMAND --help)",
             EXIT_QUEUED: "replicate: a follow-up pass is queued"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rdr", description="RDR backup appliance administration",
                                epilog=exit_epilog(dict(sorted(TOP_EXITS.items()))),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"rdr {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="appliance TOML config (default: $RDR_CONFIG, or "
                        "the embedded default: store in /var/lib/rdr as root, else "
                        "$XDG_STATE_HOME/rdr)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    adders = {name: add for group in GROUPS for name, add in group.PARSERS.items()}
    assert sorted(adders) == sorted(COMMANDS), "every command group listed in COMMANDS"
    for name in COMMANDS:
        adders[name](sub, [common])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The daemon logs; admin commands say one thing at the end (their result or one error).
    logging.basicConfig(level=logging.INFO if args.command == "serve" else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    return pipes.flushed(lambda: run(args))
