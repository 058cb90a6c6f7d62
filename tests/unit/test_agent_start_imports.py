"""What keeps `rdr-agent` under 0.15 s to start: the modules its commands load import no
aiohttp (80 ms by itself, `python -X importtime`), and `--help` loads no network code at all.
A fresh interpreter each, so nothing imported by the test run itself counts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

LOADED = "import json, sys; print(json.dumps(sorted(sys.modules)))"


def modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\n{LOADED}"], check=True,
                         capture_output=True, text=True).stdout
    return set(json.loads(out))


@pytest.mark.parametrize("command_modules", [
    "import rdr_agent.cli, rdr_agent.archiver, rdr_agent.client",       # backup
    "import rdr_agent.cli, rdr_agent.restore, rdr_agent.client, rdr_agent.catalog_cache",
    "import rdr_agent.cli, rdr_agent.enrol, rdr_agent.scheduled",        # enrol, service
])
def test_the_agents_commands_load_no_aiohttp(command_modules: str) -> None:
    loaded = modules_after(command_modules)
    assert "rdr_agent.http" in loaded or "rdr_agent.enrol" in loaded
    assert not {m for m in loaded if m == "aiohttp" or m.startswith("aiohttp.")}


def test_help_loads_no_network_code() -> None:
    loaded = modules_after("import rdr_agent.cli")
    assert not {"rdr_agent.http", "rdr_agent.client", "ssl", "asyncio"} & loaded
