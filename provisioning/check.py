"""First-boot check: is this unit provisioned? (rdr-firstboot.service runs it before rdr.service.)

An unprovisioned unit must not start the daemon: it would come up on defaults, with a
self-signed certificate and a key of its own that the data center never escrowed, and take
backups it could not replicate. The check prints one clear paragraph to the console instead
and exits non-zero, so systemd keeps rdr.service from starting.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from appliance.config import ConfigError, load

from . import layout as L
from .escrow import EscrowError, key_id, parse_key_file
from .pki import fingerprint
from .record import load as load_record

SECRETS = (L.CONFIG, L.REPLICATION_KEY, L.TLS_KEY, L.SWANCTL_KEY)


def problems(root: Path) -> list[str]:
    """What is missing or wrong on the unit under ROOT (empty = provisioned)."""
    lay = L.Layout(root)
    rec = load_record(lay(L.RECORD))
    if rec is None:
        return [f"{L.RECORD} is missing: the unit has not been through factory provisioning"]
    found = []
    for path in (L.CONFIG, L.TLS_CERT, L.TLS_KEY, L.REPLICATION_KEY, L.SWANCTL_CONF):
        if not lay(path).exists():
            found.append(f"{path} is missing")
    for path in SECRETS:
        p = lay(path)
        if p.exists() and stat.S_IMODE(p.stat().st_mode) & 0o077:
            found.append(f"{path} is readable by others (mode "
                         f"{stat.S_IMODE(p.stat().st_mode):o}, must be 600)")
    if found:
        return found
    try:
        cfg = load(lay(L.CONFIG))
    except ConfigError as exc:
        return [f"{L.CONFIG}: {exc}"]
    if cfg.appliance.serial != rec.get("serial"):
        found.append(f"{L.CONFIG} is for {cfg.appliance.serial}, the record for "
                     f"{rec.get('serial')}")
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(lay(L.TLS_CERT).read_bytes())
        if fingerprint(cert) != rec.get("certificate_sha256"):
            found.append(f"{L.TLS_CERT} is not the certificate in the record")
    except ValueError:
        found.append(f"{L.TLS_CERT} is not a PEM certificate")
    try:
        key = parse_key_file(lay(L.REPLICATION_KEY).read_bytes(), L.REPLICATION_KEY)
        if key_id(key) != rec.get("escrow", {}).get("key_id"):
            found.append(f"{L.REPLICATION_KEY} is not the key escrowed in the record")
    except EscrowError as exc:
        found.append(str(exc))
    return found


def message(root: Path, found: list[str]) -> str:
    lines = [
        "",
        "*** RDR appliance: NOT PROVISIONED - the backup service will not start. ***",
        *(f"    - {p}" for p in found),
        "    This unit must go through factory provisioning first:",
        "      /opt/rdr/bin/python3 -m provisioning --order ORDER.toml --ca-cert CA.pem "
        "--ca-key CA.key --dc-key DC.pem",
        "    (then: systemctl start rdr.service, or reboot).",
        "",
    ]
    return "\n".join(lines)


def run(root: Path) -> int:
    found = problems(root)
    if found:
        # stderr reaches the console: rdr-firstboot.service has StandardError=journal+console
        os.write(2, message(root, found).encode())
        return 1
    rec = load_record(L.Layout(root)(L.RECORD)) or {}
    print(f"RDR appliance {rec.get('serial')} is provisioned "
          f"(certificate {rec.get('certificate_sha256', '')[:23]}...)")
    return 0
