"""Build the appliance root filesystem: Debian (debootstrap) + the package + units enabled.

    python3 -m image --out build/image [--format squashfs|ext4|dir] [--cache DIR]

Steps, each timed on stderr:

1. **Wheels.** ``pip wheel`` the project and its dependencies on the build host (from PyPI,
   or pip's cache). CPython 3.11 wheels are ABI-compatible with the image's 3.11, so the
   image installs them offline: nothing inside the chroot reaches a network.
2. **Debian.** ``debootstrap --variant=minbase`` with the recipe's packages. The packages are
   downloaded once into a tarball in the cache (``--make-tarball``, keyed by suite, variant,
   mirror and package list) and unpacked from there on every later build.
3. **The package.** ``python3 -m venv /opt/rdr`` in the chroot and ``pip install --no-index``
   from the wheels: the daemon (``/opt/rdr/bin/rdr``) and provisioning
   (``/opt/rdr/bin/python3 -m provisioning``).
4. **Units.** The files of ``systemd/`` (but the agent's, which is for the customer's hosts)
   go to /lib/systemd/system (the strongSwan drop-in
   beside strongswan.service), the rdr user is created with ``systemd-sysusers --root`` (so
   provisioning against the tree can give it its files), the recipe's units are enabled with
   ``systemctl --root`` and ``systemd-analyze verify --root`` must pass with no warnings.
   sshd (the provider's maintenance access) takes root by key only; the image holds no
   host keys, each unit makes its own on first boot.
5. **The agent's wheelhouse** (image/wheelhouse.py) at /usr/share/rdr/wheelhouse: the
   agent and its dependencies for CPython 3.9-3.13 on x86_64 and aarch64, with SHA-256
   lists, served to enrolling hosts (docs/ENROLMENT.md).
6. **Output.** The tree at ``OUT/rootfs`` and, per ``--format``, ``OUT/rootfs.squashfs``
   (mksquashfs, zstd) or ``OUT/rootfs.ext4`` (``mkfs.ext4 -d``).

Commands that need /proc or /dev inside the chroot run in a private mount namespace
(``unshare --mount``), so a failed build leaves no mount behind on the host.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE = Path(__file__).resolve().parent / "recipe.toml"
FILES = Path(__file__).resolve().parent / "files"
SYSTEMD = REPO / "systemd"
VENV = "/opt/rdr"
#: The agent's wheelhouse the appliance serves to enrolling hosts (config enrol.wheelhouse).
WHEELHOUSE = "usr/share/rdr/wheelhouse"
UNIT_DIR = "lib/systemd/system"
#: Units of ``systemd/`` for the customer's hosts (the agent service), not the appliance.
HOST_UNITS = {"rdr-agent.service"}


def appliance_units() -> list[Path]:
    return [u for u in sorted(SYSTEMD.glob("*.service")) if u.name not in HOST_UNITS]
FORMATS = ("squashfs", "ext4", "dir")


class BuildError(RuntimeError):
    """The image could not be built; the message says which step and why."""


@dataclass(frozen=True, slots=True)
class Recipe:
    suite: str
    variant: str
    mirror: str
    hostname: str
    packages: list[str]
    enable: list[str]

    @classmethod
    def load(cls, path: Path = RECIPE) -> Recipe:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
        return cls(**raw)

    def cache_key(self) -> str:
        text = json.dumps([self.suite, self.variant, self.mirror, sorted(self.packages)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def log(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


def run(*cmd: str, env: dict | None = None, timeout: float = 1800) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                              check=False)
    except FileNotFoundError:
        raise BuildError(f"{cmd[0]} is not installed (see .ci/image-packages)") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise BuildError(f"{' '.join(cmd[:4])}... failed ({proc.returncode}):\n{tail}")
    return proc.stdout + proc.stderr


def in_chroot(root: Path, script: str) -> str:
    """Run a shell SCRIPT chrooted in ROOT with /proc and /dev, in a private mount
    namespace (the mounts vanish with it)."""
    setup = (f'mount -t proc proc "{root}/proc" && mount --rbind /dev "{root}/dev" && '
             f'exec chroot "{root}" /bin/sh -ec "$0"')
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root",
           "DEBIAN_FRONTEND": "noninteractive"}
    return run("unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
               setup, script, env=env)


class Step:
    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> Step:
        self.t0 = time.monotonic()
        log(f"{self.name} ...")
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        if kind is None:
            log(f"{self.name}: done ({time.monotonic() - self.t0:.0f} s)")


def wheels(cache: Path) -> Path:
    """The project and its dependencies as wheels for CPython 3.11 (x86-64 manylinux)."""
    out = cache / "wheels"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rdr_appliance-*.whl"):
        old.unlink()  # always this tree's code, never a stale build of it
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(out), str(REPO))
    return out


def debian(recipe: Recipe, cache: Path, root: Path) -> None:
    tarball = cache / f"debootstrap-{recipe.suite}-{recipe.cache_key()}.tgz"
    common = [f"--variant={recipe.variant}", "--include=" + ",".join(recipe.packages)]
    if not tarball.exists():
        scratch = cache / "debootstrap-scratch"
        shutil.rmtree(scratch, ignore_errors=True)
        run("debootstrap", *common, f"--make-tarball={tarball}.part", recipe.suite,
            str(scratch), recipe.mirror)
        shutil.rmtree(scratch, ignore_errors=True)
        os.replace(f"{tarball}.part", tarball)
    run("debootstrap", *common, f"--unpack-tarball={tarball}", recipe.suite, str(root),
        recipe.mirror)


def install_package(root: Path, wheel_dir: Path) -> None:
    staged = root / "tmp" / "rdr-wheels"
    shutil.copytree(wheel_dir, staged)
    try:
        in_chroot(root, f"python3 -m venv {VENV} && "
                        f"{VENV}/bin/pip install --quiet --no-index --find-links "
                        "/tmp/rdr-wheels rdr-appliance")
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    docs = root / "usr/share/doc/rdr-appliance"
    docs.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "README.md", docs / "README.md")
    # The README points into docs/: the unit carries them so its links resolve offline.
    shutil.copytree(REPO / "docs", docs / "docs", dirs_exist_ok=True)


def install_units(recipe: Recipe, root: Path) -> None:
    units = root / UNIT_DIR
    for unit in appliance_units():
        shutil.copy2(unit, units / unit.name)
    for dropin in sorted(SYSTEMD.glob("*.service.d")):
        dest = units / dropin.name
        dest.mkdir(exist_ok=True)
        for f in dropin.glob("*.conf"):
            shutil.copy2(f, dest / f.name)
    shutil.copy2(SYSTEMD / "rdr.sysusers.conf", root / "usr/lib/sysusers.d/rdr.conf")
    run("systemd-sysusers", f"--root={root}")
    net = root / "etc/systemd/network"
    net.mkdir(parents=True, exist_ok=True)
    shutil.copy2(FILES / "80-rdr-lan.network", net / "80-rdr-lan.network")
    wait = root / UNIT_DIR / "systemd-networkd-wait-online.service.d"
    wait.mkdir(exist_ok=True)
    shutil.copy2(FILES / "wait-online.conf", wait / "10-rdr.conf")
    shutil.copy2(FILES / "fstab", root / "etc/fstab")
    shutil.copy2(FILES / "strongswan-wan.conf", root / "etc/strongswan.d/rdr-wan.conf")
    install_ssh(root)
    (root / "etc/hostname").write_text(recipe.hostname + "\n")
    (root / "etc/rdr").mkdir(mode=0o750, exist_ok=True)
    # The unit's identity is made on first boot, never baked into (and shared by) images.
    (root / "etc/machine-id").write_text("")
    run("systemctl", f"--root={root}", "enable", *recipe.enable)


def install_ssh(root: Path) -> None:
    """The provider's maintenance access: sshd for root by key only, no host keys in the
    image (openssh-server's postinst made some in the build: every unit built from this
    image would share them), made instead by ssh-keygen -A before sshd's first start."""
    conf = root / "etc/ssh/sshd_config.d"
    conf.mkdir(parents=True, exist_ok=True)
    shutil.copy2(FILES / "sshd-rdr.conf", conf / "10-rdr.conf")
    dropin = root / UNIT_DIR / "ssh.service.d"
    dropin.mkdir(exist_ok=True)
    shutil.copy2(FILES / "ssh-hostkeys.conf", dropin / "10-rdr-hostkeys.conf")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    dot_ssh = root / "root/.ssh"
    dot_ssh.mkdir(mode=0o700, parents=True, exist_ok=True)


