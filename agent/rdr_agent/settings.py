"""Where the agent finds its appliance: flags, then environment, then a config file.

Environment: RDR_URL, RDR_TOKEN (or RDR_TOKEN_FILE), RDR_FINGERPRINT, RDR_CA, RDR_STATE_DIR,
RDR_RESTORE_ROOTS, RDR_ALLOW_DUMP_COMMANDS, RDR_ALLOW_SPECIAL_FILES. Never a token on the
command line (ps shows it).
Config file (TOML, keys url, token or token_file, fingerprint, ca, state_dir, restore_roots,
allow_dump_commands, allow_special_files): --config,
$RDR_AGENT_CONFIG, ~/.config/rdr-agent/agent.toml or /etc/rdr-agent/agent.toml.

`restore_roots` (colon-separated absolute paths) limits where restores pushed by the
appliance (`rdr-agent run`) may write; unset, any absolute directory is allowed. It is the
host owner's say over what an appliance administrator can overwrite on this host.

`allow_dump_commands` ("yes"/"no", default "no") lets a plan's pre-backup command (a
database dump such as `pg_dump`) run on this host. The command comes from the appliance and
runs as the agent's user, so the host's owner must opt in; without it the agent backs up the
files and reports the dump as not done.

`allow_special_files` ("yes"/"no", default "no") lets a pushed restore create setuid/setgid
files, files with capabilities and device nodes -- only for a job whose administrator asked
for them too. Without both, those bits are stripped and device nodes skipped, each reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rdr_agent.errors import Endpoint
from rdr_agent.util.tomlfile import read_toml
from rdr_format.compat import SLOTS

KEYS = ("url", "token", "token_file", "fingerprint", "ca", "state_dir", "restore_roots",
        "allow_dump_commands", "allow_special_files")
_TOKEN_KEYS = {"token": "token_file", "token_file": "token"}
#: The longest token file read (a token is under 100 characters).
MAX_TOKEN_FILE = 4096


class SettingsError(ValueError):
    pass


@dataclass(**SLOTS)
class AgentSettings:
    endpoint: Endpoint
    state_dir: Path
    #: Where pushed restore jobs may write (normalised absolute paths); empty: anywhere.
    restore_roots: tuple[str, ...] = ()
    #: Whether the plan's pre-backup (dump) command may run here.
    allow_dump_commands: bool = False
    #: Whether pushed restores may create setuid/setgid files and device nodes (when the
    #: job allows them too).
    allow_special_files: bool = False


def _config_file(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    env = os.environ.get("RDR_AGENT_CONFIG")
    if env:
        return Path(env)
    for p in (Path.home() / ".config/rdr-agent/agent.toml", Path("/etc/rdr-agent/agent.toml")):
        if os.path.exists(p):  # False, not an error, when a parent is unreadable
            return p
    return None


def resolve(flags: dict[str, str | None], config: str | None = None) -> AgentSettings:
    values: dict[str, str] = {}
    path = _config_file(config)
    if path is not None:
        raw = read_toml(path, "agent config", SettingsError)
        for key, value in raw.items():
            if key not in KEYS:
                raise SettingsError(f"agent config {path}: unknown key {key!r}")
            if not isinstance(value, str):
                raise SettingsError(f"agent config {path}: {key} must be a string")
            values[key] = value
    for level in ({k: os.environ.get(f"RDR_{k.upper()}") for k in KEYS}, flags):
        for key in KEYS:
            value = level.get(key)
            if value:
                values[key] = value
                if key in _TOKEN_KEYS:  # a token from a stronger source replaces both
                    values.pop(_TOKEN_KEYS[key], None)
    if not values.get("url"):
        raise SettingsError("no appliance URL: pass --url, set RDR_URL or a config file")
    if not values.get("url", "").startswith("https://"):
        raise SettingsError("the appliance URL must start with https://")
    if values.get("token_file"):
        values["token"] = read_token_file(values["token_file"])
    if not values.get("token"):
        raise SettingsError("no host token: pass --token-file, set RDR_TOKEN or a config "
                            "file")
    fp = values.get("fingerprint")
    if fp and len(fp.replace(":", "")) != 64:
        raise SettingsError("the certificate fingerprint must be 64 hex digits (SHA-256)")
    state = values.get("state_dir") or (
        "/var/lib/rdr-agent" if os.geteuid() == 0 else
        str(Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "rdr-agent"))
    allow = values.get("allow_dump_commands", "no").strip().lower()
    if allow not in ("yes", "no", "true", "false", "1", "0"):
        raise SettingsError("allow_dump_commands must be yes or no")
    special = values.get("allow_special_files", "no").strip().lower()
    if special not in ("yes", "no", "true", "false", "1", "0"):
        raise SettingsError("allow_special_files must be yes or no")
    return AgentSettings(Endpoint(values["url"], values["token"], fp, values.get("ca")),
                         Path(state), parse_restore_roots(values.get("restore_roots", "")),
                         allow in ("yes", "true", "1"), special in ("yes", "true", "1"))


def parse_restore_roots(value: str) -> tuple[str, ...]:
    """Colon-separated absolute paths, normalised (a relative one would depend on the
    directory the service happens to start in, so it is refused)."""
    roots = []
    for part in value.split(":"):
        if not part:
            continue
        if not part.startswith("/"):
            raise SettingsError(f"restore_roots: {part!r} is not an absolute path")
        roots.append(os.path.normpath(part))
    return tuple(dict.fromkeys(roots))


def read_token_file(path: str) -> str:
    """The token in `path` (its first line, whitespace stripped)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TOKEN_FILE + 1)
    except OSError as exc:
        raise SettingsError(f"token file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_TOKEN_FILE:
        raise SettingsError(f"token file {path} is too large to hold a token")
    lines = raw.decode("utf-8", "replace").strip().splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise SettingsError(f"token file {path} is empty")
    return token
