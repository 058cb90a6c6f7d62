"""Authentication pieces without a daemon: old tokens become metrics-only, crafted catalogs in
archives, the sign-in throttle, where the agent takes its token (the attacks on a live
appliance are tests/integration/test_security_auth.py)."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
import zstandard

from appliance.api.page.restore import _archive
from appliance.api.throttle import SignInThrottle
from appliance.restores.archive import TarZstStream, ZipStream
from appliance.store.index import Index
from rdr_agent.settings import SettingsError, resolve
from rdr_format.catalog import DIR, FILE, SYMLINK, Entry


def _extract_all(data: bytes, fmt: str, dest: Path) -> None:
    """Extract as a user would: Python's tarfile with 3.11's defaults (no filter), GNU tar,
    Python's zipfile and unzip."""
    dest.mkdir(parents=True)
    if fmt == "tar.zst":
        plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
        with tarfile.open(fileobj=io.BytesIO(plain)) as tf:
            tf.extractall(dest / "tarfile")  # 3.11 defaults: the attack
        (dest / "gnutar").mkdir()
        subprocess.run(["tar", "-x", "-C", str(dest / "gnutar")], input=plain, check=True,
                       capture_output=True, timeout=60)
    else:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            zf.extractall(dest / "zipfile")
        (dest / "a.zip").write_bytes(data)
        subprocess.run(["unzip", "-q", "-o", str(dest / "a.zip"), "-d",
                        str(dest / "unzip")], check=False, capture_output=True, timeout=60)


def _names(data: bytes, fmt: str) -> list[str]:
    if fmt == "zip":
        return zipfile.ZipFile(io.BytesIO(data)).namelist()
    plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return tarfile.open(fileobj=io.BytesIO(plain)).getnames()


def test_tokens_made_before_scopes_become_metrics_only(tmp_path: Path) -> None:
    """The schema migration: an index whose api_tokens table has no scope column (schema 6)
    opens with every existing token scoped `metrics`."""
    path = tmp_path / "index.sqlite"
    idx = Index(path)
    token = idx.add_api_token("old-prom", "admin")
    idx.close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE api_tokens DROP COLUMN scope")
    db.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    idx = Index(path)
    try:
        assert idx.api_token_for(token) == ("old-prom", "metrics")
        idx.ping()  # the rest of the index still reads after the migration
    finally:
        idx.close()


def test_a_crafted_catalog_cannot_put_a_member_below_a_symlink(tmp_path: Path) -> None:
    """A host writes its own catalog: one that lists `x` twice (a symlink to /outside and a
    directory) with `evil` below `x`, a `..` name and a block for a file's path."""
    outside = tmp_path / "outside"
    outside.mkdir()

    class Tree:  # the catalog of a malicious host, as SnapshotTree would read it
        blocks = [
            (b"", [Entry(b"x", SYMLINK, 0o777, link=str(outside).encode()),
                   Entry(b"x", DIR, 0o755), Entry(b"..", DIR, 0o755),
                   Entry(b"f", FILE, 0o644, size=0)]),
            (b"x", [Entry(b"evil", FILE, 0o644, size=0)]),
            (b"x", [Entry(b"evil2", FILE, 0o644, size=0)]),  # the block again
            (b"..", [Entry(b"up", FILE, 0o644, size=0)]),
            (b"f", [Entry(b"under-a-file", FILE, 0o644, size=0)]),
        ]

        def walk(self, path: bytes) -> list:
            return self.blocks

        def data_entry(self, path: bytes, e: Entry) -> Entry:
            return e

        def file_pieces(self, e: Entry, start: int, end: int, read) -> list:
            return []

    for fmt, writer in (("tar.zst", TarZstStream()), ("zip", ZipStream())):
        data = b"".join(bytes(p) for p in _archive(Tree(), [(b"", Entry(b"", DIR))],  # type: ignore[arg-type]
                                                          writer, lambda c: b""))
        names = [n.rstrip("/") for n in _names(data, fmt)]
        assert names[:5] == ["x", "x (2)", "_..", "f", "x (2)/evil"], names
        assert "evil2" not in " ".join(names) and "under-a-file" not in " ".join(names)
        assert "_../up" in names
        _extract_all(data, fmt, tmp_path / f"crafted-{fmt}")
        assert list(outside.iterdir()) == []


def test_throttle_counts_pending_attempts_and_escalates() -> None:
    now = [1000.0]
    t = SignInThrottle(free=3, window=900, base=30, cap=120, clock=lambda: now[0])
    keys = ("account:a", "addr:1")
    assert [t.admit(keys) for _ in range(4)] == [0.0, 0.0, 0.0, 1.0]  # 3 in flight: full
    assert t.admit(("account:a", "addr:2")) == 1.0  # the account is full from any address
    for _ in range(3):
        t.finish(keys, ok=False)
    assert t.retry_after(*keys) == 30.0  # the 3rd failure locks for `base`
    now[0] += 31
    assert t.admit(keys) == 0.0 and t.admit(keys) == 1.0  # one at a time after a lockout
    t.finish(keys, ok=False)
    assert t.retry_after(*keys) == 60.0  # doubled
    # A console unlock (a newer stamp) clears the account and the addresses, once.
    t.unlock("account:a", 5.0)
    assert t.retry_after(*keys) == 0.0 and t.admit(keys) == 0.0
    t.finish(keys, ok=True, clear=keys[:1])
    t.unlock("account:a", 5.0)  # the same stamp again changes nothing
    # Memory stays bounded under a spray of names.
    small = SignInThrottle(max_records=100, clock=lambda: now[0])
    for i in range(1000):
        k = (f"account:n{i}",)
        small.admit(k)
        small.finish(k, ok=False)
    assert len(small._records) <= 101


def test_the_agent_takes_its_token_from_a_file_or_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("RDR_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RDR_URL", "https://appliance:8443")
    f = tmp_path / "t"
    f.write_text("rdr_from_file\n")
    monkeypatch.setenv("RDR_TOKEN", "rdr_from_env")
    assert resolve({}).endpoint.token == "rdr_from_env"
    assert resolve({"token_file": str(f)}).endpoint.token == "rdr_from_file"  # flag wins
    monkeypatch.setenv("RDR_TOKEN_FILE", str(f))
    assert resolve({}).endpoint.token == "rdr_from_file"
    with pytest.raises(SettingsError, match="empty"):
        (tmp_path / "e").write_text("\n")
        resolve({"token_file": str(tmp_path / "e")})
    with pytest.raises(SettingsError, match="token file"):
        resolve({"token_file": str(tmp_path / "missing")})