def verify_units(root: Path) -> None:
    """systemd-analyze verify against the tree; any warning about our units fails."""
    names = [u.name for u in appliance_units()] + ["strongswan.service", "ssh.service"]
    # --man=no: the image has no man pages (minbase), which Debian's units link to
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", *names],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0 or proc.stderr.strip():
        raise BuildError(f"systemd-analyze verify: {proc.stdout}{proc.stderr}".strip())


def release(root: Path) -> None:
    try:
        commit = run("git", "-C", str(REPO), "rev-parse", "HEAD").strip()
    except BuildError:
        commit = "unknown"
    (root / "usr/lib/rdr-image-release").write_text(
        f"RDR_IMAGE_BUILT={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
        f"RDR_IMAGE_COMMIT={commit}\n")
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)


def pack(root: Path, out: Path, fmt: str) -> Path | None:
    if fmt == "dir":
        return None
    if fmt == "squashfs":
        dest = out / "rootfs.squashfs"
        dest.unlink(missing_ok=True)
        # zstd level 6: within a few % of the default level's size at a third of the time
        run("mksquashfs", str(root), str(dest), "-noappend", "-comp", "zstd",
            "-Xcompression-level", "6", "-quiet")
        return dest
    dest = out / "rootfs.ext4"
    dest.unlink(missing_ok=True)
    used = int(run("du", "-sxm", str(root)).split()[0])
    size = f"{int(used * 1.4) + 256}M"
    run("mkfs.ext4", "-q", "-L", "rdr-root", "-d", str(root), str(dest), size)
    return dest


