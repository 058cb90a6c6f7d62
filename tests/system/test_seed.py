"""Rapid Protect and Rapid Recover with real disks: ext4 on loop devices at fresh indexes, real
kernel uevents (a synthetic `add ... BUS=usb` makes a loop device look like a USB disk; the
remove is LOOP_CTL_REMOVE), a disk dying mid-export (FS_IOC_SHUTDOWN: every further I/O on the
mounted filesystem fails with EIO, as on a yanked disk), the data center on a real S3 server
(Swift) for the seed and a local directory for the recovery disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import random
import struct
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from appliance import wiring
from appliance.accounts import Accounts
from appliance.daemon import Daemon
from appliance.replication.engine import Replicator
from appliance.replication.targets import DirTarget
from appliance.seed import disk as disk_mod
from appliance.store.datastore import Datastore
from hil.disk import remove_loop
from hil.swift import SwiftServer
from rdr_format.objects import ObjectCipher
from rdr_restore.disk import DiskLayout

from ..conftest import Appliance, agent_cmd, make_config, rdr_cmd
from ..integration.test_replication_s3 import write_config
from ..treeutil import run
from ..unit.test_lifecycle import commit_files
from .test_watchers import (
    FS_GOING_NOLOGFLUSH,
    FS_IOC_SHUTDOWN,
    disk_image,
    fresh_loop,
    is_mounted,
    sh,
    until,
)

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/loop-control"),
                                reason="needs loop devices (/dev/loop-control)")

PASSWORD = "correct horse battery"


def content(n: int, seed: int, size: int = 200_000) -> dict[bytes, bytes]:
    rng = random.Random(seed)
    return {f"file{i:02d}".encode(): rng.randbytes(size) for i in range(n)}


def plug(index: int) -> None:
    """The kernel announces the loop device as a USB disk would be."""
    Path(f"/sys/block/loop{index}/uevent").write_text(f"add {uuid.uuid4()} BUS=usb")


def mount(dev: str, where: Path, *opts: str) -> None:
    """mount(8), retried while the device is briefly busy: a udevd (other tests on this
    machine start one) probes a block device right after it is unmounted."""
    deadline = time.monotonic() + 10
    while True:
        r = subprocess.run(["mount", *opts, dev, str(where)], capture_output=True, text=True)
        if r.returncode == 0:
            return
        if "busy" not in r.stderr or time.monotonic() > deadline:
            raise AssertionError(r.stderr)
        time.sleep(0.2)


def mount_options(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[4] == str(path):
                return parts[5].split(",")
    return []


async def unplug(index: int) -> None:
    """Detach and remove the loop device (kernel "remove" uevent), in a thread: the daemon
    under test shares this event loop."""
    sh("losetup", "-d", f"/dev/loop{index}")
    # (30 s: it stayed busy past 10 s once on a machine loaded by other test runs)
    assert await asyncio.to_thread(remove_loop, index, 30.0), "the loop device stayed busy"


@pytest.fixture(scope="module")
def swift(tmp_path_factory):
    server = SwiftServer(tmp_path_factory.mktemp("swift"))
    s3 = server.start()
    yield server, s3
    server.stop()


async def test_seed_export_survives_an_unplug_and_seeds_the_data_center(
        swift, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server, s3 = swift
    data = tmp_path / "data"
    st = Datastore(data, reserve_bytes=0)
    web, db = content(40, 1), content(20, 2)
    for host, files in (("web01", web), ("db01", db)):
        st.add_host(host)
        commit_files(st, host, files)
    st.close()
    # Slow the disk writes down a little, so that the unplug lands in the middle.
    written: list[str] = []
    real_write = disk_mod.ObjectWriter.write

    def slow_write(self, name: str, blob: bytes) -> None:
        time.sleep(0.01)
        real_write(self, name, blob)
        written.append(name)

    monkeypatch.setattr(disk_mod.ObjectWriter, "write", slow_write)
    monkeypatch.setattr(disk_mod, "FLUSH_OBJECTS", 4)
    cfg = make_config(data, reserve_mb=0)
    cfg.health.watch_disks = True
    cfg.seed.mount_root = str(tmp_path / "disks")
    img = disk_image(tmp_path / "seed.img", 96 << 20)
    daemon = Daemon(cfg)
    await daemon.start()
    app = Appliance.of(daemon, data)
    Accounts(app.store.index).add("alice", PASSWORD)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False),
                                 cookie_jar=aiohttp.CookieJar(unsafe=True))
    try:
        r = await http.post(app.url + "/api/v1/auth/login",
                            json={"name": "alice", "password": PASSWORD})
        csrf = {"X-CSRF-Token": (await r.json())["csrf"]}
        seeds = daemon.seeds

        async def panel() -> dict:
            async with http.get(app.url + "/api/v1/seed-disks") as resp:
                assert resp.status == 200
                return await resp.json()

        async def arm(name: str, body: dict) -> aiohttp.ClientResponse:
            return await http.post(app.url + f"/api/v1/seed-disks/{name}/arm", json=body,
                                   headers=csrf)

        with fresh_loop() as index:
            name = f"loop{index}"
            sh("losetup", f"/dev/{name}", str(img))
            sh("mkfs.ext4", "-q", "-L", "RDR-PROTECT", f"/dev/{name}")
            plug(index)
            await until(lambda: name in seeds.disks, "the seed disk to be mounted")
            mnt = seeds.disks[name].mount
            assert "ro" in mount_options(mnt)  # read-only until armed
            shown = (await panel())["disks"]
            assert [(d["device"], d["kind"], d["disk"]["state"]) for d in shown] == [
                (name, "rapid-protect", "empty")]
            # Never the wrong direction, never without a session's CSRF token.
            assert (await arm(name, {"operation": "import"})).status == 409
            assert (await arm("loop0", {"operation": "export"})).status == 404
            assert (await arm(name, {"operation": "format"})).status == 400
            r = await http.post(app.url + f"/api/v1/seed-disks/{name}/arm",
                                json={"operation": "export"})
            assert r.status == 403
            assert (await arm(name, {"operation": "export"})).status == 202
            await until(lambda: len(written) >= 12, "part of the export", timeout=30)
            assert "rw" in mount_options(mnt)
            # The disk dies under the running export.
            fd = os.open(mnt, os.O_RDONLY)
            try:
                fcntl.ioctl(fd, FS_IOC_SHUTDOWN, struct.pack("I", FS_GOING_NOLOGFLUSH))
            finally:
                os.close(fd)
            await until(lambda: seeds.running is None, "the export to stop", timeout=30)
            last = (await panel())["last_operation"]
            assert last["state"] == "interrupted" and "insert it again" in last["message"]
            assert not is_mounted(mnt)  # the dead filesystem was released
            first_run = len(written)
            await unplug(index)
            await until(lambda: name not in seeds.disks, "the remove event")
            assert (await panel())["disks"] == []

        with fresh_loop() as index:
            name = f"loop{index}"
            sh("losetup", f"/dev/{name}", str(img))
            plug(index)
            await until(lambda: name in seeds.disks, "the re-inserted disk")
            d = (await panel())["disks"][0]
            assert d["disk"]["state"] == "writing" and d["disk"]["hosts"] == ["db01", "web01"]
            journaled = len(DiskLayout(seeds.disks[name].mount).journal())
            assert 0 < journaled <= first_run
            written.clear()
            assert (await arm(name, {"operation": "export"})).status == 202
            await until(lambda: seeds.running is None, "the resumed export", timeout=60)
            d = (await panel())["disks"][0]
            assert d["progress"]["state"] == "done", d
            total = d["disk"]["objects"]
            # 60 data chunks + 2 x (catalog + directory index), then 2 x (manifest, chunk
            # list, checkpoint): what replication would have sent.
            assert total == 64 + 6
            assert len(written) == total - journaled  # nothing journaled was written again
            assert "ro" in mount_options(seeds.disks[name].mount)
            rc = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"],
                                cwd=seeds.disks[name].mount, capture_output=True)
            assert rc.returncode == 0, rc.stdout
            assert (await panel())["pending_seed"]["state"] == "shipped"
            await daemon.stop()  # releases its mounts
            assert not is_mounted(mnt)

            # Until the data center has imported the disk, replication holds these hosts.
            conf = write_config(tmp_path, s3, "seeded")
            rc, out, err = await run(rdr_cmd() + ["replicate", "--json", "--config", str(conf)])
            held = json.loads(out)
            assert held["held_for_seed"] == ["db01", "web01"] and held["objects_sent"] == 0

            # At the data center: the disk is mounted and imported into the bucket.
            dc_mnt = tmp_path / "dc-mnt"
            dc_mnt.mkdir()
            mount(f"/dev/{name}", dc_mnt, "-o", "ro")
            try:
                access = ["--endpoint", s3.endpoint, "--bucket", "seeded", "--access-key",
                          s3.access_key, "--secret-key", s3.secret_key,
                          "--key-file", str(data / "replication.key")]
                rc, out, err = await run(rdr_cmd() + ["dc", "import-seed", str(dc_mnt),
                                                      "--json"] + access)
                assert rc == 0, err
                assert json.loads(out)["progress"]["done_objects"] == total
            finally:
                sh("umount", str(dc_mnt))

        # The appliance sees the checkpoints: marked replicated, nothing sent again...
        rc, out, err = await run(rdr_cmd() + ["replicate", "--json", "--config", str(conf)])
        res = json.loads(out)
        assert res["snapshots_seeded"] == 2 and res["objects_sent"] == 0, res
        assert res["held_for_seed"] == []
        # ...and afterwards only what is newer travels over the link.
        st = Datastore(data, reserve_bytes=0)
        commit_files(st, "web01", {**web, b"new-file": b"only this is new" * 5000})
        st.close()
        rc, out, err = await run(rdr_cmd() + ["replicate", "--json", "--config", str(conf)])
        res = json.loads(out)
        assert res["snapshots_replicated"] == 1 and res["objects_sent"] == 3  # file+catalog
        # The seeded data alone restores at the data center.
        out_dir = tmp_path / "dr"
        rc, out, err = await run(rdr_cmd() + ["dc", "restore", "--host", "db01", "--to",
                                              str(out_dir)] + access)
        assert rc == 0, err
        assert {p.name.encode(): p.read_bytes() for p in out_dir.iterdir()} == db
    finally:
        await http.close()
        await daemon.stop()


async def test_recovery_disk_is_checked_in_full_before_anything_is_written(
        tmp_path: Path) -> None:
    # A replicated snapshot at the data center (a directory standing in for the bucket).
    key = tmp_path / "escrowed.key"
    key.write_text(os.urandom(32).hex() + "\n")
    key.chmod(0o600)
    cipher = ObjectCipher(bytes.fromhex(key.read_text().strip()))
    src = Datastore(tmp_path / "old-appliance", reserve_bytes=0)
    src.add_host("web01")
    files = content(12, 3)
    snap = commit_files(src, "web01", files).snapshot
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(2) as pool:
        res = await Replicator(src, wiring.replication_state(src), wiring.samples(src),
                               wiring.pending_seed(src), DirTarget(tmp_path / "dc"), cipher,
                               pool).run_pass()
    assert res.snapshots_replicated == 1
    src.close()
    # The replacement appliance: an empty store, the escrowed key.
    new = tmp_path / "new-appliance"
    Datastore(new, reserve_bytes=0).close()
    conf = tmp_path / "new.toml"
    conf.write_text(f"[store]\npath = '{new}'\nreserve_mb = 0\n[replication]\nenabled = false\n"
                    f"key_file = '{key}'\n[seed]\nmount_root = '{tmp_path / 'disks'}'\n")
    img = disk_image(tmp_path / "recover.img", 64 << 20)
    mnt = tmp_path / "dc-mnt"
    mnt.mkdir()
    access = ["--directory", str(tmp_path / "dc"), "--key-file", str(key)]
    with fresh_loop(mnt) as index:
        dev = f"/dev/loop{index}"
        sh("losetup", dev, str(img))
        sh("mkfs.ext4", "-q", "-L", "RDR-RECOVER", dev)
        mount(dev, mnt)
        rc, out, err = await run(rdr_cmd() + ["dc", "export-recover", "--host", "web01",
                                              str(mnt), "--json"] + access)
        assert rc == 0, err
        assert json.loads(out)["header"]["snapshots"] == [{"host": "web01", "snapshot": snap}]
        # One chunk object is damaged in transit.
        victim = max((mnt / "objects" / "c").iterdir(), key=lambda p: p.stat().st_size)
        good = victim.read_bytes()
        victim.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
        sh("umount", str(mnt))

        # Never the wrong direction: a recovery disk is not written by a seed export.
        rc, out, err = await run(rdr_cmd() + ["seed", "export", "--device", dev,
                                              "--config", str(conf)])
        assert rc == 1 and "labelled 'RDR-RECOVER'" in err and "Traceback" not in err
        rc, out, err = await run(rdr_cmd() + ["seed", "import", "--device", dev,
                                              "--config", str(conf)])
        assert rc == 3, err
        assert f"c/{victim.name}: checksum mismatch" in err and "nothing was written" in err
        store = Datastore(new, reserve_bytes=0)
        assert store.index.snapshots() == [] and list(store.chunks.iter_ids()) == []
        store.close()
        assert not is_mounted(tmp_path / "disks" / f"cli-loop{index}")

        mount(dev, mnt)
        victim.write_bytes(good)
        sh("umount", str(mnt))
        rc, out, err = await run(rdr_cmd() + ["seed", "import", "--device", dev, "--json",
                                              "--config", str(conf)])
        assert rc == 0, err
        assert json.loads(out)["imported"] == [f"web01/{snap}"]
        store = Datastore(new, reserve_bytes=0)
        (row,) = store.index.snapshots()
        assert (row.host, row.snapshot) == ("web01", snap) and row.replicated_at is not None
        store.close()
        # The files restore from the appliance's store now, at LAN speed...
        rc, out, err = await run(rdr_cmd() + ["dc", "verify", "--deep", "--config", str(conf)]
                                 + access)
        assert rc == 0, out + err
        # ...or straight from the disk plugged into the server.
        mount(dev, mnt, "-o", "ro")
        to = tmp_path / "restored"
        rc, out, err = await run(agent_cmd() + ["restore", "latest", "--from-disk", str(mnt),
                                                "--key-file", str(key), "--to", str(to)])
        assert rc == 0, err
        assert {p.name.encode(): p.read_bytes() for p in to.iterdir()} == files


def import_in_browser(url: str, device: str, downloads: Path, profile: Path) -> list[str]:
    """The admin signs in, finds the inserted recovery disk on the overview and imports it
    (blocking); returns the texts the panel showed."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from .test_web_browser import chrome

    d = chrome(downloads, profile)
    w = WebDriverWait(d, 30)
    try:
        d.get(url + "/")
        w.until(EC.visibility_of_element_located((By.ID, "login-name"))).send_keys("alice")
        d.find_element(By.ID, "login-password").send_keys(PASSWORD + "\n")
        item = w.until(EC.presence_of_element_located(
            (By.CSS_SELECTOR, f'#seed-disks li[data-device="{device}"]')))
        before = item.text
        d.find_element(By.CSS_SELECTOR, f'button[data-arm="{device}"]').click()
        w.until(lambda d: "done" in d.find_element(
            By.CSS_SELECTOR, f'#seed-disks li[data-device="{device}"] .seed-progress').text.lower())
        after = d.find_element(By.CSS_SELECTOR, f'#seed-disks li[data-device="{device}"]').text
        d.refresh()
        row = w.until(EC.presence_of_element_located(
            (By.CSS_SELECTOR, '#hosts-table tr[data-host="web01"]')))
        return [before, after, row.text]
    finally:
        d.quit()


