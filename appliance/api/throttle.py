"""Sign-in throttling: per account name, per client address, per known device.

Every attempt is admitted or refused *before* its password is checked, and an admitted
attempt counts against the budget while its check is pending: 200 parallel guesses get at
most `free` password checks between them, and the right password sent in the same burst
after the budget is spent is refused like the rest (429). After `free` failures within
`window` seconds a key is locked, and each further failure doubles the lockout, up to `cap`.

Keys: ``account:NAME`` (any name, existing or not, so the answers never tell which accounts
exist) and ``addr:IP`` for an ordinary attempt. An attempt that presents the signed device
cookie of an earlier successful sign-in of the same account on that browser uses
``device:ID`` *instead*: an attacker on the LAN who locks the account (or shares the
admin's address) cannot lock out the admin's own browser, and a stolen device cookie is
still held to `free` guesses per window. A success clears the account's and the device's
count (not the address's, so a valid account cannot be used to reset guessing).

`rdr admin unlock NAME` on the console (another process) leaves an unlock stamp in the
index; `unlock` clears the account's record and every address record, so the admin at the
console can sign in next. Kept in memory: a restart forgets counts, which costs an attacker
a daemon restart they cannot cause.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Record:
    failures: list[float] = field(default_factory=list)
    locked_until: float = 0.0
    pending: int = 0


class SignInThrottle:
    def __init__(self, free: int = 5, window: float = 900.0, base: float = 30.0,
                 cap: float = 900.0, clock: Callable[[], float] = time.monotonic,
                 max_records: int = 100_000) -> None:
        self.free, self.window, self.base, self.cap = free, window, base, cap
        self.max_records = max_records
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self._unlocked: dict[str, float] = {}  # account key -> unlock stamp already applied

    def retry_after(self, *keys: str) -> float:
        """Seconds until these keys may try again (0: now)."""
        now = self._clock()
        return max((self._records[k].locked_until - now for k in keys if k in self._records),
                   default=0.0) if keys else 0.0

    def admit(self, keys: Iterable[str]) -> float:
        """Reserve an attempt on every key at once: 0.0 when admitted (the attempt is then
        pending until `finish`), else the seconds to wait. Synchronous on the event loop,
        so no other attempt can slip between the check and the reservation."""
        keys = tuple(keys)
        now = self._clock()
        wait = 0.0
        for k in keys:
            rec = self._records.get(k)
            if rec is None:
                continue
            rec.failures = [t for t in rec.failures if now - t < self.window]
            if rec.locked_until > now:
                wait = max(wait, rec.locked_until - now)
            elif rec.pending and len(rec.failures) + rec.pending >= self.free:
                # the budget is spent or held by attempts in flight: one at a time after a
                # lockout, and none while the free ones are still being checked
                wait = max(wait, 1.0)
        if wait > 0:
            return wait
        for k in keys:
            self._records.setdefault(k, _Record()).pending += 1
        if len(self._records) > self.max_records:
            self._prune(now)
        return 0.0

    def finish(self, keys: Iterable[str], ok: bool, clear: Iterable[str] = ()) -> None:
        """An admitted attempt ended: a failure counts on every key (and may lock it); a
        success clears the keys in `clear`. An attempt whose outcome is unknown (the client
        went away mid-check) must be finished as a failure."""
        now = self._clock()
        for k in keys:
            rec = self._records.setdefault(k, _Record())
            rec.pending = max(0, rec.pending - 1)
            if ok:
                continue
            rec.failures = [t for t in rec.failures if now - t < self.window] + [now]
            over = len(rec.failures) - self.free + 1
            if over > 0:
                rec.locked_until = now + min(self.cap, self.base * 2 ** (over - 1))
        if ok:
            for k in clear:
                rec = self._records.get(k)
                if rec is not None and not rec.pending:
                    del self._records[k]
                elif rec is not None:
                    rec.failures, rec.locked_until = [], 0.0

    def unlock(self, account_key: str, stamp: float | None) -> None:
        """Apply a console unlock (`stamp`, from the index) once: forget the account's
        failures and every address's (an admin at the console vouches for the next
        sign-in); attempts in flight stay counted."""
        if stamp is None or self._unlocked.get(account_key, 0.0) >= stamp:
            return
        self._unlocked[account_key] = stamp
        for k, rec in list(self._records.items()):
            if k == account_key or k.startswith("addr:"):
                rec.failures, rec.locked_until = [], 0.0
                if not rec.pending:
                    del self._records[k]

    def _prune(self, now: float) -> None:
        """Bounded memory under a spray of names: drop records that hold nothing, then,
        if still too many, the oldest unlocked ones."""
        for k in [k for k, r in self._records.items()
                  if not r.pending and r.locked_until < now
                  and all(now - t >= self.window for t in r.failures)]:
            del self._records[k]
        excess = len(self._records) - self.max_records
        if excess > 0:
            for k in [k for k, r in self._records.items()
                      if not r.pending and r.locked_until < now][:excess]:
                del self._records[k]
