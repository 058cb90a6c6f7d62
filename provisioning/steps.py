"""The provisioning steps, in the order a unit goes through them.

Each step looks at what the unit already has before writing anything:

* missing  -> made (``done``), which is also how an interrupted run is completed;
* present and what this order and these keys would produce -> left alone (``unchanged``);
* present but different -> left alone and reported (``differs``), unless ``--force``.

So a re-run on a provisioned unit changes nothing, and a re-run with another order or CA
cannot silently replace a unit's identity or data key.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cryptography import x509

from . import accounts, appconfig, burnin, disk, escrow, network, pki, record, swanctl
from . import layout as L
from .layout import Layout, Owner
from .order import Order
from .report import DIFFERS, DONE, SKIPPED, UNCHANGED, Reporter, StepResult


class ProvisionError(RuntimeError):
    """A step cannot be carried out; the message tells the technician what to do."""


@dataclass
class Context:
    layout: Layout
    order: Order
    ca: pki.FactoryCa
    dc_key: object
    report: Reporter
    force: bool = False
    burn_in_mb: int = 1024
    data_disk: Path | None = None
    mkfs: str | None = None
    owner: Owner | None = None
    # what the steps produce for the later ones
    cert: x509.Certificate | None = None
    escrow_entry: dict | None = None
    burnin: dict | None = None
    handover: list[str] = field(default_factory=list)

    def path(self, p: PurePosixPath) -> Path:
        return self.layout(p)


def put(ctx: Context, where: PurePosixPath, data: bytes, mode: int,
        owner: Owner | None = None, replace: bool = False) -> str:
    """Make the unit's file WHERE hold DATA (mode, owner) by the rules in the module doc
    (REPLACE: it must, e.g. a new key was just made). A file with the right content but a
    loose mode is tightened: that only ever removes access."""
    path = ctx.path(where)
    old = L.read_bytes(path)
    if old is None or (old != data and (ctx.force or replace)):
        L.write_file(path, data, mode, owner)
        return DONE
    if old != data:
        return DIFFERS
    st = path.stat()
    want_uid = (owner.uid if owner else 0) if os.geteuid() == 0 else st.st_uid
    if stat.S_IMODE(st.st_mode) != mode or st.st_uid != want_uid:
        L.write_file(path, data, mode, owner)
        return DONE
    return UNCHANGED


def combine(*statuses: str) -> str:
    for s in (DIFFERS, DONE, UNCHANGED):
        if s in statuses:
            return s
    return SKIPPED


# --- 1. burn-in ---------------------------------------------------------------------------
def burn_in(ctx: Context) -> StepResult:
    state = ctx.path(L.BURNIN)
    previous = record.load(state)  # None when missing or damaged: burn in again
    if previous and previous.get("passed") and not ctx.force:
        ctx.burnin = previous
        return StepResult(UNCHANGED, f"passed earlier on {previous['target']}: "
                          f"{previous['size_mb']} MB, write {previous['write_mb_s']} MB/s, "
                          f"read {previous['read_mb_s']} MB/s")
    if ctx.burn_in_mb == 0:
        return StepResult(SKIPPED, "--burn-in-mb 0")
    if ctx.data_disk is not None:
        sig = disk.probe(ctx.data_disk)
        if sig and not ctx.force:
            raise ProvisionError(f"{ctx.data_disk} already holds a {sig.get('TYPE', '?')} "
                                 "filesystem and burn-in would destroy it: pass --force to "
                                 "wipe it, or --burn-in-mb 0")
        if disk.mounted_at(ctx.data_disk):
            raise ProvisionError(f"{ctx.data_disk} is mounted: unmount it before burn-in")
        target = ctx.data_disk
    else:
        target = ctx.path(L.DATA_POOL)
        L.ensure_dir(target, 0o700, ctx.owner)
    try:
        result = burnin.run(target, ctx.burn_in_mb, ctx.report.progress)
    except burnin.BurnInError as exc:
        raise ProvisionError(str(exc)) from None
    ctx.burnin = result.to_json()
    L.ensure_dir(state.parent, 0o755)
    L.write_file(state, json.dumps(ctx.burnin, indent=2).encode() + b"\n", 0o644)
    return StepResult(DONE, f"{result.size_mb} MB on {target}: write {result.write_mb_s} MB/s, "
                      f"read {result.read_mb_s} MB/s, pattern verified")


# --- 2. filesystem --------------------------------------------------------------------------
def filesystem(ctx: Context) -> StepResult:
    if ctx.data_disk is None:
        L.ensure_dir(ctx.path(L.DATA_POOL), 0o700, ctx.owner)
        return StepResult(SKIPPED, f"no --data-disk: the data pool is {L.DATA_POOL} on the "
                          "system disk")
    sig = disk.probe(ctx.data_disk)
    status = UNCHANGED
    if ctx.mkfs and (sig.get("TYPE") != ctx.mkfs or ctx.force):
        if sig and sig.get("TYPE") != ctx.mkfs and not ctx.force:
            raise ProvisionError(f"{ctx.data_disk} already holds a {sig.get('TYPE')} "
                                 f"filesystem, not {ctx.mkfs}: pass --force to reformat it")
        try:
            sig = disk.make_filesystem(ctx.data_disk, ctx.mkfs)
        except disk.DiskError as exc:
            raise ProvisionError(str(exc)) from None
        status = DONE
    if not sig.get("UUID") or sig.get("TYPE") not in disk.FILESYSTEMS:
        raise ProvisionError(f"{ctx.data_disk} holds no ext4 or xfs filesystem: pass "
                             "--mkfs ext4 (or xfs) to create one")
    fstab = ctx.path(L.FSTAB)
    old = fstab.read_text() if fstab.exists() else ""
    line = disk.fstab_line(sig["UUID"], sig["TYPE"], L.DATA_POOL)
    new = disk.update_fstab(old, line, L.DATA_POOL)
    if new != old:
        if line not in old and str(L.DATA_POOL) in old and status == UNCHANGED \
                and not ctx.force:
            return StepResult(DIFFERS, f"{L.FSTAB} mounts another disk on {L.DATA_POOL}")
        L.write_file(fstab, new.encode(), 0o644)
        status = DONE
    return StepResult(status, f"{sig['TYPE']} UUID={sig['UUID']} on {L.DATA_POOL}")


# --- 3. device key and certificate ----------------------------------------------------------
def device_identity(ctx: Context) -> StepResult:
    o = ctx.order
    key_path = ctx.path(L.SWANCTL_KEY)
    old_key = L.read_bytes(key_path)
    new = old_key is None or ctx.force
    if new:
        key = pki.new_key()
        key_bytes = pki.key_pem(key)
    else:
        key = pki.load_key(old_key, L.SWANCTL_KEY)
        key_bytes = old_key
    cert = None
    old_cert = L.read_bytes(ctx.path(L.SWANCTL_CERT))
    if old_cert is not None and not new:
        try:
            cert = x509.load_pem_x509_certificate(old_cert)
        except ValueError:
            cert = None
        if cert is not None:
            wrong = pki.problems(cert, key, ctx.ca, o.serial, o.identity)
            if wrong:
                ctx.cert = cert
                return StepResult(DIFFERS, f"{L.SWANCTL_CERT}: " + "; ".join(wrong))
    if cert is None:
        cert = pki.issue(ctx.ca, key, o.serial, o.identity, o.customer_id)
    ctx.cert = cert
    cert_bytes = pki.cert_pem(cert)
    for d, mode, owner in ((L.SWANCTL_DIR / "private", 0o700, None),
                           (L.ETC_RDR, 0o750, ctx.owner), (L.TLS_DIR, 0o750, ctx.owner)):
        L.ensure_dir(ctx.path(d), mode, None)
        if owner is not None and os.geteuid() == 0:
            os.chown(ctx.path(d), 0, owner.gid)
    statuses = [
        put(ctx, L.SWANCTL_KEY, key_bytes, 0o600, replace=new),
        put(ctx, L.SWANCTL_CERT, cert_bytes, 0o644, replace=new),
        put(ctx, L.SWANCTL_CA, ctx.ca.pem, 0o644, replace=new),
        put(ctx, L.TLS_KEY, key_bytes, 0o600, ctx.owner, replace=new),
        put(ctx, L.TLS_CERT, cert_bytes, 0o644, replace=new),
        put(ctx, L.TLS_CA, ctx.ca.pem, 0o644, replace=new),
    ]
    return StepResult(combine(*statuses), f"EC P-256, CN={o.serial}, DNS={o.identity}, "
                      f"SHA-256 {pki.fingerprint(cert)}")


# --- 4. strongSwan --------------------------------------------------------------------------
def strongswan(ctx: Context) -> StepResult:
    o = ctx.order
    conf = swanctl.swanctl_conf(o, L.SWANCTL_CERT.name, L.SWANCTL_CA.name)
    L.ensure_dir(ctx.path(L.SWANCTL_CONF.parent), 0o755)
    statuses = [put(ctx, L.SWANCTL_CONF, conf.encode(), 0o644),
                # Debian's swanctl.conf includes conf.d/*.conf; a bare tree gets just that
                UNCHANGED if ctx.path(L.SWANCTL_MAIN).exists() else
                put(ctx, L.SWANCTL_MAIN, b"include conf.d/*.conf\n", 0o644),
                put(ctx, L.TUNNEL_ENV, swanctl.tunnel_env(o).encode(), 0o644)]
    userspace = ctx.path(L.STRONGSWAN_USERSPACE)
    if o.userspace_esp:
        statuses.append(put(ctx, L.STRONGSWAN_USERSPACE,
                            swanctl.userspace_esp_conf().encode(), 0o644))
    elif userspace.exists():
        if ctx.force:
            userspace.unlink()
            statuses.append(DONE)
        else:
            statuses.append(DIFFERS)
    return StepResult(combine(*statuses), f"connection {swanctl.CONNECTION} to "
                      f"{o.dc_gateway} ({o.dc_identity}), {o.tunnel_address} <-> "
                      f"{', '.join(o.remote_subnets)}"
                      + (", userspace ESP" if o.userspace_esp else ""))


# --- 5. replication data key and its escrow -------------------------------------------------
def data_key(ctx: Context) -> StepResult:
    old = L.read_bytes(ctx.path(L.REPLICATION_KEY))
    new = old is None or ctx.force
    if new:
        key = escrow.new_data_key()
        key_bytes = escrow.key_file_bytes(key)
    else:
        key = escrow.parse_key_file(old, L.REPLICATION_KEY)
        key_bytes = old
    statuses = [put(ctx, L.REPLICATION_KEY, key_bytes, 0o600, ctx.owner, replace=new)]
    entry = record.load(ctx.path(L.ESCROW))
    if entry is not None and not new:
        if entry.get("key_id") != escrow.key_id(key) or \
                entry.get("dc_key_sha256") != escrow.public_fingerprint(ctx.dc_key):
            ctx.escrow_entry = entry
            return StepResult(DIFFERS, f"{L.ESCROW} was made for another key or data-center "
                              "key")
        statuses.append(UNCHANGED)
    else:
        entry = escrow.wrap(key, ctx.dc_key)
        statuses.append(put(ctx, L.ESCROW, record.dumps(entry), 0o644, replace=True))
    ctx.escrow_entry = entry
    return StepResult(combine(*statuses), f"key id {entry['key_id']}, escrowed with "
                      f"{entry['algorithm']}")


# --- 6. appliance config --------------------------------------------------------------------
def appliance_config(ctx: Context) -> StepResult:
    text = appconfig.render(ctx.order)
    try:
        appconfig.check(text)
    except appconfig.ConfigError as exc:
        raise ProvisionError(f"the order gives an invalid appliance config: {exc}") from None
    status = put(ctx, L.CONFIG, text.encode(), 0o600, ctx.owner)
    contract = appconfig.render_contract(ctx.order)
    if contract is not None:  # prices and terms, no secret: readable by the daemon's group
        status = combine(status, put(ctx, L.CONTRACT, contract.encode(), 0o640, ctx.owner))
    return StepResult(status, f"{L.CONFIG}: retention {ctx.order.retention}, "
                      f"{ctx.order.capacity_gb} GB, {ctx.order.commitment_months}-month, "
                      f"bucket {ctx.order.bucket}"
                      + (f"; contract {L.CONTRACT}" if contract is not None else ""))


# --- 7. LAN and WAN ports -------------------------------------------------------------------
def lan(ctx: Context) -> StepResult:
    summary = (f"static {ctx.order.lan_address}"
               + (f" via {ctx.order.lan_gateway}" if ctx.order.lan_gateway else ""))
    return _network_file(ctx, L.LAN_NETWORK, network.lan_network(ctx.order), summary,
                         "no [lan] in the order: the LAN ports use DHCP",
                         "a static LAN", "the LAN ports use DHCP")


def wan(ctx: Context) -> StepResult:
    o = ctx.order
    summary = (f"{o.wan_interface}: "
               + (f"static {o.wan_address}" if o.wan_address else "DHCP")
               + (f" via {o.wan_gateway}" if o.wan_gateway else ""))
    return _network_file(ctx, L.WAN_NETWORK, network.wan_network(o), summary,
                         "no [wan] in the order: the tunnel leaves through the LAN",
                         "a WAN port", "the tunnel leaves through the LAN")


def _network_file(ctx: Context, where: PurePosixPath, text: str | None, summary: str,
                  skipped: str, what: str, without: str) -> StepResult:
    """Write WHERE (a .network file) or, when the order has none (TEXT is None), make sure
    there is none: a unit's static address is never dropped silently, only with --force."""
    path = ctx.path(where)
    if text is None:
        if not path.exists():
            return StepResult(SKIPPED, skipped)
        if not ctx.force:
            return StepResult(DIFFERS, f"{where} sets {what} the order does not have")
        path.unlink()
        return StepResult(DONE, f"removed {where}: {without}")
    L.ensure_dir(path.parent, 0o755)
    return StepResult(put(ctx, where, text.encode(), 0o644), summary)


