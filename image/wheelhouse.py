"""Collect the agent's wheelhouse: what the appliance serves to enrolling hosts, which need
no internet (appliance/enrol/installer.py reads it, docs/ENROLMENT.md).

    python3 -m image.wheelhouse --out DIR [--python 3.9 ...] [--arch x86_64 ...]

For every CPython (3.9 to 3.13 by default) and architecture (x86_64, aarch64), ``pip
download --only-binary=:all:`` fetches the agent's dependencies as manylinux wheels (pip
evaluates the dependency markers for that target: tomli on 3.9 and 3.10) and
pip itself (the installer runs pip from its wheel: Debian's python3 lacks ensurepip). The
agent is built once as a pure-Python wheel. Layout:

    DIR/VERSION                     the agent version
    DIR/files/*.whl                 every target's wheels, each once
    DIR/files/rdr-agent.service     the agent's unit, for a venv at /opt/rdr-agent
    DIR/targets/cpXY-ARCH.txt       "sha256  file" of what that target installs

The dependencies are named from agent/pyproject.toml, never the agent by name: a package of
the same name on an index can never stand in for it. Run by the image build
(image/build.py) into /usr/share/rdr/wheelhouse; pip's cache makes later runs cheap.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pip's own copy: pip is always there
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
AGENT = REPO / "agent"
UNIT = REPO / "systemd" / "rdr-agent.service"
PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
ARCHES = ("x86_64", "aarch64")
#: manylinux tags accepted (glibc 2.17 and 2.28: Debian 11 has 2.31).
MANYLINUX = ("manylinux2014", "manylinux_2_17", "manylinux_2_28")


class WheelhouseError(Exception):
    pass


def agent_requirements() -> list[str]:
    data = tomllib.loads((AGENT / "pyproject.toml").read_text())
    return list(data["project"]["dependencies"])


def agent_version() -> str:
    ns: dict = {}
    exec((AGENT / "rdr_format" / "__init__.py").read_text(), ns)
    return ns["__version__"]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pip(*args: str) -> None:
    res = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True,
                         text=True, timeout=1800, check=False)
    if res.returncode != 0:
        lines = [ln for ln in res.stderr.splitlines() if not ln.startswith("WARNING")]
        raise WheelhouseError(f"pip {args[0]} failed: {' '.join(lines[-3:])}")


def target_env(python: str, arch: str) -> dict[str, str]:
    """Marker values of the target interpreter (pip evaluates markers for the one it runs
    on, whatever --python-version says: a 3.9 host needs async-timeout, a 3.11 one not)."""
    env = dict(default_environment())
    env.update(python_version=python, python_full_version=f"{python}.0",
               platform_machine=arch, implementation_name="cpython",
               platform_python_implementation="CPython", sys_platform="linux",
               platform_system="Linux", os_name="posix")
    return env


def wanted(reqs: list[str], env: dict[str, str]) -> list[str]:
    """The requirements whose markers hold on the target, without their markers."""
    out = []
    for text in reqs:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
            req.marker = None
            out.append(str(req))
    return out


def missing(dest: Path, env: dict[str, str]) -> list[str]:
    """Dependencies the downloaded wheels declare for the target that pip skipped."""
    have = {canonicalize_name(w.name.split("-")[0]) for w in dest.glob("*.whl")}
    need = []
    for whl in dest.glob("*.whl"):
        with zipfile.ZipFile(whl) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            lines = z.read(meta).decode("utf-8", "replace").splitlines()
        reqs = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Requires-Dist:")]
        need += [r for r in wanted(reqs, env)
                 if canonicalize_name(Requirement(r).name) not in have]
    return sorted(set(need))


def target_name(python: str, arch: str) -> str:
    return f"cp{python.replace('.', '')}-{arch}"


def collect(out: Path, pythons: tuple[str, ...] = PYTHONS,
            arches: tuple[str, ...] = ARCHES, extra_pip: tuple[str, ...] = ()) -> Path:
    """Build the wheelhouse at `out` (replaced whole, so a failed run leaves the old one)."""
    version = agent_version()
    work = out.with_name(out.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    files = work / "files"
    files.mkdir(parents=True)
    (work / "targets").mkdir()
    _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(files), str(AGENT), *extra_pip)
    (agent_wheel,) = files.glob("rdr_agent-*.whl")
    unit = files / "rdr-agent.service"
    unit.write_text(UNIT.read_text().replace("/opt/rdr/bin/", "/opt/rdr-agent/bin/"))
    reqs = agent_requirements()
    with tempfile.TemporaryDirectory() as tmp:
        for py in pythons:
            for arch in arches:
                dest = Path(tmp) / target_name(py, arch)
                platforms = [a for tag in MANYLINUX for a in ("--platform", f"{tag}_{arch}")]
                env = target_env(py, arch)
                todo = [*wanted(reqs, env), "pip"]
                for _ in range(10):  # closing over what the target needs: a few rounds
                    _pip("download", "--quiet", "--only-binary=:all:", *platforms,
                         "--python-version", py, "--implementation", "cp", "--dest",
                         str(dest), *extra_pip, *todo)
                    todo = missing(dest, env)
                    if not todo:
                        break
                else:
                    raise WheelhouseError(f"{target_name(py, arch)}: dependencies do not "
                                          f"close: {' '.join(todo)}")
                listed = []
                for whl in sorted(dest.iterdir()):
                    if not (files / whl.name).exists():
                        shutil.copy2(whl, files / whl.name)
                    listed.append(files / whl.name)
                listed += [agent_wheel, unit]
                (work / "targets" / f"{target_name(py, arch)}.txt").write_text(
                    "".join(f"{sha256(p)}  {p.name}\n" for p in listed))
    (work / "VERSION").write_text(version + "\n")
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    work.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m image.wheelhouse",
                                description="collect the agent's wheelhouse")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--python", action="append", help="CPython version (repeatable; default "
                   f"{' '.join(PYTHONS)})")
    p.add_argument("--arch", action="append", choices=ARCHES, help="repeatable; default both")
    args = p.parse_args(argv)
    try:
        out = collect(args.out, tuple(args.python or PYTHONS), tuple(args.arch or ARCHES))
    except WheelhouseError as exc:
        print(f"wheelhouse: error: {exc}", file=sys.stderr)
        return 1
    targets = sorted(x.stem for x in (out / "targets").iterdir())
    print(f"wheelhouse of rdr-agent {agent_version()} at {out}: {len(targets)} targets "
          f"({', '.join(targets)}), {len(list((out / 'files').iterdir()))} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
