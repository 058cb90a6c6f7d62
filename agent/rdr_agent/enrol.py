"""`rdr-agent enrol` and `rdr-agent report`: joining the appliance with a one-time code, and
sending the host report (rdr_agent/hostreport.py).

`enrol` reads the code from standard input (the installer pipes it there with a shell
builtin) or asks for it on the terminal, exchanges it over TLS pinned to the appliance's
certificate for this host's token, and writes the token only into the agent's config file
(0600, replaced whole). The token is never printed, logged or passed on a command line; the
code is worthless once used (docs/ENROLMENT.md). Enrolling again (a new code) rotates the
token, and the config keeps its other settings.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import sys
from pathlib import Path
from typing import Any

from rdr_agent.errors import ApplianceError, ConnectError, Endpoint
from rdr_agent.settings import AgentSettings, SettingsError
from rdr_agent.statefiles import write_private
from rdr_agent.util.tomlfile import read_toml
from rdr_format import __version__

log = logging.getLogger("rdr.agent.enrol")
DEFAULT_CONFIG = "/etc/rdr-agent/agent.toml"
#: How often the service sends its host report (and at each start).
REPORT_EVERY = 24 * 3600.0
MAX_CODE = 200


def read_code(stream: Any = None) -> str:
    """The code from standard input, or asked for (not echoed) when that is a terminal."""
    stream = sys.stdin if stream is None else stream
    if stream.isatty():
        code = getpass.getpass("Enrolment code (from the appliance page): ")
    else:
        code = stream.readline(MAX_CODE + 2)
    code = code.strip()
    if not code or len(code) > MAX_CODE:
        raise SettingsError("no enrolment code on standard input (the page's command "
                            "passes it; or run 'rdr-agent enrol' on a terminal)")
    return code


def toml_config(values: dict[str, str]) -> bytes:
    """A flat TOML file of string values (json's escapes are TOML's basic strings')."""
    lines = ["# rdr-agent settings, written by 'rdr-agent enrol' (keep this file 0600:",
             "# it holds the host's token)"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return ("\n".join(lines) + "\n").encode()


def write_config(path: Path, url: str, fingerprint: str, token: str) -> None:
    """Write (or update) the config: url, fingerprint and token replaced, other settings
    kept, mode 0600 whatever the umask."""
    values: dict[str, str] = {}
    if path.exists():
        old = read_toml(path, "agent config", SettingsError)
        values = {k: v for k, v in old.items() if isinstance(v, str)}
    values.pop("token_file", None)
    values.update(url=url, fingerprint=fingerprint, token=token)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, toml_config(values))


async def exchange(url: str, fingerprint: str, code: str, report: dict | None) -> dict:
    """POST the code (and the first report) to the appliance, pinned to `fingerprint`."""
    from rdr_agent.client import ssl_for
    from rdr_agent.http import FingerprintMismatch, HTTPError, HTTPPool

    ep = Endpoint(url, "", fingerprint)
    pool = HTTPPool(url.rstrip("/") + "/api/v1", ssl_for(ep), limit=1,
                    headers={"X-RDR-Agent": f"rdr-agent/{__version__}"},
                    connect_timeout=15, read_timeout=120)
    try:
        async with pool.request("POST", "/enrol/exchange", json.dumps(
                {"code": code, "report": report}).encode(),
                {"Content-Type": "application/json"}) as resp:
            status, reason, raw = resp.status, resp.reason, await resp.read()
    except FingerprintMismatch:
        raise ConnectError(f"the appliance at {url} is not the one this command was made "
                           "for (its certificate does not match the pinned fingerprint)"
                           ) from None
    except HTTPError as exc:
        raise ConnectError(f"cannot reach the appliance at {url}: "
                           f"{exc or type(exc).__name__}") from None
    finally:
        await pool.close()
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError:
        body = None
    if status >= 400:
        if not isinstance(body, dict):
            body = {}
        raise ApplianceError(status, body.get("error", "error"),
                             body.get("message", reason or ""), body)
    # What a success must carry before anything is written: a proxy's page or a
    # half answer would otherwise end in a traceback or a config without a token.
    if not (isinstance(body, dict) and isinstance(body.get("token"), str) and body["token"]
            and isinstance(body.get("host"), str)
            and isinstance(body.get("fingerprint", ""), str)):
        raise ConnectError(f"the appliance at {url} answered the enrolment (HTTP {status}) "
                           "without a host and token; nothing was written")
    return body


async def cmd_enrol(args: argparse.Namespace, _: AgentSettings | None) -> int:
    from rdr_agent.hostreport import collect

    if not args.url or not args.url.startswith("https://"):
        raise SettingsError("--url must be the appliance's https:// address")
    if not args.fingerprint or len(args.fingerprint.replace(":", "")) != 64:
        raise SettingsError("--fingerprint must be the appliance certificate's SHA-256")
    config = Path(args.config or DEFAULT_CONFIG)
    code = read_code()
    report = await asyncio.get_running_loop().run_in_executor(None, collect)
    res = await exchange(args.url, args.fingerprint, code, report)
    write_config(config, args.url, res.get("fingerprint") or args.fingerprint, res["token"])
    if args.json:
        print(json.dumps({"host": res["host"], "config": str(config)}))
    else:
        print(f"rdr-agent: enrolled as host {res['host']}; settings written to {config} "
              "(mode 0600)")
    return 0


async def send_report(st: AgentSettings, as_json: bool = False) -> dict:
    """Collect the report (with the plan the appliance holds) and send it; warn when the
    appliance offers another agent version."""
    from rdr_agent.client import ApplianceClient
    from rdr_agent.hostreport import collect

    async with ApplianceClient(st.endpoint, retries=2) as client:
        plan = (await client.plan()).get("plan") or {}
        report = await asyncio.get_running_loop().run_in_executor(
            None, lambda: collect(plan.get("paths") or [], plan.get("excludes") or []))
        await client.put_report(report)
        offered = await client.offered_version()
    if offered and offered != __version__:
        log.warning("the appliance offers agent %s (this is %s): re-run the installer with "
                    "--upgrade (docs/ENROLMENT.md)", offered, __version__)
    if as_json:
        print(json.dumps(report, indent=1))
    return report


async def report_forever(st: AgentSettings, every: float = REPORT_EVERY) -> None:
    """The service's report: at start, then daily; a failure waits for the next turn."""
    while True:
        try:
            await send_report(st)
        except Exception as exc:  # a report never stops the service: next turn
            log.warning("host report not sent: %s", exc)
        await asyncio.sleep(every)


async def cmd_report(args: argparse.Namespace, st: AgentSettings) -> int:
    report = await send_report(st, as_json=args.json)
    if not args.json:
        osname = (report.get("os") or {}).get("pretty_name", "?")
        print(f"rdr-agent: host report sent ({osname}, kernel {report.get('kernel')}, "
              f"{len(report.get('filesystems', []))} file systems, "
              f"{len(report.get('databases', []))} databases)")
    return 0


def add_commands(command: Any) -> None:
    """Register `enrol` and `report` with the CLI's `command` factory."""
    e = command("enrol", {}, help="join the appliance with a one-time enrolment code (read "
                "from standard input or the terminal)",
                description="Exchange a one-time enrolment code (from 'Add a host' on the "
                "appliance page) for this host's token and write the agent's config (0600). "
                "The installer the page's command fetches runs this; the code is read from "
                "standard input, never from the command line.")
    e.set_defaults(run=cmd_enrol, without_settings=True)
    r = command("report", {}, help="send the host report (OS, kernel, patches, file "
                "systems, databases, plan size) to the appliance now")
    r.set_defaults(run=cmd_report)
