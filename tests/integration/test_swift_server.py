"""The one-node OpenStack Swift (s3api) that stands in for the data center's S3 store.

Exercises hil.swift.SwiftServer through aiobotocore, the async S3 client the appliance uses:
the operations the replication needs, pagination past one page, wrong credentials, and that
stop() leaves no process behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from hil.swift import SwiftS3, SwiftServer

pytestmark = pytest.mark.skipif(
    not SwiftServer.available(),
    reason="OpenStack Swift is not installed (apt packages in .ci/swift-packages)")

MiB = 1 << 20


@pytest.fixture(scope="module")
def swift(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwiftS3]:
    server = SwiftServer(tmp_path_factory.mktemp("swift"))
    t0 = time.monotonic()
    creds = server.start()
    print(f"\nSwift started in {time.monotonic() - t0:.1f} s at {creds.endpoint}")
    try:
        yield creds
    finally:
        server.stop()


def client(creds: SwiftS3):
    return get_session().create_client("s3", **creds.client_kwargs())


@pytest.fixture
async def s3(swift: SwiftS3) -> AsyncIterator[object]:
    async with client(swift) as c:
        yield SwiftS3.add_content_md5(c)


async def test_object_roundtrip_5mib(s3) -> None:
    data = os.urandom(5 * MiB)
    await s3.create_bucket(Bucket="roundtrip")
    put = await s3.put_object(Bucket="roundtrip", Key="dir/blob", Body=data)
    assert put["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'

    head = await s3.head_object(Bucket="roundtrip", Key="dir/blob")
    assert head["ContentLength"] == len(data)
    assert head["ETag"] == put["ETag"]

    got = await s3.get_object(Bucket="roundtrip", Key="dir/blob")
    async with got["Body"] as body:
        assert await body.read() == data

    ranged = await s3.get_object(Bucket="roundtrip", Key="dir/blob", Range="bytes=100-199")
    async with ranged["Body"] as body:
        assert await body.read() == data[100:200]

    buckets = await s3.list_buckets()
    assert "roundtrip" in [b["Name"] for b in buckets["Buckets"]]

    await s3.delete_object(Bucket="roundtrip", Key="dir/blob")
    with pytest.raises(ClientError) as e:
        await s3.head_object(Bucket="roundtrip", Key="dir/blob")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as e:
        await s3.get_object(Bucket="roundtrip", Key="dir/blob")
    assert e.value.response["Error"]["Code"] == "NoSuchKey"
    await s3.delete_bucket(Bucket="roundtrip")


async def test_list_prefix_and_pagination(s3) -> None:
    bucket = "listing"
    await s3.create_bucket(Bucket=bucket)
    many = [f"many/{i:05d}" for i in range(1100)]
    other = ["other/a", "other/b/c", "otherwise"]
    sem = asyncio.Semaphore(32)

    async def put(key: str) -> None:
        async with sem:
            await s3.put_object(Bucket=bucket, Key=key, Body=key.encode())

    t0 = time.monotonic()
    await asyncio.gather(*(put(k) for k in many + other))
    print(f"\n{len(many) + len(other)} small PUTs in {time.monotonic() - t0:.1f} s")

    listed = await s3.list_objects_v2(Bucket=bucket, Prefix="other/")
    assert [o["Key"] for o in listed["Contents"]] == ["other/a", "other/b/c"]
    assert listed["IsTruncated"] is False
    listed = await s3.list_objects_v2(Bucket=bucket, Prefix="other/", Delimiter="/")
    assert [o["Key"] for o in listed["Contents"]] == ["other/a"]
    assert [p["Prefix"] for p in listed["CommonPrefixes"]] == ["other/b/"]

    # Swift's s3api returns at most 1000 keys a page: the default paginator needs two.
    pages = 0
    keys = []
    async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                   Prefix="many/"):
        pages += 1
        keys += [o["Key"] for o in page.get("Contents", [])]
    assert keys == many
    assert pages == 2

    keys = []
    async for page in s3.get_paginator("list_objects").paginate(
            Bucket=bucket, Prefix="many/", PaginationConfig={"PageSize": 300}):
        keys += [o["Key"] for o in page.get("Contents", [])]
    assert keys == many

    # DeleteObjects needs Content-MD5 on Swift 2.30 (SwiftS3.add_content_md5 adds it).
    t0 = time.monotonic()
    for i in range(0, len(many), 1000):
        result = await s3.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": k} for k in many[i:i + 1000]],
                                   "Quiet": True})
        assert not result.get("Errors")
    print(f"{len(many)} keys removed with DeleteObjects in {time.monotonic() - t0:.1f} s")
    for key in other:
        await s3.delete_object(Bucket=bucket, Key=key)
    listed = await s3.list_objects_v2(Bucket=bucket)
    assert listed["KeyCount"] == 0
    await s3.delete_bucket(Bucket=bucket)


@pytest.mark.parametrize("change", [{"secret_key": "wrong"},
                                    {"access_key": "nobody:none", "secret_key": "x"}])
async def test_wrong_credentials_rejected(swift: SwiftS3, change: dict[str, str]) -> None:
    async with client(dataclasses.replace(swift, **change)) as bad:
        with pytest.raises(ClientError) as e:
            await bad.list_buckets()
    code = e.value.response["Error"]["Code"]
    print(f"\nwrong credentials {change}: {code}")
    assert code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


async def test_botocore_default_checksums_over_http(swift: SwiftS3) -> None:
    """botocore's default (CRC32 on every upload, in a header over plain HTTP) also works:
    Swift 2.30 ignores the header. hil.swift still asks for checksums only when required."""
    config = {"request_checksum_calculation": "when_supported",
              "response_checksum_validation": "when_supported"}
    async with get_session().create_client("s3", **swift.client_kwargs(**config)) as s3:
        await s3.create_bucket(Bucket="checksums")
        await s3.put_object(Bucket="checksums", Key="k", Body=b"data" * 1000)
        got = await s3.get_object(Bucket="checksums", Key="k")
        async with got["Body"] as body:
            assert await body.read() == b"data" * 1000
        try:  # without SwiftS3.add_content_md5: recorded, not asserted
            await s3.delete_objects(Bucket="checksums", Delete={"Objects": [{"Key": "k"}]})
            print("\nDeleteObjects without Content-MD5: accepted")
        except ClientError as e:
            print(f"\nDeleteObjects without Content-MD5: {e.response['Error']}")
        await s3.delete_object(Bucket="checksums", Key="k")
        await s3.delete_bucket(Bucket="checksums")


async def test_put_throughput(s3) -> None:
    """Measured, not asserted: 4 MiB objects, one at a time and four at once."""
    await s3.create_bucket(Bucket="speed")
    blobs = [os.urandom(4 * MiB) for _ in range(8)]
    t0 = time.monotonic()
    for i, blob in enumerate(blobs):
        await s3.put_object(Bucket="speed", Key=f"seq/{i}", Body=blob)
    seq = len(blobs) * 4 / (time.monotonic() - t0)
    t0 = time.monotonic()
    sem = asyncio.Semaphore(4)

    async def put(i: int, blob: bytes) -> None:
        async with sem:
            await s3.put_object(Bucket="speed", Key=f"par/{i}", Body=blob)

    await asyncio.gather(*(put(i, b) for i, b in enumerate(blobs)))
    par = len(blobs) * 4 / (time.monotonic() - t0)
    print(f"\nPUT 4 MiB objects: {seq:.0f} MiB/s one at a time, {par:.0f} MiB/s four at once")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_restart_keeps_data_and_stop_leaves_no_process(swift: SwiftS3,
                                                             tmp_path: Path) -> None:
    """A second server beside the module's (no port collisions), on a fixed proxy port;
    data survives a stop/start on the same work dir; stop() ends every process it started."""
    port = _free_port()
    server = SwiftServer(tmp_path / "swift2", port=port)
    all_pids: list[int] = []
    try:
        creds = await asyncio.to_thread(server.start)
        assert creds.endpoint == f"http://127.0.0.1:{port}"
        assert creds.endpoint != swift.endpoint
        assert set(server.pids) == {"memcached", "account", "container", "object", "proxy"}
        all_pids += server.pids.values()
        async with client(creds) as s3:
            await s3.create_bucket(Bucket="persist")
            await s3.put_object(Bucket="persist", Key="k", Body=b"survives a restart")
        await asyncio.to_thread(server.stop)

        creds = await asyncio.to_thread(server.start)
        all_pids += server.pids.values()
        async with client(creds) as s3:
            got = await s3.get_object(Bucket="persist", Key="k")
            async with got["Body"] as body:
                assert await body.read() == b"survives a restart"
    finally:
        server.stop()
    server.stop()  # idempotent
    assert server.pids == {}
    for pid in all_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    leftovers = [p.info for p in psutil.process_iter(["pid", "cmdline"])
                 if any(str(server.workdir) in a for a in p.info["cmdline"] or [])]
    assert leftovers == []
