"""Host kinds: a server or a PC (service description IV.1.1.1 and IV.1.1.2 bill them apart).

A feature table of its own (`host_kinds`, `Index.own_tables`) rather than a column of the
store's `hosts` table, so the store's schema version does not move for a billing fact. A host
without a row is a server (every host registered before kinds existed was billed as one).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..store.errors import StoreError
from ..store.index import Index

if TYPE_CHECKING:
    from ..store.datastore import Datastore

KINDS = ("server", "pc")
#: PCs are sold with 30-0-0 retention only (IV.1.1.2, "Backup Charges-PC (30-0-0 Retention)").
PC_POLICY = "30-0-0"
#: The contract's retention options (IV.1.1.1 C); others need the provider's setting.
CONTRACT_POLICIES = ("8-5-4", "30-0-0", "7-0-0")

_DDL = """
CREATE TABLE IF NOT EXISTS host_kinds (
    host TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('server', 'pc')),
    set_at REAL NOT NULL
);
"""


def check_kind(kind: object) -> str:
    if kind not in KINDS:
        raise StoreError("bad_kind", f"a host's kind must be 'server' or 'pc', got {kind!r}")
    return str(kind)


def check_contract_policy(policy: str, allow_custom: bool) -> None:
    """Refuse a retention the contract does not offer, unless the provider allows custom
    ones (`[contract] allow_custom_retention`)."""
    if policy and not allow_custom and policy not in CONTRACT_POLICIES:
        raise StoreError("bad_policy", f"retention {policy} is not one of the contract's "
                         f"options ({', '.join(CONTRACT_POLICIES)}); a custom retention needs "
                         "the provider's setting contract.allow_custom_retention")


class HostKinds:
    def __init__(self, index: Index) -> None:
        self.index = index
        index.own_tables(_DDL)

    def set(self, host: str, kind: str) -> None:
        check_kind(kind)
        with self.index.tx() as db:
            db.execute("INSERT OR REPLACE INTO host_kinds VALUES (?, ?, ?)",
                       (host, kind, time.time()))

    def kind(self, host: str) -> str:
        rows = self.index.query("SELECT kind FROM host_kinds WHERE host = ?", (host,))
        return rows[0][0] if rows else "server"

    def all(self) -> dict[str, str]:
        """host -> kind, for the hosts that have one set (others are servers)."""
        return dict(self.index.query("SELECT host, kind FROM host_kinds"))


def register_kind(store: Datastore, host: str, kind: str) -> None:
    """A new host's kind, and the retention its kind is sold with: a PC gets 30-0-0
    (IV.1.1.2), a server the appliance's default. The one place `rdr hosts add` and the
    page's "Add a host" set both."""
    HostKinds(store.index).set(host, check_kind(kind))
    if kind == "pc":
        store.set_policy(host, PC_POLICY)
