"""The agent as its own distribution: `pip install ./agent` alone gives a working `rdr-agent`.

A fresh venv gets only agent/ installed, with its dependencies resolved by pip from the
distribution's own list (no --no-deps: the point is that the list suffices). That venv's agent
backs a tree up to a daemon of the main venv and restores it, and the agent process is checked
to have imported nothing of the appliance (there is none to import in that venv, and the shared
packages must not even try).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks.tools import Appliance

from ..treeutil import assert_same_tree, make_tree, restored_root

REPO = Path(__file__).resolve().parents[2]
AGENT_PACKAGES = ("rdr_format", "rdr_restore", "rdr_agent")
#: The appliance's own dependencies: none of them may come with the agent.
APPLIANCE_ONLY = ("aiobotocore", "pyroute2", "pyudev", "vici", "prometheus-client", "psutil",
                  "rdr-appliance")

#: Runs rdr_agent.cli.main like the console script, then fails (exit 97) if anything named
#: appliance was imported on the way.
WRAPPER = textwrap.dedent("""
    import sys
    from rdr_agent.cli import main
    try:
        rc = main(sys.argv[1:])
    except SystemExit as exc:
        rc = exc.code
    leaked = sorted(m for m in sys.modules if m == "appliance" or m.startswith("appliance."))
    if leaked:
        print("appliance modules imported: " + ", ".join(leaked), file=sys.stderr)
        sys.exit(97)
    sys.exit(rc)
""")

#: Imports every module of the shared and agent packages; prints what of the appliance came too.
IMPORT_ALL = textwrap.dedent(f"""
    import importlib, json, pkgutil, sys
    for name in {AGENT_PACKAGES!r}:
        pkg = importlib.import_module(name)
        for info in pkgutil.walk_packages(pkg.__path__, name + "."):
            importlib.import_module(info.name)
    print(json.dumps(sorted(m for m in sys.modules
                            if m == "appliance" or m.startswith("appliance."))))
""")


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


def test_shared_packages_import_nothing_of_the_appliance() -> None:
    """In the main venv (where the appliance IS importable) every module of rdr_format,
    rdr_restore and rdr_agent still loads without it."""
    res = _run([sys.executable, "-c", IMPORT_ALL], cwd="/")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == []


@pytest.fixture(scope="module")
def agent_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding the rdr-agent distribution and what pip resolved for it, nothing else."""
    venv = tmp_path_factory.mktemp("agent-only") / "venv"
    res = _run([sys.executable, "-m", "venv", str(venv)])
    assert res.returncode == 0, res.stderr
    res = _run([str(venv / "bin" / "pip"), "install", "-q", str(REPO / "agent")])
    assert res.returncode == 0, res.stderr[-3000:]
    return venv


def test_agent_venv_holds_only_the_agent(agent_venv: Path) -> None:
    py = str(agent_venv / "bin" / "python")
    res = _run([str(agent_venv / "bin" / "rdr-agent"), "--version"])
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("rdr-agent ")
    res = _run([py, "-c", "import appliance"], cwd="/")
    assert res.returncode != 0 and "No module named 'appliance'" in res.stderr
    res = _run([py, "-m", "pip", "list", "--format", "json"])
    installed = {p["name"].lower() for p in json.loads(res.stdout)}
    assert "rdr-agent" in installed
    assert not installed & set(APPLIANCE_ONLY), installed & set(APPLIANCE_ONLY)
    res = _run([py, "-c", IMPORT_ALL], cwd="/")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == []


def test_agent_venv_backs_up_and_restores(agent_venv: Path, tmp_path: Path) -> None:
    """Backup and restore with the agent-only venv against `rdr serve` of the main venv."""
    src = make_tree(tmp_path / "src", big_mb=1)
    app = Appliance(tmp_path / "appliance", hosts=1)
    app.prepare()
    try:
        env = app.agent_env(0)  # RDR_URL, RDR_TOKEN, RDR_FINGERPRINT, RDR_STATE_DIR
        agent = [str(agent_venv / "bin" / "python"), "-c", WRAPPER]
        res = _run([*agent, "backup", str(src), "--json"], env=env, cwd="/")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["files_read"] > 0
        target = tmp_path / "restored"
        res = _run([*agent, "restore", "latest", "--to", str(target), "--json"], env=env,
                   cwd="/")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["error_count"] == 0
        assert_same_tree(src, restored_root(target, src))
        # the console script itself, as a customer runs it
        again = tmp_path / "again"
        res = _run([str(agent_venv / "bin" / "rdr-agent"), "restore", "latest", "--to",
                    str(again)], env=env, cwd="/")
        assert res.returncode == 0, res.stderr
        assert_same_tree(src, restored_root(again, src))
    finally:
        app.close()
