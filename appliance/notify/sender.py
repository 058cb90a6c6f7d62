"""Delivery of what the outbox holds: each due message claimed, sent, marked.

Back-off: after a failed attempt the next waits `retry_first_seconds`, doubling to at most
`retry_max_seconds`; a message still not delivered `give_up_hours` after it was made (48 by
default, so a weekend-long mail server outage is waited out), or refused for good (an SMTP
5xx for every recipient, a webhook's 4xx), is undeliverable: kept in the log with its last
error, counted in /metrics.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor

from ..pools import run_in
from .outbox import Outbox, Outgoing
from .settings import NotifyConfig, SmtpTarget, WebhookTarget, read_secret
from .transport import DeliveryError, post_webhook, send_smtp

log = logging.getLogger("rdr.notify")


def next_attempt(cfg: NotifyConfig, m: Outgoing, now: float,
                 error: DeliveryError) -> float | None:
    """When to try M again, or None: give up (a test message is tried once: its sender
    is waiting for the answer)."""
    if error.permanent or m.cls == "test" or now - m.created_at >= cfg.give_up_hours * 3600:
        return None
    delay = min(cfg.retry_first_seconds * 2 ** m.attempts, cfg.retry_max_seconds)
    return now + delay


async def deliver_one(outbox: Outbox, cfg: NotifyConfig, pool: Executor | None,
                      m: Outgoing) -> str | None:
    """Send one claimed message; None when delivered, else the error."""
    target = cfg.target(m.target)
    try:
        if target is None:
            raise DeliveryError(f"no target named {m.target!r} any more", permanent=True)
        if isinstance(target, SmtpTarget):
            refused = await run_in(pool, send_smtp, target, m.recipients, m.body)
            if refused:
                log.warning("notification %d: the server refused %d recipient(s) (codes %s)",
                            m.id, len(refused), sorted(set(refused.values())))
        else:
            assert isinstance(target, WebhookTarget)
            key = await run_in(pool, read_secret, target.secret_file)
            await post_webhook(target, key, m.id, m.body)
    except DeliveryError as exc:
        now = time.time()
        at = next_attempt(cfg, m, now, exc)
        await run_in(pool, outbox.failed, m.id, str(exc), at)
        if at is None:
            log.error("notification %d (%s to %s) is UNDELIVERABLE after %d attempt(s): %s",
                      m.id, m.cls, m.target, m.attempts + 1, exc)
        else:
            log.warning("notification %d (%s to %s) not delivered (%s); next attempt in "
                        "%.0f s", m.id, m.cls, m.target, exc, at - now)
        return str(exc)
    await run_in(pool, outbox.sent, m.id, time.time())
    log.info("notification %d (%s) delivered to %s", m.id, m.cls, m.target)
    return None


async def deliver_due(outbox: Outbox, cfg: NotifyConfig, pool: Executor | None,
                      ids: list[int] | None = None) -> dict[int, str | None]:
    """Send every due message (or IDS at once); message id -> None (delivered) or error."""
    out: dict[int, str | None] = {}
    for m in await run_in(pool, outbox.claim, time.time(), 20, ids):
        out[m.id] = await deliver_one(outbox, cfg, pool, m)
    return out
