"""Local admin accounts for the LAN restore page, and their sign-in sessions.

Passwords are kept as scrypt hashes (memory-hard: a stolen index does not give up weak
passwords cheaply). Session tokens carry 256 random bits and only their SHA-256 is stored, so
the index never holds a usable credential. The CSRF token is derived from the session token
with HMAC, so it needs no storage and dies with the session.

This package owns its tables (`accounts`, `web_sessions`, `signin_key`) in the index's SQLite
file (`Index.own_tables`); nothing else writes them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass

from ..store.errors import Conflict, NotFound, StoreError
from ..store.index import Index

NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._@-]{0,62}\Z")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
# scrypt cost: ~50 ms and 16 MiB per check on the appliance's CPU; sign-ins are rare.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
#: How long a browser stays a known device of an account after a successful sign-in there.
DEVICE_SECONDS = 90 * 86400
IDLE_SECONDS = 30 * 60
MAX_AGE_SECONDS = 12 * 3600
_TOUCH_EVERY = 60.0

_DDL = """
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    password_hash TEXT NOT NULL,
    unlocked_at REAL
);
CREATE TABLE IF NOT EXISTS web_sessions (
    id_hash BLOB PRIMARY KEY,
    account TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
    created_at REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS signin_key (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    device_key TEXT NOT NULL
);
"""
#: Columns later releases added to these tables (schema 7, issue 20: console unlocks).
_COLUMNS = (("accounts", "unlocked_at", "REAL"),)
#: Where releases before issue 21 kept the device key: a row of the string-keyed `kv` table.
_OLD_KEY = "signin.device_key"


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=64 * 2**20, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n),
                             r=int(r), p=int(p), maxmem=64 * 2**20, dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


# A hash checked when the account does not exist, so a wrong name costs as long as a wrong
# password and response time does not tell which names exist.
_DUMMY = hash_password(secrets.token_urlsafe(16))


def csrf_for(token: str) -> str:
    return hmac.new(token.encode(), b"rdr-csrf", hashlib.sha256).hexdigest()


def check_password_rules(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise StoreError("weak_password",
                         f"the password must have at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise StoreError("bad_password", f"the password is longer than {MAX_PASSWORD} characters")


@dataclass(frozen=True, slots=True)
class WebSession:
    account: str
    csrf: str
    created_at: float


class Accounts:
    def __init__(self, index: Index) -> None:
        self.index = index
        index.own_tables(_DDL, _COLUMNS)
        self._adopt_old_key()

    def _adopt_old_key(self) -> None:
        """Move a device key an older release kept in `kv` into `signin_key`, once: device
        cookies issued before the upgrade stay valid."""
        def adopt(db: sqlite3.Connection, old: dict[str, str]) -> None:
            if (value := old.get(_OLD_KEY)) is not None:
                db.execute("INSERT OR IGNORE INTO signin_key VALUES (1, ?)", (value,))

        self.index.adopt_legacy_kv((_OLD_KEY,), adopt)

    def add(self, name: str, password: str) -> None:
        if not NAME_RE.match(name):
            raise StoreError("bad_account_name", f"invalid account name {name!r}: use 1-63 "
                             "letters, digits, '.', '_', '@' or '-'")
        check_password_rules(password)
        hashed = hash_password(password)
        with self.index.tx() as db:
            if db.execute("SELECT 1 FROM accounts WHERE name = ?", (name,)).fetchone():
                raise Conflict("account_exists", f"account {name!r} already exists")
            db.execute("INSERT INTO accounts (name, created_at, password_hash) "
                       "VALUES (?, ?, ?)", (name, time.time(), hashed))

    def set_password(self, name: str, password: str) -> None:
        """A new password also signs the account out everywhere."""
        check_password_rules(password)
        hashed = hash_password(password)
        with self.index.tx() as db:
            if not db.execute("UPDATE accounts SET password_hash = ? WHERE name = ?",
                              (hashed, name)).rowcount:
                raise NotFound("no_such_account", f"no account {name!r}")
            db.execute("DELETE FROM web_sessions WHERE account = ?", (name,))

    def remove(self, name: str) -> None:
        with self.index.tx() as db:
            db.execute("DELETE FROM web_sessions WHERE account = ?", (name,))
            if not db.execute("DELETE FROM accounts WHERE name = ?", (name,)).rowcount:
                raise NotFound("no_such_account", f"no account {name!r}")

    def list(self) -> list[dict]:
        return [{"name": n, "created_at": c} for n, c in
                self.index.query("SELECT name, created_at FROM accounts ORDER BY name")]

    def check(self, name: str, password: str) -> bool:
        """Constant work whether or not the account exists."""
        rows = self.index.query("SELECT password_hash FROM accounts WHERE name = ?", (name,))
        stored = rows[0][0] if rows else _DUMMY
        ok = verify_password(password, stored)
        return ok and bool(rows)

    def unlock(self, name: str) -> None:
        """Lift the sign-in lockout of `name` (`rdr admin unlock`, on the console): a stamp
        the daemon's throttle applies at the next sign-in attempt."""
        with self.index.tx() as db:
            if not db.execute("UPDATE accounts SET unlocked_at = ? WHERE name = ?",
                              (time.time(), name)).rowcount:
                raise NotFound("no_such_account", f"no account {name!r}")

    def unlock_stamp(self, name: str) -> float | None:
        """When `name` was last unlocked on the console (None: never, or no such account;
        the same answer for both, and the same cost)."""
        rows = self.index.query("SELECT unlocked_at FROM accounts WHERE lower(name) = ?",
                                (name.lower(),))
        stamps = [r[0] for r in rows if r[0] is not None]
        return max(stamps) if stamps else None

    def _device_key(self) -> bytes:
        """The appliance's key for signing device cookies (made once, kept in the index)."""
        rows = self.index.query("SELECT device_key FROM signin_key WHERE id = 1")
        if not rows:
            with self.index.tx() as db:
                db.execute("INSERT OR IGNORE INTO signin_key VALUES (1, ?)",
                           (secrets.token_hex(32),))
            rows = self.index.query("SELECT device_key FROM signin_key WHERE id = 1")
        return bytes.fromhex(rows[0][0])

    def issue_device(self, name: str) -> str:
        """A device cookie for the browser `name` just signed in on: an id, its issue time
        and an HMAC over both and the account. Nothing is stored: it is checked by its
        signature, and proves only that this browser once knew the password."""
        did, issued = secrets.token_hex(12), int(time.time())
        return f"{did}.{issued}.{self._device_sig(name, did, issued)}"

    def device_id(self, name: str, cookie: str) -> str | None:
        """The device id of a valid, unexpired device cookie of account `name`, else None."""
        if not cookie or len(cookie) > 200:
            return None
        did, _, rest = cookie.partition(".")
        issued_s, _, sig = rest.partition(".")
        if not (did and issued_s.isdigit() and sig):
            return None
        issued = int(issued_s)
        if not 0 <= time.time() - issued <= DEVICE_SECONDS:
            return None
        if not hmac.compare_digest(sig.encode(), self._device_sig(name, did, issued).encode()):
            return None
        return did

    def _device_sig(self, name: str, did: str, issued: int) -> str:
        msg = f"rdr-device\0{name.lower()}\0{did}\0{issued}".encode()
        return hmac.new(self._device_key(), msg, hashlib.sha256).hexdigest()

    def open_session(self, name: str) -> tuple[str, WebSession]:
        """A new session for a signed-in account: (cookie token, session)."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self.index.tx() as db:
            db.execute("DELETE FROM web_sessions WHERE last_seen < ? OR created_at < ?",
                       (now - IDLE_SECONDS, now - MAX_AGE_SECONDS))
            db.execute("INSERT INTO web_sessions VALUES (?, ?, ?, ?)",
                       (_hash(token), name, now, now))
        return token, WebSession(name, csrf_for(token), now)

    def session(self, token: str) -> WebSession | None:
        """The live session of a cookie token, refreshing its idle timer."""
        if not token or len(token) > 200:
            return None
        key = _hash(token)
        rows = self.index.query("SELECT account, created_at, last_seen FROM web_sessions "
                                "WHERE id_hash = ?", (key,))
        if not rows:
            return None
        account, created, seen = rows[0]
        now = time.time()
        if now - seen > IDLE_SECONDS or now - created > MAX_AGE_SECONDS:
            self.close_session(token)
            return None
        if now - seen > _TOUCH_EVERY:
            with self.index.tx() as db:
                db.execute("UPDATE web_sessions SET last_seen = ? WHERE id_hash = ?", (now, key))
        return WebSession(account, csrf_for(token), created)

    def close_session(self, token: str) -> None:
        with self.index.tx() as db:
            db.execute("DELETE FROM web_sessions WHERE id_hash = ?", (_hash(token),))


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