@pytest.mark.skipif(not Path("/usr/bin/chromedriver").exists(), reason="needs chromium")
async def test_page_imports_an_inserted_recovery_disk(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from appliance.seed.dcside import export_recover

    key = tmp_path / "escrowed.key"
    key.write_text(os.urandom(32).hex() + "\n")
    cipher = ObjectCipher(bytes.fromhex(key.read_text().strip()))
    src = Datastore(tmp_path / "old-appliance", reserve_bytes=0)
    src.add_host("web01")
    snap = commit_files(src, "web01", content(6, 4)).snapshot
    dc = DirTarget(tmp_path / "dc")
    with ThreadPoolExecutor(2) as pool:
        await Replicator(src, wiring.replication_state(src), wiring.samples(src),
                         wiring.pending_seed(src), dc, cipher, pool).run_pass()
    src.close()
    img = disk_image(tmp_path / "recover.img", 64 << 20)
    mnt = tmp_path / "dc-mnt"
    mnt.mkdir()
    data = tmp_path / "new-appliance"
    cfg = make_config(data, reserve_mb=0)
    cfg.health.watch_disks = True
    cfg.seed.mount_root = str(tmp_path / "disks")
    cfg.replication.key_file = str(key)
    with fresh_loop(mnt) as index:
        name = f"loop{index}"
        sh("losetup", f"/dev/{name}", str(img))
        sh("mkfs.ext4", "-q", "-L", "RDR-RECOVER", f"/dev/{name}")
        mount(f"/dev/{name}", mnt)
        await export_recover(dc, cipher, "web01", "latest", DiskLayout(mnt))
        sh("umount", str(mnt))
        daemon = Daemon(cfg)
        await daemon.start()
        try:
            Accounts(daemon.store.index).add("alice", PASSWORD)
            host, port = daemon.addresses[0]
            plug(index)
            await until(lambda: name in daemon.seeds.disks, "the recovery disk")
            before, after, row = await asyncio.to_thread(
                import_in_browser, f"https://{host}:{port}", name, tmp_path / "dl",
                tmp_path / "profile")
            assert "Rapid Recover" in before and "Holds 1 snapshots of web01" in before
            assert "import: " in after and "imported web01/" + snap in after
            assert "web01" in row
            assert daemon.store.index.snapshot("web01", snap).replicated_at is not None
        finally:
            await daemon.stop()


async def test_cli_export_then_a_lost_disk_is_cancelled(tmp_path: Path) -> None:
    data = tmp_path / "data"
    st = Datastore(data, reserve_bytes=0)
    for host, seed in (("web01", 5), ("db01", 6)):
        st.add_host(host)
        commit_files(st, host, content(4, seed))
    st.close()
    conf = tmp_path / "rdr.toml"
    conf.write_text(f"[store]\npath = '{data}'\nreserve_mb = 0\n[replication]\n"
                    f"target = 'dir'\ndirectory = '{tmp_path / 'dc'}'\n"
                    f"[seed]\nmount_root = '{tmp_path / 'disks'}'\n")
    rdr = rdr_cmd()
    img = disk_image(tmp_path / "seed.img", 64 << 20)
    with fresh_loop() as index:
        dev = f"/dev/loop{index}"
        sh("losetup", dev, str(img))
        sh("mkfs.ext4", "-q", "-L", "RDR-PROTECT", dev)
        rc, out, err = await run(rdr + ["seed", "export", "--device", dev, "--host", "web01",
                                        "--json", "--config", str(conf)])
        assert rc == 0, err
        header = json.loads(out)["header"]
        assert header["hosts"] == ["web01"] and header["objects"] == 4 + 2 + 3
        assert not is_mounted(tmp_path / "disks" / f"cli-loop{index}")  # released after
        rc, out, err = await run(rdr + ["seed", "export", "--device", dev,
                                        "--config", str(conf)])
        assert rc == 1 and "already holds a complete seed" in err
    rc, out, err = await run(rdr + ["seed", "status", "--config", str(conf)])
    assert "shipped" in out and "web01" in out
    rc, out, err = await run(rdr + ["replicate", "--json", "--config", str(conf)])
    res = json.loads(out)
    assert res["held_for_seed"] == ["web01"] and res["snapshots_replicated"] == 1  # db01
    # The disk is lost in transit: the admin cancels, web01 replicates over the link.
    rc, out, err = await run(rdr + ["seed", "cancel", "--config", str(conf)])
    assert rc == 0 and "cancelled" in out
    rc, out, err = await run(rdr + ["replicate", "--json", "--config", str(conf)])
    res = json.loads(out)
    assert res["held_for_seed"] == [] and res["snapshots_replicated"] == 1
    # its 4 data chunks, catalog and directory index; what db01 shares was sent already
    assert res["objects_sent"] >= 4 and res["objects_sent"] + res["objects_skipped"] == 6


class SlowCipher(ObjectCipher):
    """Opens objects a little slowly, so that the unplug lands in the middle of a read."""

    def open(self, name: str, blob: bytes) -> bytes:
        time.sleep(0.02)
        return super().open(name, blob)


async def test_recovery_disk_dying_mid_import_leaves_the_store_untouched(
        tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from appliance.seed.dcside import export_recover
    from appliance.seed.service import SeedDisks

    key = os.urandom(32)
    cipher = ObjectCipher(key)
    src = Datastore(tmp_path / "old", reserve_bytes=0)
    src.add_host("web01")
    commit_files(src, "web01", content(30, 7, 50_000))
    dc = DirTarget(tmp_path / "dc")
    img = disk_image(tmp_path / "recover.img", 64 << 20)
    mnt = tmp_path / "dc-mnt"
    mnt.mkdir()
    store = Datastore(tmp_path / "new", reserve_bytes=0)
    with ThreadPoolExecutor(2) as pool, fresh_loop(mnt) as index:
        await Replicator(src, wiring.replication_state(src), wiring.samples(src),
                         wiring.pending_seed(src), dc, cipher, pool).run_pass()
        name = f"loop{index}"
        sh("losetup", f"/dev/{name}", str(img))
        sh("mkfs.ext4", "-q", "-L", "RDR-RECOVER", f"/dev/{name}")
        mount(f"/dev/{name}", mnt)
        await export_recover(dc, cipher, "web01", "latest", DiskLayout(mnt))
        sh("umount", str(mnt))
        seeds = SeedDisks(store, wiring.replication_state(store), wiring.pending_seed(store),
                          lambda: SlowCipher(key), pool, "RDR-TEST", tmp_path / "disks")
        try:
            await seeds.added(name)
            where = seeds.disks[name].mount
            assert "ro" in mount_options(where)
            await seeds.arm(name, "import")
            await until(lambda: seeds.disks[name].progress["done_objects"] >= 5, "a few reads")
            fd = os.open(where, os.O_RDONLY)
            try:
                fcntl.ioctl(fd, FS_IOC_SHUTDOWN, struct.pack("I", FS_GOING_NOLOGFLUSH))
            finally:
                os.close(fd)
            await until(lambda: seeds.running is None, "the import to stop")
            last = seeds.status()["last_operation"]
            assert last["state"] == "interrupted" and "nothing was imported" in last["message"]
            assert seeds.disks[name].state == "gone" and not is_mounted(where)
            assert store.index.snapshots() == [] and list(store.chunks.iter_ids()) == []
            await seeds.removed(name)
            assert seeds.status()["disks"] == []
        finally:
            await seeds.close()
            store.close()
            src.close()


async def test_a_disk_inserted_before_the_watcher_starts_is_announced() -> None:
    """A seed disk already plugged in when the daemon starts (or restarts) is not missed."""
    from appliance.health.disks import RemovableDiskWatcher

    with fresh_loop() as index:
        name = f"loop{index}"
        seen: list[tuple[str, dict]] = []
        watcher = RemovableDiskWatcher(lambda a, i: seen.append((a, i)), include_fixed=True)
        task = asyncio.create_task(watcher.run())
        try:
            await until(watcher.ready.is_set, "the watcher to start")
            assert ("add", name) in [(a, i["device"]) for a, i in seen]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
