"""Who may use the appliance besides the hosts: `rdr tokens` (admin API tokens for the
provider's tools) and `rdr admin` (accounts for the LAN restore page)."""

from __future__ import annotations

import sys

from ..config import Config
from ..store.index import TOKEN_SCOPES
from .audit import audited
from .core import Context, Parents, Subparsers, command, group, ts

_SCOPE_TEXT = {"metrics": "/metrics only", "read": "/metrics and appliance-wide reads",
               "admin": "reads and changes: plans, backups"}


# --- admin API tokens ---
def tokens_add(ctx: Context) -> int:
    a = ctx.args
    with ctx.stored() as store:
        token = store.index.add_api_token(a.name, a.scope)
        audited(store, "credential", {"api_token": a.name, "action": "add", "scope": a.scope})
    print(f"admin API token {a.name}, scope {a.scope} ({_SCOPE_TEXT[a.scope]}; no host data), "
          "shown once:")
    print(token)
    return 0


def tokens_scope(ctx: Context) -> int:
    a = ctx.args
    with ctx.stored() as store:
        store.index.set_api_token_scope(a.name, a.scope)
        audited(store, "credential", {"api_token": a.name, "action": "scope",
                                      "scope": a.scope})
    print(f"admin API token {a.name} now has scope {a.scope} ({_SCOPE_TEXT[a.scope]})")
    return 0


def tokens_list(ctx: Context) -> int:
    with ctx.stored() as store:
        rows = store.index.api_tokens()
    for t in rows:
        print(f"{t['name']:24} {t['scope']:8} created {ts(t['created_at'])}")
    return 0


def tokens_revoke(ctx: Context) -> int:
    with ctx.stored() as store:
        store.index.revoke_api_token(ctx.args.name)
        audited(store, "credential", {"api_token": ctx.args.name, "action": "revoke"})
    print(f"admin API token {ctx.args.name} revoked")
    return 0


# --- accounts of the restore page ---
def new_password(ctx: Context) -> str:
    """Asked twice on a terminal; one line on stdin with --password-stdin (scripts)."""
    from ..accounts import check_password_rules
    from ..store.errors import StoreError

    if ctx.args.password_stdin:
        pw = sys.stdin.readline().rstrip("\n")
    else:
        import getpass

        if not sys.stdin.isatty():
            raise StoreError("no_terminal", "no terminal to ask for the password; "
                             "use --password-stdin")
        pw = getpass.getpass(f"password for {ctx.args.name}: ")
        if getpass.getpass("again: ") != pw:
            raise StoreError("password_mismatch", "the two passwords differ")
    check_password_rules(pw)
    return pw


def admin_add(ctx: Context) -> int:
    from ..accounts import Accounts

    pw = new_password(ctx)
    with ctx.stored() as store:
        Accounts(store.index).add(ctx.args.name, pw)
        audited(store, "credential", {"account": ctx.args.name, "action": "add"})
    print(f"admin account {ctx.args.name} created; sign in at {page_url(ctx.cfg)}")
    return 0


def page_url(cfg: Config) -> str:
    """The restore page's address as the configuration's first listener serves it (a
    wildcard listener answers on this machine's name)."""
    import socket

    from ..config import parse_listen

    host, port = parse_listen(cfg.server.listen[0])
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    return f"https://{f'[{host}]' if ':' in host else host}:{port}/"


def admin_passwd(ctx: Context) -> int:
    from ..accounts import Accounts

    pw = new_password(ctx)
    with ctx.stored() as store:
        Accounts(store.index).set_password(ctx.args.name, pw)
        audited(store, "credential", {"account": ctx.args.name, "action": "password"})
    print(f"password of {ctx.args.name} changed; its sessions were signed out")
    return 0


def admin_remove(ctx: Context) -> int:
    from ..accounts import Accounts

    with ctx.stored() as store:
        Accounts(store.index).remove(ctx.args.name)
        audited(store, "credential", {"account": ctx.args.name, "action": "remove"})
    print(f"admin account {ctx.args.name} removed")
    return 0


def admin_unlock(ctx: Context) -> int:
    from ..accounts import Accounts

    with ctx.stored() as store:
        Accounts(store.index).unlock(ctx.args.name)
    print(f"sign-in lockout of {ctx.args.name} lifted (the running daemon applies it at "
          "the next sign-in)")
    return 0


def admin_list(ctx: Context) -> int:
    from ..accounts import Accounts

    with ctx.stored() as store:
        rows = Accounts(store.index).list()
    for a in rows:
        print(f"{a['name']:24} created {ts(a['created_at'])}")
    return 0


def add_tokens(sub: Subparsers, common: Parents) -> None:
    tsub = group(sub, "tokens", "admin API tokens (for the provider's tools)")
    ta = command(tsub, "add", tokens_add, "create a token and print it once", common)
    ta.add_argument("name")
    ta.add_argument("--scope", choices=TOKEN_SCOPES, default="metrics",
                    help="metrics: /metrics only (Prometheus; the default); read: also the "
                    "appliance-wide API's reads; admin: also changes (plans, backups)")
    tsc = command(tsub, "scope", tokens_scope, "change a token's scope", common)
    tsc.add_argument("name")
    tsc.add_argument("scope", choices=TOKEN_SCOPES)
    command(tsub, "list", tokens_list, "list tokens", common)
    tr = command(tsub, "revoke", tokens_revoke, "revoke a token", common)
    tr.add_argument("name")


def add_admin(sub: Subparsers, common: Parents) -> None:
    asub = group(sub, "admin", "admin accounts for the LAN restore page")
    actions = (("add", admin_add, "create an account (asks for its password)"),
               ("passwd", admin_passwd, "change an account's password"),
               ("remove", admin_remove, "remove an account"),
               ("list", admin_list, "list accounts"),
               ("unlock", admin_unlock, "lift an account's sign-in lockout"))
    for action, fn, helptext in actions:
        ap = command(asub, action, fn, helptext, common)
        if action != "list":
            ap.add_argument("name")
        if action in ("add", "passwd"):
            ap.add_argument("--password-stdin", action="store_true",
                            help="read the password from the first line of stdin")


#: The top-level commands this module adds, by name.
PARSERS = {"tokens": add_tokens, "admin": add_admin}
