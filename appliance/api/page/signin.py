"""Sign-in on the restore page: local admin accounts, a session cookie with its CSRF token,
and the throttle that admits every attempt before its password is checked (throttle.py).

Password checks (scrypt, ~50 ms and 16 MiB each) run in a small executor of their own, so a
flood of sign-ins holds neither the light workers nor the heavy ones downloads need; past
SIGNIN_QUEUE checks at once a sign-in is answered 429 at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from aiohttp import web

from ...accounts import DEVICE_SECONDS, Accounts, WebSession
from ...errors import BadRequest, TooManyRequests, Unauthorized, UnsupportedMediaType
from ...pools import run_in
from ..auth import SESSION, SESSION_COOKIE, require_account
from ..jsonbody import read_json
from ..throttle import SignInThrottle

log = logging.getLogger("rdr.page")
T = TypeVar("T")
#: The browser's proof of an earlier successful sign-in (see throttle.py): sent only to the
#: sign-in route, never readable by scripts.
DEVICE_COOKIE = "rdr_device"
#: Sign-in checks queued or running at once (each is ~50 ms of scrypt and 16 MiB); past
#: this a sign-in is answered 429 at once instead of waiting behind a flood.
SIGNIN_QUEUE = 16


class SignInApi:
    def __init__(self, accounts: Accounts, pool: Executor, signin_pool: Executor,
                 throttle: SignInThrottle | None = None) -> None:
        """`pool` runs the small account reads; `signin_pool` the password checks."""
        self.accounts = accounts
        self.pool = pool
        self.signin_pool = signin_pool
        self.throttle = throttle or SignInThrottle()
        self._hashing = 0  # sign-in checks queued or running in signin_pool

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await run_in(self.pool, fn, *args)

    async def session_for(self, token: str) -> WebSession | None:
        """The web session of a cookie (for `auth_middleware`), None when unknown or over."""
        return await self.run(self.accounts.session, token)

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_post("/auth/login", self.login, name="public.login")
        r.add_post("/auth/logout", self.logout)
        r.add_get("/auth/session", self.get_session)

    async def login(self, request: web.Request) -> web.Response:
        """Sign in. The attempt is admitted by the throttle (and counted while pending)
        before the password is checked; an unknown account name gets the same answers,
        lockouts and cost as a known one; a browser that signed in before (device cookie)
        is throttled on its own key, so another client's failures never lock it out."""
        if request.content_type != "application/json":
            # A cross-site form cannot send JSON without a CORS preflight: no login CSRF.
            raise UnsupportedMediaType("unsupported_media_type", "send the credentials as JSON")
        body = await read_json(request, 4096)
        name, password = body.get("name"), body.get("password")
        if not isinstance(name, str) or not isinstance(password, str) or not name \
                or len(name) > 200:
            raise BadRequest("bad_field", "fields 'name' and 'password' must be strings")
        account_key = "account:" + name.lower()
        self.throttle.unlock(account_key, await self.run(self.accounts.unlock_stamp, name))
        cookie = request.cookies.get(DEVICE_COOKIE, "")
        device = await self.run(self.accounts.device_id, name, cookie) if cookie else None
        keys = (f"device:{device}",) if device else (account_key,
                                                     "addr:" + (request.remote or "?"))
        if self._hashing >= SIGNIN_QUEUE:
            raise TooManyRequests("busy", "too many sign-ins at once; try again in 1 s",
                                  retry_after=1)
        wait = self.throttle.admit(keys)
        if wait > 0:
            raise _throttled(wait)
        ok = False
        self._hashing += 1
        try:
            ok = await run_in(self.signin_pool, self.accounts.check, name, password)
        finally:
            self._hashing -= 1
            # counted as a failure unless it succeeded, also when the client went away
            self.throttle.finish(keys, ok, clear=keys[:1])
        if not ok:
            log.warning("failed sign-in for account %r from %s%s", name, request.remote,
                        " (known device)" if device else "")
            wait = self.throttle.retry_after(*keys)
            if wait > 0:
                raise _throttled(wait)
            raise Unauthorized("bad_credentials", "wrong account name or password")
        token, ws = await self.run(self.accounts.open_session, name)
        device_cookie = await self.run(self.accounts.issue_device, name)
        log.info("account %r signed in from %s", name, request.remote)
        resp = web.json_response({"account": ws.account, "csrf": ws.csrf})
        resp.set_cookie(SESSION_COOKIE, token, httponly=True, secure=True, samesite="Strict",
                        path="/")
        resp.set_cookie(DEVICE_COOKIE, device_cookie, httponly=True, secure=True,
                        samesite="Strict", path="/api/v1/auth/login", max_age=DEVICE_SECONDS)
        return resp

    async def logout(self, request: web.Request) -> web.Response:
        require_account(request)
        token = request.cookies.get(SESSION_COOKIE, "")
        await self.run(self.accounts.close_session, token)
        resp = web.Response(status=204)
        resp.del_cookie(SESSION_COOKIE, path="/")
        return resp

    async def get_session(self, request: web.Request) -> web.Response:
        account = require_account(request)
        return web.json_response({"account": account, "csrf": request[SESSION].csrf})


def _throttled(wait: float) -> TooManyRequests:
    secs = max(1, int(wait + 0.999))
    return TooManyRequests("throttled", f"too many failed sign-ins; try again in {secs} s",
                           retry_after=secs)