def build(out: Path, fmt: str = "squashfs", cache: Path | None = None,
          recipe: Recipe | None = None) -> Path:
    """Build the tree at OUT/rootfs (and the image per FMT); returns the tree."""
    if os.geteuid() != 0:
        raise BuildError("building the image needs root (debootstrap, chroot)")
    if fmt not in FORMATS:
        raise BuildError(f"--format must be one of {', '.join(FORMATS)}")
    recipe = recipe or Recipe.load()
    cache = cache or out / "cache"
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    root = out / "rootfs"
    work = out / "rootfs.building"
    shutil.rmtree(work, ignore_errors=True)
    with Step("wheels of rdr-appliance and its dependencies"):
        wheel_dir = wheels(cache)
    with Step(f"Debian {recipe.suite} ({recipe.variant} + {len(recipe.packages)} packages)"):
        debian(recipe, cache, work)
    with Step(f"rdr-appliance in {VENV}"):
        install_package(work, wheel_dir)
    with Step("the agent's wheelhouse for enrolling hosts (CPython 3.9-3.13, x86_64 and "
              "aarch64)"):
        from .wheelhouse import collect

        collect(work / WHEELHOUSE)
    with Step("systemd units, rdr user, network"):
        install_units(recipe, work)
        verify_units(work)
        release(work)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(work, root)
    with Step(f"{fmt} image"):
        image = pack(root, out, fmt)
    log(f"tree at {root}" + (f", image at {image}" if image else ""))
    return root
