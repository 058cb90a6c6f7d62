"""schemathesis against the OpenAPI file on a live daemon: every operation, with generated
valid and invalid input, must answer without a server error and with a response the file
documents (status, content type, body schema).

Credentials follow each operation's `security`: the page's operations get a signed-in
session with its CSRF token, /usage an admin API token, the rest a host token. Half the
generated path parameters are swapped (deterministically) for ones that exist -- the host,
its snapshot, a chunk of it -- so the handlers behind the 404s are fuzzed too.

Examples per operation: RDR_FUZZ_EXAMPLES (default 12 in CI; `RDR_FUZZ_EXAMPLES=500 pytest
tests/integration/test_fuzz_api.py` is the full run).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import appliance.api

from ..live import Live, start_live

SPEC = Path(appliance.api.__file__).parent / "openapi.yaml"
EXAMPLES = int(os.environ.get("RDR_FUZZ_EXAMPLES", "12"))
SPARE_SESSIONS = 20 + 2 * EXAMPLES  # one per fuzzed sign-out, at most
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]

schema = schemathesis.openapi.from_path(SPEC)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    live = start_live(tmp_path_factory.mktemp("fuzz"))
    try:
        yield live
        if os.environ.get("RDR_FUZZ_REPORT"):
            report(live, Path(os.environ["RDR_FUZZ_REPORT"]))
    finally:
        live.app.close()


def report(live: Live, out: Path) -> None:
    """The requests the daemon answered during the run, by status (its own histogram)."""
    from benchmarks.load import scrape

    buckets, _ = scrape(live.app.port, live.admin_token)
    by_status: dict[str, int] = {}
    ops = set()
    for (route, method, status), bs in buckets.items():
        if route.startswith("/api/v1"):
            by_status[status] = by_status.get(status, 0) + int(bs[float("inf")])
            ops.add((method, route))
    out.write_text(json.dumps({"examples_per_operation": EXAMPLES, "operations": len(ops),
                               "requests": sum(by_status.values()),
                               "by_status": dict(sorted(by_status.items()))}, indent=1))


class Creds:
    """HTTP sessions kept for the module (one TLS handshake each, not one per example): a
    host token's, the admin token's, an anonymous one, and a signed-in page session (signed
    in again if a fuzzed logout ended it)."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.page: tuple[requests.Session, str] | None = None
        # Signed in before any fuzzing: the fuzzed sign-ins soon get this address throttled.
        self.spare = [live.login() for _ in range(SPARE_SESSIONS)]
        self.host = live.http(live.tokens[0])
        self.admin = live.http(live.admin_token)
        self.anonymous = live.http()

    def session(self) -> tuple[requests.Session, str]:
        if self.page is not None:
            s, _ = self.page
            if s.get(self.live.base + "/api/v1/auth/session", timeout=30).status_code == 200:
                return self.page
        self.page = self.spare.pop()
        return self.page


@pytest.fixture(scope="module")
def creds(live: Live) -> Creds:
    return Creds(live)


def _real(case: schemathesis.Case, live: Live) -> None:
    """Swap half the cases' path parameters for existing ones (decided by a hash of the
    generated values, so a failing example replays the same)."""
    params = case.path_parameters or {}
    digest = hashlib.sha256(repr(sorted(params.items())).encode()).digest()
    if not params or digest[0] & 1:
        return
    real = {"host": "bench00", "snap": live.snapshot, "cid": live.chunks[0],
            "sid": params.get("sid")}
    for k in params:
        if real.get(k) is not None:
            params[k] = real[k]


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_api_never_errs_and_matches_its_schema(case: schemathesis.Case, live: Live,
                                               creds: Creds) -> None:
    _real(case, live)
    if case.operation.path == "/agent/jobs/next" and isinstance(case.query, dict) \
            and str(case.query.get("wait", "")).isdigit():
        case.query["wait"] = "1"  # a long poll: valid waits would hold each example 60 s
    security = case.operation.definition.raw.get("security")
    kinds = {k for req in (security if security is not None else [{"hostToken": []}])
             for k in req}
    base = live.base + "/api/v1"
    if kinds == {"sessionCookie"}:
        http, csrf = creds.session()
        case.headers = {**(case.headers or {}), "X-CSRF-Token": csrf}
    elif case.operation.path == "/usage":
        http = creds.admin
    elif not kinds:  # sign-in
        http = creds.anonymous
    else:
        http = creds.host
    case.call_and_validate(base_url=base, session=http, checks=CHECKS, timeout=60,
                          verify=False)


def test_unicode_digits_are_not_numbers(live: Live, creds: Creds) -> None:
    """Regression (found by the fuzzer): "¹" passed str.isdigit() and crashed int(), a 500."""
    base = live.base + "/api/v1"
    host = creds.host
    assert host.post(base + "/agent/jobs/¹/progress", json={"files": 1, "bytes": 1},
                     timeout=30).status_code == 404
    assert host.get(base + "/agent/jobs/²/snapshot", timeout=30).status_code == 404
    assert host.get(base + "/agent/jobs/next?wait=²", timeout=30).status_code == 400
    r = host.get(f"{base}/snapshots/{live.snapshot}/chunks/{live.chunks[0]}",
                 headers={"X-RDR-Restore": "¹"}, timeout=30)
    assert r.status_code == 200
    page, csrf = creds.session()
    assert page.get(base + "/restore-jobs?limit=³", timeout=30).status_code == 400
    assert page.get(base + "/restore-jobs/¹", timeout=30).status_code == 404
