"""The initial admin account and the order's hosts, created in the unit's own store index.

The admin password is generated here, shown once on the hand-over sheet and stored only as
the scrypt hash of appliance.accounts, exactly as `rdr admin add` would. Hosts
named in the order are registered with their backup windows; each host's token is likewise
shown once and kept hashed. A re-run never shows or changes a secret again (only --force,
which issues new ones).
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from appliance.accounts import Accounts
from appliance.store.datastore import Datastore

ADMIN = "admin"
# No look-alikes (0/O, 1/l/I): the password is read off paper and typed.
_ALPHABET = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def new_password(groups: int = 4, size: int = 5) -> str:
    """About 116 bits in 4 groups of 5, e.g. 'k3Xq9-...'."""
    return "-".join("".join(secrets.choice(_ALPHABET) for _ in range(size))
                    for _ in range(groups))


@dataclass(slots=True)
class Issued:
    """Secrets created by this run, for the hand-over sheet only (never logged or stored)."""

    admin_password: str | None = None
    host_tokens: dict[str, str] = field(default_factory=dict)
    windows_changed: list[str] = field(default_factory=list)
    windows_differ: list[str] = field(default_factory=list)


def already_provisioned(pool: Path, hosts: dict[str, str]) -> bool:
    """Whether the index at POOL already has the admin account and every host with its
    window. Read with SQLite's immutable mode, so a re-run does not even create a WAL file
    in the pool."""
    index = pool / "index.sqlite"
    if not index.exists():
        return False
    try:
        db = sqlite3.connect(f"{index.as_uri()}?immutable=1", uri=True)
        try:
            admin = db.execute("SELECT 1 FROM accounts WHERE name = ?", (ADMIN,)).fetchone()
            current = dict(db.execute("SELECT name, window_start FROM hosts").fetchall())
        finally:
            db.close()
    except sqlite3.Error:
        return False
    return bool(admin) and all(current.get(h) == w for h, w in hosts.items())


def provision(pool: Path, hosts: dict[str, str], force: bool) -> Issued:
    """Admin account and hosts in the store at POOL (created if needed)."""
    issued = Issued()
    if not force and already_provisioned(pool, hosts):
        return issued
    store = Datastore(pool)
    try:
        accounts = Accounts(store.index)
        exists = any(a["name"] == ADMIN for a in accounts.list())
        if not exists or force:
            pw = new_password()
            if exists:
                accounts.set_password(ADMIN, pw)
            else:
                accounts.add(ADMIN, pw)
            issued.admin_password = pw
        current = {h["name"]: h["window_start"] for h in store.index.host_settings()}
        for host, start in sorted(hosts.items()):
            if host not in current:
                issued.host_tokens[host] = store.add_host(host)
                store.set_window(host, start)
                issued.windows_changed.append(host)
            elif current[host] != start:
                if force:
                    store.set_window(host, start)
                    issued.windows_changed.append(host)
                else:
                    issued.windows_differ.append(host)
            elif force:
                issued.host_tokens[host] = store.rotate_token(host)
    finally:
        store.close()
    return issued