# --- 7b. maintenance access -----------------------------------------------------------------
def maintenance_access(ctx: Context) -> StepResult:
    """The provider's SSH keys for root (the image's sshd takes keys only, no passwords)."""
    keys = ctx.order.ssh_keys
    path = ctx.path(L.AUTHORIZED_KEYS)
    if not keys:
        if path.exists() and path.read_text().strip():
            return StepResult(DIFFERS, f"{L.AUTHORIZED_KEYS} holds keys the order does not "
                              "have")
        return StepResult(SKIPPED, "no [maintenance] ssh_keys in the order: no SSH login")
    L.ensure_dir(path.parent, 0o700)
    status = put(ctx, L.AUTHORIZED_KEYS, ("\n".join(keys) + "\n").encode(), 0o600)
    return StepResult(status, f"{len(keys)} maintenance key(s) for root over SSH")


# --- 8. admin account and hosts -------------------------------------------------------------
def admin_and_hosts(ctx: Context) -> StepResult:
    pool = ctx.path(L.DATA_POOL)
    issued = accounts.provision(pool, ctx.order.host_windows, ctx.force)
    os.chmod(pool, 0o700)
    L.chown_tree(pool, ctx.owner)
    # Shown now, not at the end: it exists nowhere else, and a later step may fail.
    if issued.admin_password:
        print(f"initial admin account '{accounts.ADMIN}' password (shown once, stored "
              f"hashed): {issued.admin_password}", flush=True)
    for host, token in issued.host_tokens.items():
        print(f"host {host} token (shown once, stored hashed): {token}", flush=True)
    done = bool(issued.admin_password or issued.host_tokens or issued.windows_changed)
    if issued.windows_differ:
        return StepResult(DIFFERS, "backup windows differ for " +
                          ", ".join(issued.windows_differ))
    hosts = ", ".join(f"{h} {w}" for h, w in sorted(ctx.order.host_windows.items())) or "none"
    return StepResult(DONE if done else UNCHANGED,
                      f"admin account {'created' if issued.admin_password else 'kept'}; "
                      f"hosts: {hosts}")


# --- 9. provisioning record -----------------------------------------------------------------
def provisioning_record(ctx: Context, out: Path | None) -> StepResult:
    assert ctx.cert is not None and ctx.escrow_entry is not None
    rec = record.build(ctx.order, pki.fingerprint(ctx.cert), pki.cert_pem(ctx.cert).decode(),
                       ctx.escrow_entry, ctx.burnin, ctx.layout)
    path = ctx.path(L.RECORD)
    old = record.load(path)
    if old is not None and record.same(old, rec) and not ctx.force:
        rec = old
        status = UNCHANGED
    elif old is not None and not ctx.force:
        return StepResult(DIFFERS, f"{L.RECORD} describes another provisioning")
    else:
        import time

        rec["provisioned_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        L.write_file(path, record.dumps(rec), 0o644)
        status = DONE
    if out is not None:
        L.write_file(out, record.dumps(rec), 0o644)
    return StepResult(status, f"{L.RECORD}" + (f", copy at {out}" if out else ""))
