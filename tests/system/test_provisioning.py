"""Provisioning's data-disk burn-in, filesystem and fstab on a real (loop) block device: needs
root."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from appliance.accounts import Accounts
from appliance.store.index import Index
from provisioning import layout as L

from ..factory import Bench, provision, write_order
from ..unit.test_provisioning import snapshot


@pytest.fixture
def loop_disk(tmp_path: Path):
    """A 96 MB loop device standing in for the data disk."""
    if shutil.which("losetup") is None:
        pytest.skip("needs losetup (util-linux)")
    backing = tmp_path / "disk.img"
    with open(backing, "wb") as f:
        f.truncate(96 * 1024 * 1024)
    dev = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True,
                         text=True, check=True).stdout.strip()
    try:
        yield Path(dev)
    finally:
        subprocess.run(["umount", dev], capture_output=True, check=False)
        subprocess.run(["losetup", "--detach", dev], capture_output=True, check=False)


def test_data_disk_burn_in_filesystem_and_fstab(tmp_path: Path, bench: Bench,
                                                loop_disk: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    order = write_order(tmp_path / "order.toml")
    args = ("--data-disk", str(loop_disk), "--mkfs", "ext4", "--burn-in-mb", "32")
    proc = provision(root, order, bench, *args)
    assert proc.returncode == 0, proc.stderr
    assert f"32 MB on {loop_disk}" in proc.stderr  # the raw disk was burnt in, then formatted
    sig = subprocess.run(["blkid", "-p", "-o", "export", str(loop_disk)], capture_output=True,
                         text=True, check=True).stdout
    info = dict(line.split("=", 1) for line in sig.splitlines())
    assert info["TYPE"] == "ext4" and info["LABEL"] == "rdr-data"
    fstab = L.Layout(root)(L.FSTAB).read_text()
    assert f"UUID={info['UUID']} /srv/rdr ext4 defaults,noatime 0 2" in fstab
    pool = L.Layout(root)(L.DATA_POOL)
    assert not os.path.ismount(pool)  # mounted only while provisioning
    before = snapshot(root)
    again = provision(root, order, bench, *args)
    assert again.returncode == 0 and again.stderr.count(": unchanged") == 8, again.stderr
    assert snapshot(root) == before
    # the store (admin account, hosts) is on the data disk itself
    subprocess.run(["mount", str(loop_disk), str(pool)], check=True)
    try:
        assert stat.S_IMODE(pool.stat().st_mode) == 0o700
        index = Index(pool / "index.sqlite")
        try:
            assert [a["name"] for a in Accounts(index).list()] == ["admin"]
        finally:
            index.close()
    finally:
        subprocess.run(["umount", str(pool)], check=True)
    # a disk that holds data is never burnt in (destroyed) by a run that has no record of it
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    proc = provision(fresh, order, bench, *args)
    assert proc.returncode == 1 and proc.stderr.count("\n") > 0
    assert "already holds a ext4 filesystem and burn-in would destroy it" in proc.stderr
