"""The one error hierarchy (appliance/errors.py), mapped once to HTTP statuses
(api/errors.py) and once to exit codes (cli/core.py): each kind gets its status and its exit
code, the packages' own errors map by their kind, and an unexpected exception is a 500 JSON
body that carries no traceback."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from appliance import errors
from appliance.api.errors import STATUS, error_middleware, status_of
from appliance.cli import core
from appliance.config import ConfigError
from appliance.pools import HeavyGate
from appliance.replication.targets import NotFoundAtTarget, TargetError
from appliance.store import errors as store_errors
from rdr_format.chunkfile import ChunkError
from rdr_restore.errors import DcError, SeedError

KINDS = {
    errors.BadRequest: 400, errors.Unauthorized: 401, errors.Forbidden: 403,
    errors.NotFound: 404, errors.Conflict: 409, errors.Gone: 410,
    errors.PayloadTooLarge: 413, errors.UnsupportedMediaType: 415,
    errors.RangeNotSatisfiable: 416, errors.Unprocessable: 422,
    errors.TooManyRequests: 429, errors.Unavailable: 503,
    errors.InsufficientStorage: 507,
}


def make(cls: type[errors.ApplianceError], code: str = "some_code",
         message: str = "what went wrong") -> errors.ApplianceError:
    if issubclass(cls, errors.TooManyRequests):
        return cls(code, message, retry_after=3)
    return cls(code, message)


async def respond(exc: BaseException) -> web.Response:
    async def handler(request: web.Request) -> web.Response:
        raise exc

    resp = await error_middleware(make_mocked_request("GET", "/api/v1/x"), handler)
    assert isinstance(resp, web.Response)
    return resp


def test_every_kind_is_in_the_one_table() -> None:
    kinds = {c for c in vars(errors).values() if isinstance(c, type)
             and issubclass(c, errors.ApplianceError) and c is not errors.ApplianceError}
    assert kinds == set(KINDS)
    assert {k: STATUS[k] for k in KINDS} == KINDS


@pytest.mark.parametrize("cls", list(KINDS), ids=lambda c: c.__name__)
async def test_each_kind_is_its_status_with_a_json_body(cls) -> None:
    resp = await respond(make(cls))
    assert resp.status == KINDS[cls]
    assert resp.content_type == "application/json"
    body = json.loads(resp.text)
    assert body["error"] == "some_code" and body["message"] == "what went wrong"


@pytest.mark.parametrize("cls", list(KINDS), ids=lambda c: c.__name__)
def test_each_kind_is_exit_1_with_one_line(cls, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "rdr.toml"
    cfg.write_text(f"[store]\npath = '{tmp_path / 'data'}'\n")
    exc = make(cls)

    def command(ctx: core.Context) -> int:
        raise exc

    assert core.exit_code_of(exc) == core.EXIT_ERROR
    assert core.run(argparse.Namespace(run=command, config=str(cfg))) == core.EXIT_ERROR
    err = capsys.readouterr().err
    assert err == "rdr: error: what went wrong\n"


@pytest.mark.parametrize(("exc", "status"), [
    (store_errors.StoreError("bad_path", "m"), 400),
    (store_errors.NotFound("no_such_host", "m"), 404),
    (store_errors.Conflict("open_session", "m"), 409),
    (store_errors.Unprocessable("bad_chunk", "m"), 422),
    (store_errors.Unavailable("degraded", "m"), 503),
    (store_errors.InsufficientStorage("full", "m"), 507),
    (ConfigError("m"), 400),
    (TargetError("m", True), 503),
    (NotFoundAtTarget("c/x"), 503),
], ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v))
async def test_the_packages_errors_map_by_their_kind(exc, status) -> None:
    """Old names kept as subclasses: `except StoreError` still catches what the store
    raises, and each maps through the kind it derives from."""
    assert isinstance(exc, errors.ApplianceError)
    assert status_of(exc) == status
    assert (await respond(exc)).status == status
    assert core.exit_code_of(exc) == core.EXIT_ERROR


async def test_retry_after_is_in_the_body_and_the_header() -> None:
    gate = HeavyGate(per_principal=1, total=0)
    with (gate.hold("account:a", "download"), pytest.raises(errors.TooManyRequests) as caught,
          gate.hold("account:a", "download")):
        pass
    resp = await respond(caught.value)
    assert resp.status == 429 and resp.headers["Retry-After"] == "5"
    assert json.loads(resp.text)["retry_after"] == 5
    busy = await respond(errors.Unavailable("busy", "later", retry_after=2.5))
    assert busy.status == 503 and busy.headers["Retry-After"] == "3"
    assert "Retry-After" not in (await respond(errors.Unavailable("degraded", "m"))).headers


async def test_an_unexpected_exception_is_a_500_without_a_traceback() -> None:
    resp = await respond(RuntimeError("secret internals at /srv/x.py line 3"))
    assert resp.status == 500 and resp.content_type == "application/json"
    body = json.loads(resp.text)
    assert body == {"error": "internal", "message": "internal error; see the appliance log"}
    assert "Traceback" not in resp.text and "secret" not in resp.text


def test_the_agent_sides_errors_map_by_type_in_the_cli() -> None:
    """rdr_format and rdr_restore import nothing of the appliance: mapped by type."""
    for exc in (ChunkError("bad"), DcError("bad"), SeedError("bad"), OSError(5, "I/O")):
        assert core.exit_code_of(exc) == core.EXIT_ERROR
    assert core.exit_code_of(KeyboardInterrupt()) == core.EXIT_INTERRUPTED
    assert core.exit_code_of(RuntimeError("bug")) is None  # a bug keeps its traceback
