"""`rdr`: the appliance's admin command. Thin: parses, calls the store, prints.

Every failure is one line on stderr and a non-zero exit; no traceback reaches the admin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from . import __version__
from .config import Config, ConfigError, load
from .store.datastore import Datastore
from .store.errors import StoreError
from .textfmt import human_bytes


def _ts(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


class Cli:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cfg: Config = load(args.config or os.environ.get("RDR_CONFIG") or None)

    def open_store(self, create: bool = False) -> Datastore:
        if not create and not (self.cfg.data_dir / "index.sqlite").exists():
            raise ConfigError(f"no appliance data at {self.cfg.data_dir}; run 'rdr serve' or "
                              "'rdr hosts add' first, or pass --config")
        return Datastore(self.cfg.data_dir, self.cfg.store.session_lease_seconds)

    # --- commands ---
    def serve(self) -> int:
        from .daemon import serve

        asyncio.run(serve(self.cfg))
        return 0

    def hosts_add(self) -> int:
        store = self.open_store(create=True)
        try:
            token = store.index.add_host(self.args.name)
        finally:
            store.close()
        print(f"host {self.args.name} added; its token (shown once, store it on the host):")
        print(token)
        return 0

    def hosts_list(self) -> int:
        store = self.open_store()
        try:
            hosts = store.index.hosts()
        finally:
            store.close()
        if self.args.json:
            print(json.dumps(hosts, indent=1))
            return 0
        print(f"{'HOST':24} {'SNAPSHOTS':>9}  LAST BACKUP")
        for h in hosts:
            print(f"{h['name']:24} {h['snapshots']:>9}  {_ts(h['last_backup'])}")
        return 0

    def snapshots(self) -> int:
        store = self.open_store()
        try:
            if self.args.host and not store.index.host_exists(self.args.host):
                raise StoreError("no_such_host", f"no host named {self.args.host!r}")
            rows = store.index.snapshots(self.args.host)
        finally:
            store.close()
        if self.args.json:
            print(json.dumps([r.to_json() for r in rows], indent=1))
            return 0
        print(f"{'HOST':20} {'SNAPSHOT':22} {'FILES':>9} {'SIZE':>10} {'NEW':>10}  REPLICATED")
        for r in rows:
            print(f"{r.host:20} {r.snapshot:22} {r.file_count:>9} "
                  f"{human_bytes(r.logical_size):>10} {human_bytes(r.new_bytes):>10}  "
                  f"{'yes' if r.replicated_at else 'no'}")
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
    lst = hsub.add_parser("list", parents=[common], help="list hosts")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(run=Cli.hosts_list)

    sn = sub.add_parser("snapshots", parents=[common], help="list snapshots")
    sn.add_argument("host", nargs="?")
    sn.add_argument("--json", action="store_true")
    sn.set_defaults(run=Cli.snapshots)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s", stream=sys.stderr)
    run: Callable[[Cli], int] = args.run
    try:
        return run(Cli(args))
    except (ConfigError, StoreError) as exc:
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
