"""Where replicated objects go: the data center's S3 store, or a local directory.

A target only moves opaque, already encrypted bytes. Retry and bandwidth limits are
decorators around any target (as restic layers its backends), so the engine stays one
straight loop and each concern is tested on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from rdr_agent.util.ratelimit import Pacer
from rdr_format.fsutil import fsync_dir, write_durable

from ..dcobjects import NotFoundAtTarget, ObjectVersion, Target, TargetError
from ..timeofday import in_span, parse_schedule

log = logging.getLogger("rdr.replication")


class DirTarget:
    """A local directory standing in for the data center (the embedded default)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    async def prepare(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        if ".." in name.split("/") or name.startswith("/"):
            raise TargetError(f"bad object name {name!r}", False)
        return self.root / name

    async def put(self, name: str, data: bytes, retain_until: float | None = None) -> None:
        if retain_until is not None:
            raise TargetError("a directory cannot lock objects", False)

        def write() -> None:
            p = self._path(name)
            p.parent.mkdir(parents=True, exist_ok=True)
            # Durable before the engine records it as held there (its read-back of a
            # checkpoint is what calls a snapshot replicated).
            tmp = p.with_name(f".{p.name}.tmp-{threading.get_ident()}")
            write_durable(tmp, data)
            os.replace(tmp, p)
            fsync_dir(p.parent)

        await asyncio.to_thread(write)

    async def get(self, name: str) -> bytes:
        try:
            return await asyncio.to_thread(self._path(name).read_bytes)
        except FileNotFoundError:
            raise NotFoundAtTarget(name) from None

    async def exists(self, name: str) -> bool:
        return await asyncio.to_thread(self._path(name).exists)

    async def list(self, prefix: str) -> AsyncIterator[str]:
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        names = await asyncio.to_thread(
            lambda: sorted(str(p.relative_to(self.root)) for p in base.rglob("*")
                           if p.is_file() and not p.name.startswith(".")) if base.exists()
            else [])
        for n in names:
            yield n

    async def delete(self, name: str) -> None:
        await asyncio.to_thread(lambda: self._path(name).unlink(missing_ok=True))

    async def object_lock(self) -> bool:
        return False

    async def extend(self, name: str, retain_until: float) -> None:
        raise TargetError("a directory cannot lock objects", False)

    async def retained_until(self, name: str) -> float | None:
        return None

    # --- the data center's own side (`rdr dc expire`): a directory keeps no versions ---
    async def versions(self, prefix: str) -> AsyncIterator[ObjectVersion]:
        async for n in self.list(prefix):
            yield ObjectVersion(n, None, True)

    async def version_retained_until(self, v: ObjectVersion) -> float | None:
        return None

    async def delete_version(self, v: ObjectVersion) -> None:
        await self.delete(v.name)

    async def get_version(self, v: ObjectVersion) -> bytes:
        return await self.get(v.name)

    async def close(self) -> None:
        return None


class S3Target:
    """The data center's S3-compatible store (Ceph RGW, MinIO; Swift s3api in tests)."""

    def __init__(self, endpoint: str, bucket: str, access_key: str, secret_key: str,
                 region: str = "us-east-1", connections: int = 8) -> None:
        self.endpoint, self.bucket = endpoint, bucket
        self._creds = (access_key, secret_key)
        self.region = region
        self.connections = connections
        self._client = None
        self._ctx = None

    async def _c(self):
        if self._client is None:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session

            cfg = AioConfig(signature_version="s3v4", s3={"addressing_style": "path"},
                            retries={"max_attempts": 1}, connect_timeout=10, read_timeout=120,
                            max_pool_connections=self.connections,
                            request_checksum_calculation="when_required",
                            response_checksum_validation="when_required")
            self._ctx = get_session().create_client(
                "s3", endpoint_url=self.endpoint, region_name=self.region,
                aws_access_key_id=self._creds[0], aws_secret_access_key=self._creds[1],
                config=cfg)
            self._client = await self._ctx.__aenter__()
        return self._client

    def _error(self, exc: Exception, name: str) -> TargetError:
        from botocore.exceptions import ClientError, EndpointConnectionError

        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NoSuchKey", "404", "NotFound"):
                return NotFoundAtTarget(name)
            # A HEAD answer has no body: its code is just the status.
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied") \
                    or status == 403:
                return TargetError(f"the data center refused the credentials ({code}): check "
                                   "the replication access key and secret", False)
            if code == "NoSuchBucket":
                return TargetError(f"bucket {self.bucket!r} does not exist at the data center",
                                   False)
            return TargetError(f"data center error {code or status} on {name}",
                               status >= 500 or status in (0, 408, 429))
        if isinstance(exc, EndpointConnectionError | OSError | asyncio.TimeoutError):
            return TargetError(f"cannot reach the data center at {self.endpoint}: {exc}", True)
        return TargetError(f"data center request failed: {exc}", True)

    async def _call(self, name: str, fn: Callable):
        try:
            return await fn(await self._c())
        except TargetError:
            raise
        except Exception as exc:  # botocore raises many unrelated types
            raise self._error(exc, name) from None

    async def put(self, name: str, data: bytes, retain_until: float | None = None) -> None:
        lock = {} if retain_until is None else {
            "ObjectLockMode": "COMPLIANCE",
            "ObjectLockRetainUntilDate": datetime.fromtimestamp(retain_until, UTC)}
        await self._call(name, lambda c: c.put_object(Bucket=self.bucket, Key=name, Body=data,
                                                      **lock))

    async def object_lock(self) -> bool:
        """Object Lock enabled on the bucket. Anything else -- no lock configuration, a
        store without the call (Swift's s3api), a policy that does not let us read it --
        counts as not locked: the page then says the off-site copy is not immutable."""
        from botocore.exceptions import ClientError

        async def fn(c):
            try:
                cfg = await c.get_object_lock_configuration(Bucket=self.bucket)
            except ClientError as exc:
                log.info("data center bucket %s: no Object Lock (%s)", self.bucket,
                         exc.response.get("Error", {}).get("Code", "?"))
                return False
            return cfg.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"

        return await self._call(self.bucket, fn)

    async def extend(self, name: str, retain_until: float) -> None:
        until = datetime.fromtimestamp(retain_until, UTC)
        await self._call(name, lambda c: c.put_object_retention(
            Bucket=self.bucket, Key=name,
            Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until}))

    async def retained_until(self, name: str) -> float | None:
        return await self._retention(name, None)

    async def _retention(self, name: str, version: str | None) -> float | None:
        from botocore.exceptions import ClientError

        async def fn(c):
            try:
                r = await c.get_object_retention(Bucket=self.bucket, Key=name,
                                                 **({"VersionId": version} if version else {}))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in (
                        "NoSuchObjectLockConfiguration", "ObjectLockConfigurationNotFoundError"):
                    return None
                raise
            until = r.get("Retention", {}).get("RetainUntilDate")
            return until.timestamp() if until is not None else None

        return await self._call(name, fn)

    # --- the data center's own side (`rdr dc create-bucket`, `rdr dc expire`), run with
    # the data center's administrator credentials, never the appliance's ---
    async def versions(self, prefix: str) -> AsyncIterator[ObjectVersion]:
        client = await self._c()
        paginator = client.get_paginator("list_object_versions")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Versions", []):
                    yield ObjectVersion(item["Key"], item.get("VersionId"),
                                        bool(item.get("IsLatest")))
        except Exception as exc:
            raise self._error(exc, prefix) from None

    async def version_retained_until(self, v: ObjectVersion) -> float | None:
        return await self._retention(v.name, v.version)

    async def delete_version(self, v: ObjectVersion) -> None:
        await self._call(v.name, lambda c: c.delete_object(
            Bucket=self.bucket, Key=v.name, **({"VersionId": v.version} if v.version else {})))

    async def get_version(self, v: ObjectVersion) -> bytes:
        """One stored version's bytes (`rdr dc restore` falls back to older versions when
        the latest one fails verification: a version put over a locked object)."""
        async def fn(c):
            resp = await c.get_object(Bucket=self.bucket, Key=v.name,
                                      **({"VersionId": v.version} if v.version else {}))
            async with resp["Body"] as body:
                return await body.read()

        return await self._call(v.name, fn)

    async def create_locked_bucket(self, default_days: int, policy: str | None) -> None:
        """The bucket with Object Lock (it cannot be enabled later), a default compliance
        retention for anything written without its own, and POLICY (JSON) if given."""
        async def fn(c):
            await c.create_bucket(Bucket=self.bucket, ObjectLockEnabledForBucket=True)
            await c.put_object_lock_configuration(
                Bucket=self.bucket, ObjectLockConfiguration={
                    "ObjectLockEnabled": "Enabled",
                    "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE",
                                                  "Days": default_days}}})
            if policy:
                await c.put_bucket_policy(Bucket=self.bucket, Policy=policy)

        await self._call(self.bucket, fn)

    async def get(self, name: str) -> bytes:
        async def fn(c):
            resp = await c.get_object(Bucket=self.bucket, Key=name)
            async with resp["Body"] as body:
                return await body.read()

        return await self._call(name, fn)

    async def exists(self, name: str) -> bool:
        try:
            await self._call(name, lambda c: c.head_object(Bucket=self.bucket, Key=name))
            return True
        except NotFoundAtTarget:
            return False

    async def prepare(self) -> None:
        """Check credentials and the bucket (created if the provider has not yet: with
        Object Lock where the store has it, which can only be chosen at creation)."""
        from botocore.exceptions import ClientError

        async def fn(c):
            try:
                await c.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if status != 404:
                    raise
                try:
                    await c.create_bucket(Bucket=self.bucket, ObjectLockEnabledForBucket=True)
                except ClientError:  # a store without Object Lock: a plain bucket
                    await c.create_bucket(Bucket=self.bucket)

        await self._call(self.bucket, fn)

    async def list(self, prefix: str) -> AsyncIterator[str]:
        client = await self._c()
        paginator = client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield item["Key"]
        except Exception as exc:
            raise self._error(exc, prefix) from None

    async def delete(self, name: str) -> None:
        await self._call(name, lambda c: c.delete_object(Bucket=self.bucket, Key=name))

    async def close(self) -> None:
        if self._ctx is not None:
            with contextlib.suppress(Exception):
                await self._ctx.__aexit__(None, None, None)
            self._client = self._ctx = None


