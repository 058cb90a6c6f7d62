"""Provisioning on a temporary root: what the unit gets, that it is consistent (certificate
chain, escrow, config), that a re-run changes nothing, and that bad input is one clear line."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.accounts import Accounts
from appliance.config import load as load_config
from appliance.store.index import Index
from provisioning import burnin, escrow
from provisioning import layout as L
from provisioning.order import OrderError
from provisioning.order import load as load_order
from rdr_format.objects import load_or_create_key

from ..factory import REPO, Bench, make_bench, provision, write_order

PASSWORD_RE = re.compile(r"initial admin account 'admin' password \(shown once, stored "
                         r"hashed\): (\S+)")
SECRETS = [L.CONFIG, L.REPLICATION_KEY, L.TLS_KEY, L.SWANCTL_KEY]



def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and directory under ROOT: mode, owner, mtime and content hash."""
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(base, name)
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) \
                else ""
            out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns,
                                             digest)
    return out


def provisioned(tmp_path: Path, bench: Bench, *extra: str) -> tuple[Path, Path, str]:
    root = tmp_path / "root"
    root.mkdir()
    order = write_order(tmp_path / "order.toml")
    proc = provision(root, order, bench, "--burn-in-mb", "8", *extra)
    assert proc.returncode == 0, proc.stderr
    return root, order, proc.stdout


def test_example_order_is_valid() -> None:
    order = load_order(REPO / "provisioning" / "order.example.toml")
    assert order.serial == "RDR-0001" and order.tunnel_subnet == "10.200.2.0/24"
    assert order.host_windows == {"web01": "01:00", "db01": "17:00"}


