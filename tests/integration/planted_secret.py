"""Not collected by a normal run (no test_ prefix): `test_suite.py` runs it alone, to check
that a token in any log fails the run, with and without pytest-xdist's workers."""

import logging


def test_logs_a_token() -> None:
    logging.getLogger("rdr.planted").warning(
        "planted rdr_0123456789abcdef_ABCDEFGHIJKLMNOPQRSTUVWXYZ")
