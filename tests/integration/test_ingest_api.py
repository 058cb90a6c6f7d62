"""The ingest API's answers to bad input: right status, JSON error body, nothing stored."""

from __future__ import annotations

import aiohttp
import pytest

from rdr_agent.client import ApplianceError
from rdr_format.catalog import FILE, CatalogWriter, Entry, Range
from rdr_format.chunkfile import MAX_FILE_SIZE, ChunkEncoder, chunk_id

from ..conftest import Appliance


def raw_session(app: Appliance, token: str | None) -> aiohttp.ClientSession:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    fp = bytes.fromhex(app.fingerprint.replace(":", ""))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(fp)),
                                 headers=headers)


async def expect_error(resp: aiohttp.ClientResponse, status: int, code: str | None = None,
                       ) -> dict:
    body = await resp.json()
    assert resp.status == status, body
    assert set(body) >= {"error", "message"} and body["message"]
    if code:
        assert body["error"] == code
    return body


def catalog_for(data_chunks: list[tuple[str, int]]) -> tuple[list, list]:
    """Catalog (encoded chunks) of one file made of `data_chunks`."""
    cat, idx = bytearray(), bytearray()
    ranges = [Range(c, 0, n, n) for c, n in data_chunks]
    size = sum(n for _, n in data_chunks)
    CatalogWriter(cat.extend, idx.extend).add_block(
        b"", [Entry(b"f", FILE, 0o644, size=size, ranges=ranges)])
    enc = ChunkEncoder()
    return [enc.encode(bytes(cat))], [enc.encode(bytes(idx))]


async def upload_all(client, sid: str, chunks) -> None:
    for c in chunks:
        await client.put_chunk(sid, c.id, c.data)


def commit_body(cat, idx) -> dict:
    return {"catalog": {"chunks": [[c.id, c.plain_size] for c in cat]},
            "dirindex": {"chunks": [[c.id, c.plain_size] for c in idx]}}


async def test_every_endpoint_needs_a_valid_token(appliance: Appliance) -> None:
    token = appliance.add_host("web01")
    paths = [("GET", "/whoami"), ("POST", "/sessions"), ("GET", "/snapshots"),
             ("GET", "/snapshots/latest"), ("POST", "/sessions/x/known"),
             ("PUT", f"/sessions/x/chunks/{'a' * 64}"), ("POST", "/sessions/x/commit"),
             ("POST", "/sessions/x/catalog"),
             ("DELETE", "/sessions/x"), ("GET", f"/snapshots/latest/chunks/{'a' * 64}")]
    bad_tokens = [None, "nonsense", token[:-1] + ("A" if token[-1] != "A" else "B"),
                  "rdr_0000000000000000_" + token.split("_", 2)[2]]
    for bad in bad_tokens:
        async with raw_session(appliance, bad) as http:
            for method, path in paths:
                async with http.request(method, appliance.url + "/api/v1" + path) as resp:
                    await expect_error(resp, 401, "unauthorized")


async def test_one_open_session_per_host(appliance: Appliance) -> None:
    token = appliance.add_host("web01")
    other = appliance.add_host("web02")
    async with appliance.client(token) as c1, appliance.client(other) as c2:
        first = await c1.open_session()
        with pytest.raises(ApplianceError) as err:
            await c1.open_session()
        assert err.value.status == 409 and err.value.body["session"] == first["session"]
        # Another host is not affected; naming the open session resumes it.
        await c2.open_session()
        again = await c1.open_session(first["session"])
        assert again == {**first, "resumed": True}


async def test_asking_again_with_the_same_key_resumes_the_open_session(
        appliance: Appliance) -> None:
    """An agent killed after the appliance opened its session but before it saved the id
    asks again with the key it saved first: it resumes instead of a 409 for the lease
    period. Another run (another key) is still refused, and another host's key is nothing
    to this host's session."""
    token = appliance.add_host("web01")
    other = appliance.add_host("web02")
    key = "ab" * 16
    async with appliance.client(token) as c1, appliance.client(other) as c2:
        first = await c1.open_session(key=key)
        assert not first["resumed"]
        with pytest.raises(ApplianceError) as err:
            await c1.open_session(key="cd" * 16)
        assert err.value.status == 409 and err.value.code == "session_busy"
        with pytest.raises(ApplianceError) as err:
            await c1.open_session()
        assert err.value.status == 409
        again = await c1.open_session(key=key)
        assert again == {**first, "resumed": True}
        theirs = await c2.open_session(key=key)
        assert theirs["session"] != first["session"] and not theirs["resumed"]
        for bad in ("ab", "AB" * 16, "é" * 32, 7, ["ab" * 16]):
            with pytest.raises(ApplianceError) as err:
                await c1._json("POST", "/sessions", {"key": bad}, idempotent=False)
            assert err.value.status == 400 and err.value.code == "bad_field"


