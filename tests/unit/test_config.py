"""Configuration: the embedded default runs as is; mistakes name the key to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import ConfigError, load


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "appliance.toml"
    p.write_text(text)
    return p


def test_embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded default's data directory is absolute and the same from any working
    directory: /var/lib/rdr as root, the XDG state directory otherwise."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    cfg = load(None)
    assert cfg.server.listen == ["127.0.0.1:8443"]
    assert cfg.data_dir == tmp_path / "home" / ".local" / "state" / "rdr"
    monkeypatch.chdir(tmp_path)
    assert load(None).data_dir == cfg.data_dir
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert load(None).data_dir == tmp_path / "state" / "rdr"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")  # not absolute: ignored (XDG)
    assert load(None).data_dir == cfg.data_dir
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert load(None).data_dir == Path("/var/lib/rdr").resolve()


def test_full_file_and_relative_store_path(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, """
[server]
listen = "0.0.0.0:9443"
max_json_bytes = 1048576
[store]
path = "data"
session_lease_seconds = 30
workers = 2
[appliance]
serial = "RDR-1"
timezone = "Europe/Paris"
"""))
    assert cfg.server.listen == ["0.0.0.0:9443"]
    assert cfg.store.session_lease_seconds == 30.0
    assert cfg.data_dir == tmp_path / "data"


@pytest.mark.parametrize(("text", "key"), [
    ("[server]\nlisen = '1.2.3.4:1'\n", "server.lisen"),
    ("[sever]\n", "[sever]"),
    ("[server]\nlisten = 'nohost'\n", "server.listen"),
    ("[server]\nlisten = ['1.2.3.4:99999']\n", "server.listen"),
    ("[server]\nmax_json_bytes = 'big'\n", "server.max_json_bytes"),
    ("[server]\ntls_cert = '/x.pem'\n", "server.tls_key"),
    ("[store]\nworkers = 0\n", "store.workers"),
    ("[store]\nsession_lease_seconds = -1\n", "store.session_lease_seconds"),
    ("[appliance]\ntimezone = 'Mars/Olympus'\n", "appliance.timezone"),
    ("[store\n", "not valid TOML"),
])
def test_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml")
