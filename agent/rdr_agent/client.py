"""The agent's connection to the appliance: TLS (pinned fingerprint or CA), bearer token,
JSON errors turned into `ApplianceError`, and retries with backoff for idempotent calls so a
blip on the LAN does not fail a night's backup."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from rdr_agent.errors import ApplianceError, ConnectError, Endpoint
from rdr_agent.http import (
    ConnectFailed,
    ConnectionLost,
    FingerprintMismatch,
    HTTPPool,
    Response,
    TLSFailed,
)
from rdr_agent.util.ratelimit import Pacer
from rdr_format import __version__

__all__ = ["ApplianceClient", "ApplianceError", "ConnectError", "Endpoint", "describe"]

log = logging.getLogger("rdr.agent.client")
T = TypeVar("T")


def describe(exc: BaseException) -> str:
    """One line for the page (and the log) saying why a job or backup run failed."""
    if isinstance(exc, ApplianceError):
        return f"the appliance refused: {exc.message} ({exc.status} {exc.code})"
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {os.fsdecode(exc.filename)}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    text = str(exc)
    return text if text else type(exc).__name__


def ssl_for(ep: Endpoint) -> ssl.SSLContext | bytes:
    """The pinned certificate's SHA-256, or a context verifying against the CA given (else
    the system's)."""
    if ep.fingerprint:
        digest = bytes.fromhex(ep.fingerprint.replace(":", "").strip())
        if len(digest) != hashlib.sha256().digest_size:
            raise ValueError("the certificate fingerprint must be a SHA-256 digest (64 hex)")
        return digest
    ctx = ssl.create_default_context(cafile=ep.ca_file) if ep.ca_file else \
        ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _hex(digest: bytes) -> str:
    """A SHA-256 digest as `rdr status` and the page show it: hex pairs joined by colons."""
    return ":".join(f"{b:02X}" for b in digest)


def _refused(exc: BaseException) -> bool:
    """Did the connection attempt end in ECONNREFUSED (no listener at that port) or fail to
    resolve the name: what waiting does not change while the URL is wrong?"""
    return isinstance(exc, ConnectFailed) and (exc.refused or exc.unresolved)


_TRANSIENT = (ConnectFailed, ConnectionLost)


_JSON = {"Content-Type": "application/json"}
_OCTETS = {"Content-Type": "application/octet-stream"}


