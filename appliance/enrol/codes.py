"""One-time enrolment codes: what the "Add a host" command carries instead of a token.

A code is ``rdre_`` + a 16-hex id + ``_`` + 192 random bits. Only its SHA-256 is stored
(like host tokens: with that many random bits a fast hash is as strong as a slow one), it
works once, and for `LIFETIME` seconds after it was issued. A new code for a host replaces
its unused ones, so only the newest command works. Redeeming compares the hashes in constant
time and looks the row up by the id alone, so timing tells nothing about the secret.

Redeeming is a single UPDATE ... WHERE used_at IS NULL: two hosts racing with the same code
cannot both win. The token itself is made by the caller (`Datastore.rotate_token`) after the
code is spent, so re-enrolling a host rotates its token and the old one stops working.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from ..errors import Gone, NotFound, Unauthorized
from ..store.index import Index

PREFIX = "rdre_"
#: How long a code works after it was issued: a day, as the page says.
LIFETIME = 24 * 3600.0
_ID_HEX = 16

_DDL = """
CREATE TABLE IF NOT EXISTS enrol_codes (
    code_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    code_hash BLOB NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL,
    state TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'used', 'replaced'))
);
CREATE INDEX IF NOT EXISTS enrol_codes_host ON enrol_codes (host);
CREATE TABLE IF NOT EXISTS enrolments (
    host TEXT PRIMARY KEY,
    enrolled_at REAL NOT NULL,
    count INTEGER NOT NULL DEFAULT 1
);
"""


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True, slots=True)
class IssuedCode:
    host: str
    code: str
    expires_at: float


class EnrolCodes:
    """The codes and each host's enrolment record, on the appliance's index."""

    def __init__(self, index: Index, lifetime: float = LIFETIME) -> None:
        self.index = index
        self.lifetime = lifetime
        index.own_tables(_DDL)

    def issue(self, host: str, now: float | None = None) -> IssuedCode:
        """A new code for `host` (which must exist); earlier unused codes stop working."""
        now = time.time() if now is None else now
        if not self.index.query("SELECT 1 FROM hosts WHERE name = ?", (host,)):
            raise NotFound("no_such_host", f"no host named {host!r}")
        code_id = secrets.token_hex(_ID_HEX // 2)
        secret = secrets.token_urlsafe(24)
        with self.index.tx() as db:
            db.execute("UPDATE enrol_codes SET state = 'replaced' WHERE host = ? AND "
                       "state = 'open'", (host,))
            db.execute("INSERT INTO enrol_codes (code_id, host, code_hash, created_at, "
                       "expires_at) VALUES (?, ?, ?, ?, ?)",
                       (code_id, host, _digest(secret), now, now + self.lifetime))
            # codes long past use are of no interest: keep the table small
            db.execute("DELETE FROM enrol_codes WHERE expires_at < ?", (now - 30 * 86400,))
        return IssuedCode(host, f"{PREFIX}{code_id}_{secret}", now + self.lifetime)

    def redeem(self, code: str, now: float | None = None) -> str:
        """Spend `code` and return its host. Unauthorized for a code that never existed (or
        is malformed), Gone with a reason for one used, replaced or expired."""
        now = time.time() if now is None else now
        code = code.strip()
        code_id, secret = self._split(code)
        rows = self.index.query("SELECT host, code_hash, expires_at, state FROM enrol_codes "
                                "WHERE code_id = ?", (code_id,))
        expected = rows[0][1] if rows else b"\0" * 32
        if not hmac.compare_digest(_digest(secret), expected) or not rows:
            raise Unauthorized("bad_code", "this enrolment code is not valid; copy the "
                               "command again from the appliance page")
        host, _, expires_at, state = rows[0]
        if state == "used":
            raise Gone("code_used", "this enrolment code was already used; make a new one "
                       f"on the appliance page or with 'rdr hosts enrol {host}'")
        if state == "replaced":
            raise Gone("code_replaced", "a newer enrolment code replaced this one; use the "
                       "newest command from the appliance page")
        if now >= expires_at:
            raise Gone("code_expired", "this enrolment code expired (codes work for 24 "
                       f"hours); make a new one on the page or with 'rdr hosts enrol {host}'")
        with self.index.tx() as db:
            cur = db.execute("UPDATE enrol_codes SET state = 'used', used_at = ? WHERE "
                             "code_id = ? AND state = 'open'", (now, code_id))
            if cur.rowcount != 1:  # another request spent it between the read and now
                raise Gone("code_used", "this enrolment code was already used")
            db.execute("INSERT INTO enrolments (host, enrolled_at) VALUES (?, ?) "
                       "ON CONFLICT (host) DO UPDATE SET enrolled_at = excluded.enrolled_at,"
                       " count = count + 1", (host, now))
        return host

    @staticmethod
    def _split(code: str) -> tuple[str, str]:
        body = code[len(PREFIX):] if code.startswith(PREFIX) else ""
        code_id, sep, secret = body.partition("_")
        if not sep or len(code_id) != _ID_HEX or not secret or len(code) > 200:
            raise Unauthorized("bad_code", "this is not an enrolment code (it starts with "
                               f"{PREFIX!r}); copy the command again from the appliance page")
        return code_id, secret

    def code_id_of(self, code: str) -> str | None:
        """The id part of a well-formed code (a throttle key that reveals nothing)."""
        try:
            return self._split(code.strip())[0]
        except Unauthorized:
            return None

    def enrolments(self) -> dict[str, dict]:
        """host -> {"enrolled_at", "count"} of every host that ever enrolled."""
        return {h: {"enrolled_at": t, "count": c} for h, t, c in self.index.query(
            "SELECT host, enrolled_at, count FROM enrolments")}

    def pending(self, host: str, now: float | None = None) -> dict | None:
        """The host's open, unexpired code's expiry ({"expires_at"}), or None."""
        now = time.time() if now is None else now
        rows = self.index.query("SELECT expires_at FROM enrol_codes WHERE host = ? AND "
                                "state = 'open' AND expires_at > ? ORDER BY created_at DESC "
                                "LIMIT 1", (host, now))
        return {"expires_at": rows[0][0]} if rows else None

    def forget(self, host: str) -> None:
        """A removed host: its codes and enrolment go too."""
        with self.index.tx() as db:
            db.execute("DELETE FROM enrol_codes WHERE host = ?", (host,))
            db.execute("DELETE FROM enrolments WHERE host = ?", (host,))
