"""Failed sign-in throttling, per account name and per client address.

Both keys count: a guesser trying one account from many addresses is slowed by the account
key, one address trying many accounts by the address key. After `free` failures within
`window` seconds each further failure doubles the lockout, up to `cap`. A success clears the
account's count (not the address's, so a valid account cannot be used to reset guessing).
Kept in memory: a restart forgets counts, which costs an attacker a daemon restart they
cannot cause.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Record:
    failures: list[float] = field(default_factory=list)
    locked_until: float = 0.0


class SignInThrottle:
    def __init__(self, free: int = 5, window: float = 900.0, base: float = 30.0,
                 cap: float = 900.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.free, self.window, self.base, self.cap = free, window, base, cap
        self._clock = clock
        self._records: dict[str, _Record] = {}

    def retry_after(self, *keys: str) -> float:
        """Seconds until these keys may try again (0: now)."""
        now = self._clock()
        return max((self._records[k].locked_until - now for k in keys if k in self._records),
                   default=0.0) if keys else 0.0

    def failed(self, *keys: str) -> None:
        now = self._clock()
        for k in keys:
            rec = self._records.setdefault(k, _Record())
            rec.failures = [t for t in rec.failures if now - t < self.window] + [now]
            over = len(rec.failures) - self.free
            if over > 0:
                rec.locked_until = now + min(self.cap, self.base * 2 ** (over - 1))
        if len(self._records) > 10_000:  # bounded memory under a spray of names
            self._prune(now)

    def succeeded(self, key: str) -> None:
        self._records.pop(key, None)

    def _prune(self, now: float) -> None:
        for k in [k for k, r in self._records.items()
                  if r.locked_until < now and all(now - t >= self.window for t in r.failures)]:
            del self._records[k]