async def test_stale_session_is_taken_over(tmp_path) -> None:
    from appliance.daemon import Daemon

    from ..conftest import make_config

    daemon = Daemon(make_config(tmp_path / "a", session_lease_seconds=0.01))
    await daemon.start()
    try:
        app = Appliance.of(daemon, tmp_path)
        token = app.add_host("web01")
        async with app.client(token) as c:
            first = await c.open_session()
            import asyncio

            await asyncio.sleep(0.05)
            second = await c.open_session()
            assert second["session"] == first["session"] and second["resumed"]
    finally:
        await daemon.stop()


async def test_chunk_upload_is_verified_and_idempotent(appliance: Appliance) -> None:
    token = appliance.add_host("web01")
    enc = ChunkEncoder()
    good = enc.encode(b"hello world " * 1000)
    async with appliance.client(token) as c:
        sid = (await c.open_session())["session"]
        assert await c.known_missing(sid, [good.id]) == [good.id]
        assert await c.put_chunk(sid, good.id, good.data) is True
        assert await c.put_chunk(sid, good.id, good.data) is False  # already there
        assert await c.known_missing(sid, [good.id]) == []
        wrong = chunk_id(b"something else")
        with pytest.raises(ApplianceError) as err:
            await c.put_chunk(sid, wrong, good.data)
        assert err.value.status == 422 and err.value.code == "chunk_mismatch"
        assert not appliance.store.chunks.has(wrong)
        with pytest.raises(ApplianceError) as err:
            await c.put_chunk(sid, good.id[:-1] + "0", b"RDRC\x01\x00\x00\x00garbage")
        assert err.value.status == 422
    async with raw_session(appliance, token) as http:
        url = f"{appliance.url}/api/v1/sessions/{sid}/chunks/{'NOTHEX' * 10}"
        async with http.put(url, data=b"x") as resp:
            await expect_error(resp, 400, "bad_chunk_id")
        url = f"{appliance.url}/api/v1/sessions/{sid}/chunks/{good.id}"
        async with http.put(url, data=b"\0" * (MAX_FILE_SIZE + 1)) as resp:
            await expect_error(resp, 413)

        async def endless():
            for _ in range(MAX_FILE_SIZE // 65536 + 2):
                yield b"\0" * 65536

        async with http.put(url, data=endless()) as resp:  # chunked, no Content-Length
            await expect_error(resp, 413)


async def test_malformed_json_and_fields_are_400_naming_the_field(appliance: Appliance) -> None:
    token = appliance.add_host("web01")
    async with raw_session(appliance, token) as http:
        base = appliance.url + "/api/v1"
        async with http.post(base + "/sessions", data=b"{nope") as resp:
            await expect_error(resp, 400, "bad_json")
        async with http.post(base + "/sessions", json={"resume": 5}) as resp:
            assert "resume" in (await expect_error(resp, 400))["message"]
        async with http.post(base + "/sessions", json={}) as resp:
            sid = (await resp.json())["session"]
        async with http.post(f"{base}/sessions/{sid}/known", json={"chunks": ["zz"]}) as resp:
            assert "chunks" in (await expect_error(resp, 400))["message"]
        async with http.post(f"{base}/sessions/{sid}/known", json=[1]) as resp:
            await expect_error(resp, 400, "bad_json")
        for body, field in [({"dirindex": {"chunks": []}}, "catalog"),
                            ({"catalog": {"chunks": [["x", 1]]}}, "catalog"),
                            ({"catalog": {"chunks": [["a" * 64, 1]]},
                              "dirindex": {"chunks": [["a" * 64, 1]]}, "bogus": 1}, "bogus"),
                            ({"catalog": {"chunks": [["a" * 64, 1]]},
                              "dirindex": {"chunks": [["a" * 64, 1]]}, "source": "x"},
                             "source")]:
            async with http.post(f"{base}/sessions/{sid}/commit", json=body) as resp:
                assert field in (await expect_error(resp, 400, "bad_field"))["message"]
        async with http.post(f"{base}/sessions/{sid}/commit",
                             data=b" " * (33 * 1024 * 1024)) as resp:
            await expect_error(resp, 413)
    assert appliance.store.index.snapshots() == []


async def test_naming_catalog_pieces_refuses_bad_input_and_other_hosts_sessions(
        appliance: Appliance) -> None:
    ta, tb = appliance.add_host("web01"), appliance.add_host("web02")
    piece = ["a" * 64, 100]
    async with raw_session(appliance, ta) as http, raw_session(appliance, tb) as other:
        base = appliance.url + "/api/v1"
        async with http.post(base + "/sessions", json={}) as resp:
            sid = (await resp.json())["session"]
        url = f"{base}/sessions/{sid}/catalog"
        for body, field in [({"start": -1, "chunks": [piece]}, "start"),
                            ({"start": "0", "chunks": [piece]}, "start"),
                            ({"start": 0, "chunks": [["x", 1]]}, "chunks"),
                            ({"start": 0, "chunks": [["a" * 64, 0]]}, "chunks"),
                            ({"start": 0, "chunks": []}, "chunks")]:
            async with http.post(url, json=body) as resp:
                assert field in (await expect_error(resp, 400, "bad_field"))["message"]
        # 750 kB: more than one network read (read_json once kept only the first and
        # answered 400 bad_json; this is its regression test).
        async with http.post(url, json={"start": 0, "chunks": [piece] * 10_001}) as resp:
            assert "10000" in (await expect_error(resp, 413, "payload_too_large"))["message"]
        async with http.post(url, json={"start": 1, "chunks": [piece]}) as resp:
            await expect_error(resp, 409, "catalog_order")  # nothing named yet
        async with http.post(url, json={"start": 0, "chunks": [piece]}) as resp:
            assert resp.status == 200 and (await resp.json()) == {"named": 1}
        async with http.post(url, json={"start": 3, "chunks": [piece]}) as resp:
            await expect_error(resp, 409, "catalog_order")  # a gap
        async with other.post(url, json={"start": 0, "chunks": [piece]}) as resp:
            await expect_error(resp, 404, "no_such_session")  # web02 names in web01's
        async with http.delete(f"{base}/sessions/{sid}") as resp:
            assert resp.status == 204
        async with http.post(url, json={"start": 1, "chunks": [piece]}) as resp:
            await expect_error(resp, 409, "session_closed")


async def test_commit_naming_an_unknown_chunk_commits_nothing(appliance: Appliance) -> None:
    token = appliance.add_host("web01")
    enc = ChunkEncoder()
    present = enc.encode(b"present data " * 100)
    absent = enc.encode(b"never uploaded " * 100)
    cat, idx = catalog_for([(present.id, present.plain_size), (absent.id, absent.plain_size)])
    async with appliance.client(token) as c:
        sid = (await c.open_session())["session"]
        await upload_all(c, sid, [present, *cat, *idx])
        with pytest.raises(ApplianceError) as err:
            await c.commit(sid, commit_body(cat, idx))
        # Never uploaded nor proven by this session: refused as unproven (an id this
        # session does not own gets the same answer whether or not the chunk exists).
        assert err.value.status == 422 and err.value.code == "unproven_chunks"
        assert err.value.body["unproven"] == [absent.id]
        assert appliance.store.index.snapshots() == []
        assert not list((appliance.data_dir / "snapshots").rglob("manifest.json"))
        # The session stays open: upload what was missing and commit.
        await c.put_chunk(sid, absent.id, absent.data)
        res = await c.commit(sid, commit_body(cat, idx))
        assert res["file_count"] == 1
        assert res["logical_size"] == present.plain_size + absent.plain_size


@pytest.mark.parametrize("junk_text", [
    b"this is not a catalog\n",
    # A name escaping a lone surrogate: once a UnicodeEncodeError, answered 500.
    b'{"d":"","n":1}\n{"n":"\\udc80","t":"d","m":0,"u":0,"g":0,"mt":0}\n',
])
async def test_commit_with_garbage_catalog_is_422(appliance: Appliance,
                                                  junk_text: bytes) -> None:
    token = appliance.add_host("web01")
    enc = ChunkEncoder()
    junk = enc.encode(junk_text)
    async with appliance.client(token) as c:
        sid = (await c.open_session())["session"]
        await c.put_chunk(sid, junk.id, junk.data)
        with pytest.raises(ApplianceError) as err:
            await c.commit(sid, commit_body([junk], [junk]))
        assert err.value.status == 422 and err.value.code == "bad_catalog"
    assert appliance.store.index.snapshots() == []


async def test_hosts_cannot_see_each_others_snapshots(appliance: Appliance) -> None:
    a, b = appliance.add_host("alpha"), appliance.add_host("beta")
    enc = ChunkEncoder()
    data = enc.encode(b"alpha's secret " * 100)
    cat, idx = catalog_for([(data.id, data.plain_size)])
    async with appliance.client(a) as ca, appliance.client(b) as cb:
        sid = (await ca.open_session())["session"]
        await upload_all(ca, sid, [data, *cat, *idx])
        snap = (await ca.commit(sid, commit_body(cat, idx)))["snapshot"]
        assert await ca.get_chunk(snap, data.id) == data.data
        assert await cb.snapshots() == []
        for call in (cb.snapshot(snap), cb.get_chunk(snap, data.id),
                     cb.get_chunk("latest", data.id)):
            with pytest.raises(ApplianceError) as err:
                await call
            assert err.value.status == 404
        # A host cannot use another host's session either.
        with pytest.raises(ApplianceError) as err:
            await cb.known_missing(sid, [data.id])
        assert err.value.status == 404
        # Reading a chunk through a snapshot that does not reference it is refused too.
        other = enc.encode(b"unrelated")
        sid2 = (await cb.open_session())["session"]
        await cb.put_chunk(sid2, other.id, other.data)
        with pytest.raises(ApplianceError) as err:
            await ca.get_chunk(snap, other.id)
        assert err.value.status == 404
