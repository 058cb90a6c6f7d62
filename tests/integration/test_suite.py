"""The test suite's own guarantees under `.ci/run`'s pytest-xdist workers: no test is lost,
and no secret in a log goes unnoticed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _pytest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_every_test_has_an_id_of_its_own() -> None:
    """pytest-xdist runs one test per id: the schemathesis tests (one per API operation)
    once shared one, and 65 of them silently did not run in parallel runs."""
    res = _pytest("--collect-only", "-q", "tests")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    ids = [line for line in res.stdout.splitlines() if "::" in line]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1][:3]
    fuzz = [i for i in ids if "test_api_never_errs_and_matches_its_schema" in i]
    assert len(fuzz) > 10 and all(i.endswith("]") for i in fuzz)  # "[GET /whoami]"


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_token_in_a_log_fails_the_run(workers: str) -> None:
    res = _pytest("-q", "-n", workers, "tests/integration/planted_secret.py")
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert "SECRET IN LOGS: 1 of" in res.stderr
    assert "1 passed" in res.stdout  # the test itself passed: the scan failed the run