class ApplianceClient:
    def __init__(self, ep: Endpoint, *, connections: int = 8, retries: int = 5) -> None:
        self.ep = ep
        self.base = ep.url.rstrip("/") + "/api/v1"
        self.retries = retries
        self.restore_id: int | None = None
        #: Upload limit on the LAN (kbit/s, 0 = none), from the host's plan.
        self.upload_kbps = 0
        self._pacer = Pacer()
        #: The appliance has answered once: a refused connection after that is a restart.
        self._reached = False
        self._http = HTTPPool(
            self.base, ssl_for(ep), limit=connections,
            headers={"Authorization": f"Bearer {ep.token}",
                     "X-RDR-Agent": f"rdr-agent/{__version__}"},
            connect_timeout=15, read_timeout=300)

    async def close(self) -> None:
        await self._http.close()

    async def __aenter__(self) -> ApplianceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _retry(self, fn: Callable[[], Awaitable[T]], idempotent: bool) -> T:
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                result = await fn()
                self._reached = True
                return result
            except ApplianceError as exc:
                if not idempotent or exc.status < 500 or exc.status == 507 \
                        or exc.code == "busy" or attempt == self.retries:
                    raise  # (a busy appliance: the caller waits for its slot)
                log.warning("appliance answered %s (%s); retrying", exc.status, exc.code)
            except TLSFailed as exc:
                raise ConnectError(self._tls_failure(exc)) from None
            except _TRANSIENT as exc:
                if _refused(exc) and not self._reached:
                    # Nothing listens there (a wrong URL or port, or the daemon is not
                    # running): waiting does not make it listen, so say so at once. Once the
                    # appliance has answered, a refusal is a restart and worth the retries.
                    why = "unknown host name" if getattr(exc, "unresolved", False) \
                        else "connection refused"
                    raise ConnectError(f"cannot reach the appliance at {self.ep.url}: {why} "
                                       "(is the URL and port right, and is the appliance "
                                       "running?)") from None
                if attempt == self.retries:
                    raise ConnectError(f"cannot reach the appliance at {self.ep.url}: "
                                       f"{exc or type(exc).__name__}") from None
                if not idempotent and attempt > 0:
                    raise ConnectError(f"lost the appliance at {self.ep.url}: {exc}") from None
                log.warning("appliance unreachable (%s); retrying", exc or type(exc).__name__)
            await asyncio.sleep(delay * (0.75 + random.random() / 2))
            delay = min(delay * 2, 15)
        raise AssertionError("unreachable")

    def _tls_failure(self, exc: TLSFailed) -> str:
        """One readable line: the fingerprints as `rdr status` shows them, and the hint
        names only the option actually in use."""
        where = f"the appliance at {self.ep.url}"
        if isinstance(exc, FingerprintMismatch):
            return (f"{where} failed TLS verification: its certificate's fingerprint is "
                    f"{_hex(exc.got)}, not the pinned {_hex(exc.expected)} (check "
                    "--fingerprint)")
        if self.ep.ca_file:
            hint = "check --ca"
        else:
            hint = ("pin its certificate with --fingerprint (the appliance logs it at start) "
                    "or give its CA with --ca")
        return f"{where} failed TLS verification: {exc.reason} ({hint})"

    @staticmethod
    async def _check(resp: Response) -> None:
        if resp.status < 400:
            return
        try:
            body = await resp.json()
            code, message = body.get("error", "error"), body.get("message", resp.reason)
        except (ValueError, AttributeError):
            body, code, message = None, "http_error", f"HTTP {resp.status} {resp.reason}"
        raise ApplianceError(resp.status, code, message, body)

    async def _json(self, method: str, path: str, body: Any = None, *,
                    idempotent: bool = True) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = None if body is None else _JSON

        async def call() -> Any:
            async with self._http.request(method, path, data, headers) as resp:
                await self._check(resp)
                if resp.status == 204:
                    return None
                return await resp.json()

        return await self._retry(call, idempotent)

    # --- API ---
    async def whoami(self) -> dict:
        return await self._json("GET", "/whoami")

    async def put_report(self, report: dict) -> None:
        """This host's report (rdr_agent/hostreport.py)."""
        await self._json("PUT", "/agent/report", report)

    async def offered_version(self) -> str | None:
        """The agent version the appliance offers (None: it holds no wheelhouse)."""
        try:
            return (await self._json("GET", "/enrol/version")).get("version")
        except ApplianceError as exc:
            if exc.status == 503:
                return None
            raise

    async def open_session(self, resume: str | None = None, key: str | None = None) -> dict:
        """`key` names this agent run's request: asked again with it, the appliance resumes
        the session it opened then instead of refusing a second backup (an older appliance
        ignores it, hence not retried here)."""
        body = {k: v for k, v in (("resume", resume), ("key", key)) if v}
        return await self._json("POST", "/sessions", body, idempotent=False)

    async def known_missing(self, sid: str, ids: list[str],
                            proofs: list[str] | None = None) -> list[str]:
        """Which of `ids` to upload; `proofs` (one per id, under the session's nonce) let
        the appliance answer "have" for chunks it holds that this host has not stored."""
        body: dict[str, Any] = {"chunks": ids}
        if proofs is not None:
            body["proofs"] = proofs
        return (await self._json("POST", f"/sessions/{sid}/known", body))["missing"]

    async def put_chunk(self, sid: str, cid: str, data: bytes) -> bool:
        async def call() -> bool:
            await self._pacer.pace(len(data), self.upload_kbps)
            async with self._http.request("PUT", f"/sessions/{sid}/chunks/{cid}", data,
                                          _OCTETS) as resp:
                await self._check(resp)
                return resp.status == 201

        return await self._retry(call, True)

    async def name_catalog(self, sid: str, start: int, pieces: list[tuple[str, int]]) -> int:
        """Name catalog pieces `start`.. (see rdr_agent.catalog_names); returns how many
        the appliance has been told of."""
        body = {"start": start, "chunks": [[c, s] for c, s in pieces]}
        return (await self._json("POST", f"/sessions/{sid}/catalog", body))["named"]

    async def heartbeat(self, sid: str) -> None:
        await self._json("POST", f"/sessions/{sid}/heartbeat")

    async def commit(self, sid: str, body: dict) -> dict:
        return await self._json("POST", f"/sessions/{sid}/commit", body, idempotent=False)

    async def abort(self, sid: str) -> None:
        await self._json("DELETE", f"/sessions/{sid}")

    async def snapshots(self) -> list[dict]:
        return (await self._json("GET", "/snapshots"))["snapshots"]

    async def snapshot(self, snap: str) -> dict:
        """{"snapshot": row, "manifest": manifest} of `snap` (an id or "latest")."""
        return await self._json("GET", f"/snapshots/{snap}")

    async def start_restore(self, snap: str) -> dict:
        """Tell the appliance a restore starts (it records the start latency)."""
        info = await self._json("POST", "/restores", {"snapshot": snap}, idempotent=False)
        self.restore_id = info["restore"]
        return info

    async def get_chunk(self, snap: str, cid: str) -> bytes:
        headers = {"X-RDR-Restore": str(self.restore_id)} if self.restore_id else None

        async def call() -> bytes:
            async with self._http.request("GET", f"/snapshots/{snap}/chunks/{cid}",
                                          None, headers) as resp:
                await self._check(resp)
                return await resp.read()

        return await self._retry(call, True)

    # --- push-restore jobs: the agent polls, the appliance never connects to it ---
    async def next_job(self, wait: int) -> dict | None:
        """Claim this host's next restore job, waiting up to `wait` (<= 60) seconds for one
        (long poll); None when none came."""
        res = await self._json("GET", f"/agent/jobs/next?wait={int(wait)}")
        return None if res is None else res["job"]

    async def job_snapshot(self, jid: int) -> dict:
        """{"snapshot": row, "manifest": manifest} of a running job's source snapshot."""
        return await self._json("GET", f"/agent/jobs/{int(jid)}/snapshot")

    async def job_catalog(self, jid: int, out: str | os.PathLike[str]) -> int:
        """Download a running job's catalog (the selected paths only) to `out`; returns
        its size. Written piece by piece: a whole-snapshot job's catalog can be large."""
        async def call() -> int:
            async with self._http.request("GET", f"/agent/jobs/{int(jid)}/catalog") as resp:
                await self._check(resp)
                n = 0
                f = await asyncio.to_thread(open, out, "wb")
                try:
                    async for piece in resp.iter_chunked(1 << 20):
                        await asyncio.to_thread(f.write, piece)  # the loop never waits on disk
                        n += len(piece)
                finally:
                    await asyncio.to_thread(f.close)
                return n

        return await self._retry(call, True)

    async def job_chunk(self, jid: int, cid: str) -> bytes:
        """A chunk file of a running job: only the selected files' bytes of the chunk (the
        rest zeroed), so its plaintext does not hash to `cid`."""
        async def call() -> bytes:
            async with self._http.request("GET", f"/agent/jobs/{int(jid)}/chunks/{cid}"
                                          ) as resp:
                await self._check(resp)
                return await resp.read()

        return await self._retry(call, True)

    async def job_progress(self, jid: int, files: int, nbytes: int,
                           total_bytes: int | None) -> None:
        await self._json("POST", f"/agent/jobs/{int(jid)}/progress",
                         {"files": files, "bytes": nbytes, "total_bytes": total_bytes})

    async def job_finish(self, jid: int, ok: bool, files: int, nbytes: int, errors: int,
                         message: str) -> None:
        """The job's result. Safe to retry: a repeat of a delivered result is a 409, which
        the caller treats as 'already recorded'."""
        await self._json("POST", f"/agent/jobs/{int(jid)}/finish",
                         {"ok": ok, "files": files, "bytes": nbytes, "errors": errors,
                          "message": message})

    # --- scheduled backups: the same poll hands out backup runs -------------------------
    async def next_work(self, wait: int, backups: bool) -> dict | None:
        """{"job": restore job} or {"backup": backup run} (runs only with `backups`),
        waiting up to `wait` (<= 60) seconds; None when nothing came."""
        return await self._json("GET", f"/agent/jobs/next?wait={int(wait)}"
                                f"&backups={int(backups)}")

    async def plan(self) -> dict:
        return await self._json("GET", "/agent/plan")

    async def backup_progress(self, rid: int, files: int, nbytes: int) -> bool:
        """Report progress; True when the appliance asks the backup to pause."""
        res = await self._json("POST", f"/agent/backups/{int(rid)}/progress",
                               {"files": files, "bytes": nbytes})
        return bool(res.get("pause"))

    async def backup_finish(self, rid: int, body: dict) -> None:
        """The run's outcome (a repeat after a lost answer is a 409: already recorded)."""
        await self._json("POST", f"/agent/backups/{int(rid)}/finish", body)
