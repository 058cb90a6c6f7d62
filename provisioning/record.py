"""The provisioning record: what the data center needs to know about a unit, as JSON.

It names the unit (serial, customer, identity), pins its certificate (SHA-256 fingerprint and
the PEM itself), carries the escrowed data key, the contract settings, the burn-in result and
the versions the unit shipped with. It holds no secret in the clear, so it is world-readable
on the unit and travels to the data center as is. Its presence on the unit is also what the
first-boot check looks for.
"""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path, PurePosixPath

from . import __version__ as provisioning_version
from .layout import Layout
from .order import Order

FORMAT = 1


def _dpkg_version(layout: Layout, package: str) -> str | None:
    """A package's version as the unit's dpkg database has it (None when not installed)."""
    try:
        text = layout(PurePosixPath("/var/lib/dpkg/status")).read_text()
    except FileNotFoundError:
        return None
    for para in text.split("\n\n"):
        if re.search(rf"^Package: {re.escape(package)}$", para, re.M) and \
                re.search(r"^Status: install ok installed$", para, re.M):
            m = re.search(r"^Version: (\S+)$", para, re.M)
            return m[1] if m else None
    return None


def _os_release(layout: Layout) -> str | None:
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            text = layout(PurePosixPath(path)).read_text()
        except FileNotFoundError:
            continue
        m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?$', text, re.M)
        if m:
            return m[1]
    return None


def _appliance_version(layout: Layout) -> str:
    """The rdr-appliance version installed in the unit's venv, else the one running here."""
    for meta in sorted(layout(PurePosixPath("/opt/rdr")).glob(
            "lib/python3*/site-packages/rdr_appliance-*.dist-info/METADATA")):
        m = re.search(r"^Version: (\S+)$", meta.read_text(), re.M)
        if m:
            return m[1]
    from appliance import __version__

    return __version__


def versions(layout: Layout) -> dict[str, str | None]:
    return {
        "appliance": _appliance_version(layout),
        "provisioning": provisioning_version,
        "strongswan": _dpkg_version(layout, "charon-systemd")
        or _dpkg_version(layout, "strongswan-charon"),
        "os": _os_release(layout),
        "python_at_factory": platform.python_version(),
    }


def build(order: Order, fingerprint: str, cert_pem: str, escrow: dict,
          burnin: dict | None, layout: Layout) -> dict:
    return {
        "format": FORMAT,
        "serial": order.serial,
        "customer_id": order.customer_id,
        "identity": order.identity,
        "certificate_sha256": fingerprint,
        "certificate": cert_pem,
        "escrow": escrow,
        "contract": {"capacity_gb": order.capacity_gb, "retention": order.retention,
                     "commitment_months": order.commitment_months,
                     "timezone": order.timezone, "default_window": order.default_window,
                     "host_windows": dict(sorted(order.host_windows.items()))},
        "tunnel": {"address": order.tunnel_address, "remote_subnets": order.remote_subnets,
                   "dc_gateway": order.dc_gateway, "dc_identity": order.dc_identity},
        "replication": {"endpoint": order.s3_endpoint, "bucket": order.bucket},
        "lan": order.lan_address or "dhcp",
        "burn_in": burnin,
        "versions": versions(layout),
    }


def dumps(record: dict) -> bytes:
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


def same(a: dict, b: dict) -> bool:
    """Equal apart from when it was written."""
    def strip(r: dict) -> dict:
        return {k: v for k, v in r.items() if k != "provisioned_at"}
    return strip(a) == strip(b)


def load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
