"""`rdr notify test [--target NAME]` and `rdr notify log`: e-mail and webhook notifications.

The test goes through the same outbox and sender the daemon uses (made and sent by this
command, so the answer is the server's), and is kept in the log like every message."""

from __future__ import annotations

import argparse
import asyncio

from .core import EXIT_PROBLEMS, Context, Parents, Subparsers, command, group, print_json, ts


def notify_test(ctx: Context) -> int:
    from .. import wiring

    with ctx.stored() as store:
        service = wiring.notifications(ctx.cfg, store, None)
        results = asyncio.run(service.send_test(ctx.args.target, f"cli:{_user()}"))
    failed = 0
    for r in results:
        if r["delivered"]:
            print(f"notification {r['id']} delivered to {r['target']}")
        else:
            failed += 1
            print(f"notification {r['id']} NOT delivered to {r['target']}: {r['error']}")
    return EXIT_PROBLEMS if failed else 0


def notify_log(ctx: Context) -> int:
    from .. import wiring

    with ctx.stored() as store:
        view = wiring.notifications(ctx.cfg, store, None).view(ctx.args.limit)
    if ctx.args.json:
        print_json(view)
        return 0
    c = view["counts"]
    print(f"{c['sent_total']} sent, {c['waiting']} waiting, {c['undeliverable_total']} "
          f"undeliverable, {c['failed_attempts_total']} failed attempts")
    print(f"{'ID':>6}  {'MADE':20} {'TARGET':12} {'CLASS':11} {'STATE':13} {'TRIES':>5}  "
          "SUBJECT")
    for m in view["messages"]:
        print(f"{m['id']:>6}  {ts(m['created_at']):20} {m['target']:12} {m['class']:11} "
              f"{m['state']:13} {m['attempts']:>5}  {m['subject']}")
        print(f"{'':8}to {', '.join(m['recipients'])}"
              + (f"; sent {ts(m['sent_at'])}" if m["sent_at"] else "")
              + (f"; next try {ts(m['next_attempt_at'])}" if m["next_attempt_at"] else "")
              + (f"; last error: {m['last_error']}" if m["last_error"] else ""))
    return 0


def _limit(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 1000):
        raise argparse.ArgumentTypeError("must be a whole number from 1 to 1000")
    return int(raw)


def _user() -> str:
    from .core import user

    return user()


def add_notify(sub: Subparsers, common: Parents) -> None:
    g = group(sub, "notify", "e-mail and webhook notifications: a test, the log")
    t = command(g, "test", notify_test, "send a test message to every target (or one)",
                common, {0: "every test message was delivered",
                         EXIT_PROBLEMS: "a test message was not delivered (the reason is "
                                        "printed and kept in 'rdr notify log')"})
    t.add_argument("--target", help="only this target (its name in [[notify.*]])")
    lg = command(g, "log", notify_log, "what was sent, to whom, when, and what failed",
                 common, {0: "the log was printed"})
    lg.add_argument("--limit", type=_limit, default=50, metavar="N",
                    help="the latest N messages (1-1000, default 50)")
    lg.add_argument("--json", action="store_true")


#: The top-level commands this module adds, by name.
PARSERS = {"notify": add_notify}
