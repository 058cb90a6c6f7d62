"""Authentication: every /api/v1 call names its principal, by bearer token or by session.

Host tokens (``rdr_...``) act for one host and see only its data; admin API tokens
(``rdra_...``, `rdr tokens add`) are for the provider's tools, see no host's files, and
carry a scope: ``metrics`` (the default: /metrics only, refused on every /api/v1 route),
``read`` (also appliance-wide reads: overview, usage, plans, runs) or ``admin`` (also
changes: plans, "back up now", pause, resume); admin *accounts* (`rdr admin add`) sign in on
the LAN page and get a session cookie, which sees every host, may change plans and may queue
restores. A request with a session
cookie must send the session's CSRF token in ``X-CSRF-Token`` for anything but GET/HEAD.
Routes named ``public.*`` (sign-in) need neither. Handlers state which kinds they accept.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

from aiohttp import web

from ..accounts import WebSession
from ..errors import Forbidden, NotFound, Unauthorized
from ..pools import run_in
from ..store.index import Index

SESSION_COOKIE = "rdr_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))

#: The authenticated host of a request (None for an admin token).
HOST = web.RequestKey("host", str)
#: The admin token name of a request (None for a host token).
ADMIN = web.RequestKey("admin", str)
#: The signed-in admin account of a request (None for bearer tokens).
ACCOUNT = web.RequestKey("account", str)
#: The session behind ACCOUNT (its CSRF token), None for bearer tokens.
SESSION = web.RequestKey("session", WebSession)
#: The scope of the admin token of a request (None otherwise).
SCOPE = web.RequestKey("scope", str)

Principal = tuple[str, str, str]  # ("host" | "admin", name, admin token scope or "")


class RememberedTokens:
    """A token check that still answers while the index cannot be read.

    The provider's Prometheus must keep scraping /metrics while the data disk is gone --
    that is when it matters most -- but the admin tokens are checked against the index on
    that disk. So the tokens the index accepted are remembered (as SHA-256 digests, never
    the tokens) and, only while the index raises, accepted from memory. A token the index
    rejects is forgotten at once; one never accepted before cannot be checked, and the
    index's error is raised (503, retry later): nothing is let in that the index would not
    have let in the last time it could say.
    """

    def __init__(self, lookup: Callable[[str], str | None], limit: int = 16) -> None:
        self.lookup = lookup
        self.limit = limit
        self._known: dict[bytes, str] = {}  # digest -> token name, oldest first
        self._lock = threading.Lock()

    def check(self, token: str) -> str | None:
        """The token's name, or None (runs in a worker thread: it reads the index)."""
        digest = hashlib.sha256(token.encode()).digest()
        try:
            name = self.lookup(token)
        except sqlite3.Error:
            with self._lock:
                name = self._known.get(digest)
            if name is None:
                raise  # cannot be checked now: unavailable (503), not "unauthorized"
            return name
        with self._lock:
            self._known.pop(digest, None)
            if name is not None:
                self._known[digest] = name
                while len(self._known) > self.limit:
                    del self._known[next(iter(self._known))]
        return name


class TokenLookup:
    """Bearer tokens to principals, for `auth_middleware`: a host's token acts for that host,
    an admin API token for its name with its scope. Read from the index in the light pool:
    a token check must never wait behind heavy work."""

    def __init__(self, index: Index, pool: Executor) -> None:
        self.index = index
        self.pool = pool

    def _find(self, token: str) -> Principal | None:
        host = self.index.host_for_token(token)
        if host is not None:
            return "host", host, ""
        admin = self.index.api_token_for(token)
        return ("admin", *admin) if admin is not None else None

    async def __call__(self, token: str) -> Principal | None:
        return await run_in(self.pool, self._find, token)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def auth_middleware(lookup: Callable[[str], Awaitable[Principal | None]],
                    session: Callable[[str], Awaitable[WebSession | None]] | None = None):
    """Middleware resolving the bearer token or session cookie to a principal (401
    otherwise) and checking the CSRF token of cookie-authenticated changes (403)."""

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                         ) -> web.StreamResponse:
        request[HOST] = request[ADMIN] = request[ACCOUNT] = None
        request[SESSION] = request[SCOPE] = None
        route = request.match_info.route.name or ""
        token = bearer_token(request)
        if token:
            who = await lookup(token)
            if who is None:
                raise Unauthorized("unauthorized", "missing or invalid bearer token")
            kind, name, scope = who
            request[HOST] = name if kind == "host" else None
            request[ADMIN] = name if kind == "admin" else None
            if kind == "admin":
                if scope not in ("read", "admin"):
                    raise Forbidden("forbidden", f"this admin API token's scope is "
                                    f"{scope!r}: it reaches /metrics only")
                request[SCOPE] = scope
            return await handler(request)
        cookie = request.cookies.get(SESSION_COOKIE)
        ws = await session(cookie) if cookie and session is not None else None
        if ws is not None:
            request[ACCOUNT], request[SESSION] = ws.account, ws
            if request.method not in SAFE_METHODS and not hmac.compare_digest(
                    request.headers.get(CSRF_HEADER, "").encode(), ws.csrf.encode()):
                raise Forbidden("csrf", f"missing or wrong {CSRF_HEADER} header; reload "
                                "the page")
            return await handler(request)
        if route.startswith("public."):
            return await handler(request)
        raise Unauthorized("unauthorized", "sign in, or send a bearer token")

    return middleware


def require_host(request: web.Request) -> str:
    host = request[HOST]
    if host is None:
        raise Forbidden("forbidden", "this endpoint needs a host token")
    return host


def require_account(request: web.Request) -> str:
    account = request[ACCOUNT]
    if account is None:
        raise Forbidden("forbidden", "this endpoint needs an admin account signed in on "
                        "the appliance page")
    return account


def require_host_access(request: web.Request, host: str) -> str:
    """A host's files: any host for a signed-in account, only its own for a host token."""
    if request[ACCOUNT] is not None:
        return request[ACCOUNT]
    if request[HOST] is None:
        raise Forbidden("forbidden", "admin API tokens see no host's files; sign in or "
                        "use the host's token")
    if request[HOST] != host:
        raise NotFound("no_such_host", f"no host {host!r}")
    return request[HOST]


def require_overview(request: web.Request) -> str:
    """Appliance-wide figures: signed-in accounts and admin API tokens (scope `read` or
    `admin`: the middleware refuses `metrics` ones), not hosts."""
    who = request[ACCOUNT] or request[ADMIN]
    if who is None:
        raise Forbidden("forbidden", "this endpoint needs an admin account or admin token")
    return who


def require_change(request: web.Request) -> str:
    """A change of appliance state (plans, backups): a signed-in admin account or an
    `admin`-scoped token. Returns who, for logs and audits: ``account:NAME``/``token:NAME``."""
    if request[ACCOUNT] is not None:
        return f"account:{request[ACCOUNT]}"
    if request[ADMIN] is not None and request[SCOPE] == "admin":
        return f"token:{request[ADMIN]}"
    if request[ADMIN] is not None:
        raise Forbidden("forbidden", f"this admin API token's scope is {request[SCOPE]!r}; "
                        "changes need an admin account or a token of scope 'admin'")
    raise Forbidden("forbidden", "this endpoint needs an admin account or admin token")


def require_admin(request: web.Request) -> str:
    admin = request[ADMIN]
    if admin is None:
        raise Forbidden("forbidden", "this endpoint needs an admin API token")
    return admin