class RetryingTarget:
    """Retries transient failures with capped exponential backoff; permanent ones at once."""

    def __init__(self, inner: Target, attempts: int = 6, base_delay: float = 0.5,
                 max_delay: float = 30.0) -> None:
        self.inner, self.attempts = inner, attempts
        self.base_delay, self.max_delay = base_delay, max_delay

    async def prepare(self) -> None:
        await self._retry(self.inner.prepare)

    async def _retry(self, fn: Callable):
        delay = self.base_delay
        for attempt in range(self.attempts):
            try:
                return await fn()
            except TargetError as exc:
                if not exc.transient or attempt == self.attempts - 1:
                    raise
                log.warning("data center: %s; retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay * (0.75 + random.random() / 2))
            delay = min(delay * 2, self.max_delay)
        raise AssertionError("unreachable")

    async def put(self, name: str, data: bytes, retain_until: float | None = None) -> None:
        if retain_until is None:  # test doubles take no lock argument
            await self._retry(lambda: self.inner.put(name, data))
        else:
            await self._retry(lambda: self.inner.put(name, data, retain_until))

    async def object_lock(self) -> bool:
        return await self._retry(self.inner.object_lock)

    async def extend(self, name: str, retain_until: float) -> None:
        await self._retry(lambda: self.inner.extend(name, retain_until))

    async def retained_until(self, name: str) -> float | None:
        return await self._retry(lambda: self.inner.retained_until(name))

    async def versions(self, prefix: str) -> AsyncIterator[ObjectVersion]:
        async for v in self.inner.versions(prefix):
            yield v

    async def version_retained_until(self, v: ObjectVersion) -> float | None:
        return await self._retry(lambda: self.inner.version_retained_until(v))

    async def delete_version(self, v: ObjectVersion) -> None:
        await self._retry(lambda: self.inner.delete_version(v))

    async def get_version(self, v: ObjectVersion) -> bytes:
        return await self._retry(lambda: self.inner.get_version(v))

    async def create_locked_bucket(self, default_days: int, policy: str | None) -> None:
        await self.inner.create_locked_bucket(default_days, policy)

    async def get(self, name: str) -> bytes:
        return await self._retry(lambda: self.inner.get(name))

    async def exists(self, name: str) -> bool:
        return await self._retry(lambda: self.inner.exists(name))

    async def list(self, prefix: str) -> AsyncIterator[str]:
        async for n in self.inner.list(prefix):
            yield n

    async def delete(self, name: str) -> None:
        await self._retry(lambda: self.inner.delete(name))

    async def close(self) -> None:
        await self.inner.close()


class RateLimitedTarget:
    """Token-bucket limit on upload bandwidth, with a time-of-day schedule (the customer's
    link is shared: e.g. 2 Mbit/s in office hours, unlimited at night)."""

    def __init__(self, inner: Target, default_kbps: float, schedule: list[str], tz: str,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] | None = None) -> None:
        self.inner = inner
        self.default_kbps = default_kbps
        self.schedule = parse_schedule(schedule)
        self.zone = ZoneInfo(tz)
        self.clock = clock
        self.wall = wall or (lambda: datetime.now(self.zone))
        self._pacer = Pacer(clock)

    def current_kbps(self) -> float:
        now = self.wall().astimezone(self.zone)
        minute = now.hour * 60 + now.minute
        for start, end, kbps in self.schedule:
            if in_span(minute, start, end):
                return kbps
        return self.default_kbps

    async def prepare(self) -> None:
        await self.inner.prepare()

    async def _pace(self, nbytes: int) -> None:
        await self._pacer.pace(nbytes, self.current_kbps())

    async def put(self, name: str, data: bytes, retain_until: float | None = None) -> None:
        await self._pace(len(data))
        if retain_until is None:
            await self.inner.put(name, data)
        else:
            await self.inner.put(name, data, retain_until)

    async def object_lock(self) -> bool:
        return await self.inner.object_lock()

    async def extend(self, name: str, retain_until: float) -> None:
        await self.inner.extend(name, retain_until)

    async def retained_until(self, name: str) -> float | None:
        return await self.inner.retained_until(name)

    async def get(self, name: str) -> bytes:
        return await self.inner.get(name)

    async def exists(self, name: str) -> bool:
        return await self.inner.exists(name)

    async def list(self, prefix: str) -> AsyncIterator[str]:
        async for n in self.inner.list(prefix):
            yield n

    async def delete(self, name: str) -> None:
        await self.inner.delete(name)

    async def close(self) -> None:
        await self.inner.close()
