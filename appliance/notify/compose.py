"""Events to messages: grouping and per-class throttles ("never a storm").

A group's events wait `group_seconds` from the oldest one for others to join (fifty hosts
missing the same window's end arrive within a scheduler tick or two: one message); a class
sends at most one message per `throttle_minutes` to a target (events arriving meanwhile
wait and go together in the next). A test message is made at once, only by whoever asked for
it (`rdr notify test`, the page), which sends it and waits for the answer; the daemon's
composer leaves it alone, so the two never race for it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .messages import Context, email_bytes, message_id, render, webhook_bytes
from .outbox import NewMessage, Outbox, Pending
from .settings import NotifyConfig, SmtpTarget, Target

#: Classes that never wait for a group or a throttle (and that the daemon does not compose).
IMMEDIATE = ("test",)


def compose(outbox: Outbox, cfg: NotifyConfig, serial: str, now: float,
            groups: set[str] | None = None) -> list[int]:
    """Make the messages that are due from the pending events (of GROUPS only, when given:
    `rdr notify test` makes its own and leaves the rest to the daemon); returns their ids.
    In the pool (SQLite)."""
    pending: dict[str, list[Pending]] = {}
    for e in outbox.pending():
        pending.setdefault(e.grp, []).append(e)
    ctx = Context(serial, cfg.page_url, cfg.attach_after)
    made: list[int] = []
    for grp, events in pending.items():
        cls = events[0].cls
        if groups is not None and grp not in groups:
            continue
        if groups is None and cls in IMMEDIATE:
            continue  # a test is made and sent by whoever asked for it (rdr notify, page)
        immediate = cls in IMMEDIATE
        if not immediate and now - events[0].at < cfg.group_seconds:
            continue
        only = events[0].data.get("target") if cls == "test" else None  # rdr notify test
        targets = [t for t in cfg.targets if t.to(cls) and only in (None, t.name)]
        if not immediate and any(_throttled(outbox, cfg, cls, t, now) for t in targets):
            continue
        ids = [e.id for e in events]
        rendered = render(cls, events, ctx)
        domain = f"{serial}.rdr.invalid"
        msgid = message_id(grp, ids, domain)
        messages = [_message(t, cls, grp, rendered, msgid, serial, now) for t in targets]
        made += outbox.take(ids, messages, now) or []
    return made


def _throttled(outbox: Outbox, cfg: NotifyConfig, cls: str, target: Target,
               now: float) -> bool:
    minutes = cfg.throttle_minutes.get(cls, 0.0)
    if minutes <= 0:
        return False
    last = outbox.last_message_at(cls, target.name)
    return last is not None and now - last < minutes * 60


def _message(t: Target, cls: str, grp: str, r, msgid: str, serial: str,
             now: float) -> NewMessage:
    to = t.to(cls)
    if isinstance(t, SmtpTarget):
        body = email_bytes(r, t.sender, to, msgid)
    else:
        body = webhook_bytes(r, cls, serial, msgid, now)
        # the log shows where it went, not the URL's path and query (a webhook URL often
        # carries a token of its own)
        u = urlsplit(t.url)
        to = (f"{u.scheme}://{u.hostname}{f':{u.port}' if u.port else ''}",)
    return NewMessage(t.name, t.kind, cls, grp, r.subject, to, body)