def test_provisioned_unit(tmp_path: Path, bench: Bench) -> None:
    root, _, out = provisioned(tmp_path, bench, "--record-out", str(tmp_path / "record.json"))
    lay = L.Layout(root)
    # secrets are 0600, and so is the data pool's directory
    for path in SECRETS:
        assert stat.S_IMODE(lay(path).stat().st_mode) == 0o600, path
    assert stat.S_IMODE(lay(L.DATA_POOL).stat().st_mode) == 0o700
    assert stat.S_IMODE(lay(L.SWANCTL_DIR / "private").stat().st_mode) == 0o700

    # the device certificate chains to the factory CA (checked by openssl, not only by us)
    cert = x509.load_pem_x509_certificate(lay(L.TLS_CERT).read_bytes())
    cert.verify_directly_issued_by(bench.ca)
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(bench.ca_cert), "-purpose",
                             "sslserver", str(lay(L.SWANCTL_CERT))],
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0 and ": OK" in verify.stdout, verify.stdout + verify.stderr
    key = serialization.load_pem_private_key(lay(L.SWANCTL_KEY).read_bytes(), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    assert key.curve.name == "secp256r1"
    assert lay(L.TLS_KEY).read_bytes() == lay(L.SWANCTL_KEY).read_bytes()
    assert lay(L.SWANCTL_CA).read_bytes() == bench.ca_cert.read_bytes()

    # the record: serial, fingerprint of that certificate, escrow, versions
    rec = json.loads(lay(L.RECORD).read_text())
    assert json.loads((tmp_path / "record.json").read_text()) == rec
    fp = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    assert rec["serial"] == "RDR-0001" and rec["certificate_sha256"].replace(":", "") == fp
    assert rec["versions"]["appliance"] and rec["versions"]["provisioning"]
    assert rec["burn_in"]["passed"] and rec["burn_in"]["size_mb"] == 8
    assert rec["contract"]["host_windows"] == {"db01": "17:00", "web01": "01:00"}

    # the escrowed key unwraps with the data center's private key into the unit's key
    dc_private = serialization.load_pem_private_key(bench.dc_private.read_bytes(), None)
    unit_key = load_or_create_key(lay(L.REPLICATION_KEY), create=False)
    assert escrow.unwrap(rec["escrow"], dc_private) == unit_key
    assert unit_key.hex() not in json.dumps(rec)

    # the config loads in the daemon's loader with the provisioned values
    cfg = load_config(lay(L.CONFIG))
    assert cfg.appliance.serial == "RDR-0001" and cfg.retention.policy == "30-0-0"
    assert cfg.capacity.installed_gb == 900.0 and cfg.contract.commitment_months == 36
    assert cfg.replication.target == "s3" and cfg.replication.key_file == str(L.REPLICATION_KEY)
    assert cfg.replication.tunnel_subnet == "10.200.2.0/24"
    assert cfg.server.tls_cert == str(L.TLS_CERT) and cfg.store.path == str(L.DATA_POOL)

    # the admin password was printed once and is stored only as a scrypt hash
    m = PASSWORD_RE.search(out)
    assert m, out
    password = m[1]
    index = Index(lay(L.DATA_POOL) / "index.sqlite")
    try:
        assert Accounts(index).check("admin", password)
        assert {h["name"]: h["window_start"] for h in index.host_settings()} == \
            {"db01": "17:00", "web01": "01:00"}
    finally:
        index.close()
    for p in lay(L.DATA_POOL).rglob("*"):
        if p.is_file():
            assert password.encode() not in p.read_bytes(), p

    # the swanctl connection names the certificate files provisioning wrote
    conf = lay(L.SWANCTL_CONF).read_text()
    assert f"certs = {L.SWANCTL_CERT.name}" in conf and "id = rdr-0001" in conf
    assert "remote_ts = 10.200.2.0/24" in conf and "encap = yes" in conf


def test_rerun_changes_nothing_and_force_redoes(tmp_path: Path, bench: Bench) -> None:
    root, order, _ = provisioned(tmp_path, bench)
    before = snapshot(root)
    again = provision(root, order, bench, "--burn-in-mb", "8")
    assert again.returncode == 0, again.stderr
    assert snapshot(root) == before
    assert "password" not in again.stdout and "token" not in again.stdout
    assert again.stderr.count(": unchanged") == 7  # all but the skipped filesystem step

    lay = L.Layout(root)
    old_fp = json.loads(lay(L.RECORD).read_text())["certificate_sha256"]
    old_key = lay(L.REPLICATION_KEY).read_bytes()
    forced = provision(root, order, bench, "--burn-in-mb", "8", "--force")
    assert forced.returncode == 0, forced.stderr
    rec = json.loads(lay(L.RECORD).read_text())
    assert rec["certificate_sha256"] != old_fp and lay(L.REPLICATION_KEY).read_bytes() != old_key
    assert PASSWORD_RE.search(forced.stdout) and "host web01 token" in forced.stdout
    for path in SECRETS:
        assert stat.S_IMODE(lay(path).stat().st_mode) == 0o600, path
    check = subprocess.run([sys.executable, "-m", "provisioning", "check", "--root", str(root)],
                           cwd=REPO, capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr


def test_other_order_is_refused_without_force(tmp_path: Path, bench: Bench) -> None:
    root, _, _ = provisioned(tmp_path, bench)
    before = snapshot(root)
    other = write_order(tmp_path / "other.toml", bucket="rdr-elsewhere")
    proc = provision(root, other, bench, "--burn-in-mb", "8")
    assert proc.returncode == 3
    assert "appliance configuration" in proc.stderr and "--force" in proc.stderr.splitlines()[-1]
    assert snapshot(root) == before
    # another factory CA cannot silently re-issue the unit's identity either
    other_bench = make_bench(tmp_path / "bench2")
    proc = provision(root, write_order(tmp_path / "same.toml"), other_bench, "--burn-in-mb", "8")
    assert proc.returncode == 3 and "not signed by this factory CA" in proc.stderr
    assert snapshot(root) == before


def test_ec_data_center_key(tmp_path: Path) -> None:
    bench = make_bench(tmp_path / "bench", dc_key="ec")
    root, _, _ = provisioned(tmp_path, bench)
    lay = L.Layout(root)
    rec = json.loads(lay(L.RECORD).read_text())
    assert rec["escrow"]["algorithm"] == escrow.ECDH_ES
    out = tmp_path / "recovered.key"
    proc = subprocess.run([sys.executable, "-m", "provisioning", "escrow-open", "--record",
                           str(lay(L.RECORD)), "--dc-private-key", str(bench.dc_private),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == lay(L.REPLICATION_KEY).read_bytes()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    wrong = make_bench(tmp_path / "wrong", dc_key="ec")
    proc = subprocess.run([sys.executable, "-m", "provisioning", "escrow-open", "--record",
                           str(lay(L.RECORD)), "--dc-private-key", str(wrong.dc_private),
                           "--out", str(tmp_path / "x.key")], cwd=REPO, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "does not unwrap" in proc.stderr


def test_first_boot_check(tmp_path: Path, bench: Bench) -> None:
    def check(root: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "provisioning", "check", "--root",
                               str(root)], cwd=REPO, capture_output=True, text=True, check=False)

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = check(empty)
    assert proc.returncode == 1 and "NOT PROVISIONED" in proc.stderr
    assert "not been through factory provisioning" in proc.stderr
    root, _, _ = provisioned(tmp_path, bench)
    proc = check(root)
    assert proc.returncode == 0 and "RDR-0001 is provisioned" in proc.stdout
    key = L.Layout(root)(L.REPLICATION_KEY)
    os.chmod(key, 0o644)
    proc = check(root)
    assert proc.returncode == 1 and "replication.key is readable by others" in proc.stderr


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('retention = "30-0-0"', 'retention = "9-9-9"'), "retention: must be"),
    (lambda t: t.replace('capacity_gb = 900', 'capacity_gb = "lots"'), "capacity_gb: expected"),
    (lambda t: t.replace('default = "17:00"', 'default = "18:00"'), "windows.default"),
    (lambda t: t.replace('["10.200.2.0/24"]', '["10.9.0.0/16"]'),
     "outside tunnel.remote_subnets"),
    (lambda t: t + 'colour = "red"\n', "unknown key"),
    (lambda t: t.replace('serial = "RDR-0001"\n', ''), "serial: missing"),
    (lambda t: t.replace('[s3]', '[s3'), "not valid TOML"),
    (lambda t: t + '[lan]\naddress = "192.168.1.20"\n', "lan.address: give the prefix"),
    (lambda t: t + '[lan]\naddress = "192.168.1.20/24"\ngateway = "10.0.0.1"\n',
     "outside 192.168.1.0/24"),
    (lambda t: t + '[wan]\naddress = "198.18.0.1/30"\n', "wan.interface: missing"),
    (lambda t: t + '[wan]\ninterface = "eth 1"\n', "wan.interface: not an interface name"),
    (lambda t: t + '[wan]\ninterface = "eth1"\ngateway = "198.18.0.2"\n',
     "wan.gateway and wan.dns need wan.address"),
    (lambda t: t + '[wan]\ninterface = "eth1"\naddress = "198.18.0.1/30"\n'
     'gateway = "198.18.9.9"\n', "wan.gateway 198.18.9.9 is outside 198.18.0.0/30"),
    (lambda t: t + '[lan]\naddress = "192.168.1.20/24"\ngateway = "192.168.1.1"\n'
     '[wan]\ninterface = "eth1"\naddress = "198.18.0.1/30"\ngateway = "198.18.0.2"\n',
     "one default route only"),
    (lambda t: t + '[maintenance]\nssh_keys = ["password123"]\n',
     "maintenance.ssh_keys: not an OpenSSH public key"),
    (lambda t: t + '[maintenance]\nssh_keys = "ssh-ed25519 AAAA"\n',
     "maintenance.ssh_keys: expected a list"),
])
def test_bad_order_is_one_clear_line(tmp_path: Path, bench: Bench, edit, message) -> None:
    order = write_order(tmp_path / "order.toml")
    order.write_text(edit(order.read_text()))
    root = tmp_path / "root"
    root.mkdir()
    proc = provision(root, order, bench)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("provisioning: error:") and message in proc.stderr
    assert not any(root.iterdir())  # nothing written
    with pytest.raises(OrderError):
        load_order(order)


def test_bad_factory_files_are_one_clear_line(tmp_path: Path, bench: Bench) -> None:
    order = write_order(tmp_path / "order.toml")
    root = tmp_path / "root"
    root.mkdir()
    wrong_key = make_bench(tmp_path / "other")
    cases = [
        (["--ca-key", str(wrong_key.ca_key)], "does not belong to"),
        (["--dc-key", str(bench.ca_key)], "not a PEM public key"),
        (["--ca-cert", str(tmp_path / "missing.pem")], "does not exist"),
        (["--mkfs", "ext4"], "--mkfs needs --data-disk"),
    ]
    for extra, message in cases:
        proc = provision(root, order, bench, *extra)
        assert proc.returncode == 1, (extra, proc.stderr)
        assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_burn_in_finds_a_corrupted_block(tmp_path: Path) -> None:
    """A block that changes between write and read-back (what a failing disk does) is found
    and reported at its offset."""
    corrupt_at = 3 * burnin.BLOCK + 4321

    def progress(fraction: float, message: str) -> None:
        if fraction == 0.5:  # everything written, not yet read back
            with open(tmp_path / burnin.SCRATCH_NAME, "r+b") as f:
                f.seek(corrupt_at)
                byte = f.read(1)
                f.seek(corrupt_at)
                f.write(bytes([byte[0] ^ 0xFF]))

    with pytest.raises(burnin.BurnInError, match=f"differs at byte {corrupt_at} "):
        burnin.run(tmp_path, 8, progress)
    assert not (tmp_path / burnin.SCRATCH_NAME).exists()
    good = burnin.run(tmp_path, 8)
    assert good.passed and good.write_mb_s > 0 and good.read_mb_s > 0


def test_static_lan(tmp_path: Path, bench: Bench) -> None:
    root = tmp_path / "root"
    root.mkdir()
    order = write_order(tmp_path / "order.toml", lan="192.168.77.20/24")
    proc = provision(root, order, bench, "--burn-in-mb", "0")
    assert proc.returncode == 0, proc.stderr
    net = L.Layout(root)(L.LAN_NETWORK).read_text()
    assert "Name=en* eth*" in net and "Address=192.168.77.20/24" in net
    # an order without [lan] does not silently drop a unit's static address
    proc = provision(root, write_order(tmp_path / "dhcp.toml"), bench, "--burn-in-mb", "0")
    assert proc.returncode == 3 and "LAN network" in proc.stderr
    assert L.Layout(root)(L.LAN_NETWORK).exists()


def test_wan_port(tmp_path: Path, bench: Bench) -> None:
    """A [wan] port gets a .network file that sorts before the LAN's (networkd configures a
    port by the first file that matches, and the LAN's match every en*/eth* port); without
    an address it uses DHCP; an order without [wan] does not silently drop it."""
    root = tmp_path / "root"
    root.mkdir()
    order = write_order(tmp_path / "order.toml", lan="192.168.77.20/24", wan="198.18.0.1/30",
                        wan_gateway="198.18.0.2", wan_interface="eth1")
    proc = provision(root, order, bench, "--burn-in-mb", "0")
    assert proc.returncode == 0, proc.stderr
    assert "eth1: static 198.18.0.1/30 via 198.18.0.2" in proc.stdout + proc.stderr
    lay = L.Layout(root)
    wan = lay(L.WAN_NETWORK).read_text()
    assert wan.splitlines()[1:] == ["[Match]", "Name=eth1", "", "[Network]",
                                    "Address=198.18.0.1/30", "Gateway=198.18.0.2"]
    assert sorted(p.name for p in lay(L.WAN_NETWORK).parent.iterdir()) == [
        L.WAN_NETWORK.name, L.LAN_NETWORK.name]  # the WAN's file is read first
    assert "Gateway" not in lay(L.LAN_NETWORK).read_text()
    proc = provision(root, order, bench, "--burn-in-mb", "0")  # a re-run changes nothing
    assert proc.returncode == 0 and lay(L.WAN_NETWORK).read_text() == wan
    without = write_order(tmp_path / "lan-only.toml", lan="192.168.77.20/24")
    proc = provision(root, without, bench, "--burn-in-mb", "0")
    assert proc.returncode == 3 and "WAN network" in proc.stderr
    assert lay(L.WAN_NETWORK).read_text() == wan
    dhcp = tmp_path / "dhcp.toml"
    dhcp.write_text(without.read_text() + '\n[wan]\ninterface = "enp2s0"\n')
    proc = provision(root, dhcp, bench, "--burn-in-mb", "0", "--force")
    assert proc.returncode == 0, proc.stderr
    assert "Name=enp2s0" in lay(L.WAN_NETWORK).read_text()
    assert "DHCP=yes" in lay(L.WAN_NETWORK).read_text()
    proc = provision(root, without, bench, "--burn-in-mb", "0", "--force")
    assert proc.returncode == 0 and not lay(L.WAN_NETWORK).exists()


def test_maintenance_ssh_keys(tmp_path: Path, bench: Bench) -> None:
    """The order's keys become root's authorized_keys (0600 in a 0700 .ssh); without keys
    nothing is written, and a unit whose keys the order lacks is left alone."""
    key = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmmlGm3Q2uXPn2ox6dPB7Xzq6Nn9Jc3aWGSFRGNTiNa"
           " noc@provider")
    root = tmp_path / "root"
    root.mkdir()
    order = write_order(tmp_path / "order.toml")
    order.write_text(order.read_text() + f'[maintenance]\nssh_keys = ["{key}"]\n')
    proc = provision(root, order, bench, "--burn-in-mb", "0")
    assert proc.returncode == 0, proc.stderr
    assert "1 maintenance key(s) for root over SSH" in proc.stderr
    keys = L.Layout(root)(L.AUTHORIZED_KEYS)
    assert keys.read_text() == key + "\n"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.parent.stat().st_mode) == 0o700
    again = provision(root, order, bench, "--burn-in-mb", "0")
    assert again.returncode == 0 and "maintenance SSH keys" in again.stderr
    proc = provision(root, write_order(tmp_path / "nokeys.toml"), bench, "--burn-in-mb", "0")
    assert proc.returncode == 3 and "holds keys the order does not have" in proc.stderr
    other = tmp_path / "other"
    other.mkdir()
    proc = provision(other, write_order(tmp_path / "none.toml"), bench, "--burn-in-mb", "0")
    assert proc.returncode == 0 and not L.Layout(other)(L.AUTHORIZED_KEYS).exists()


