"""What the agent's connection to the appliance is and raises, apart from the HTTP client:
the command line names these at start-up, and `--help`, a usage error or a restore from a
disk should not pay for loading the client, TLS and the HTTP code."""

from __future__ import annotations

from dataclasses import dataclass

from rdr_format.compat import SLOTS
from rdr_restore.errors import SourceError


class ApplianceError(SourceError):
    """The appliance refused a request; `code` is its machine-readable reason."""

    def __init__(self, status: int, code: str, message: str, body: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.body = status, code, message, body or {}


class TargetError(Exception):
    """A restore's target directory cannot be written (nothing was restored)."""


class ConnectError(Exception):
    """The appliance could not be reached (after retries)."""


@dataclass(**SLOTS)
class Endpoint:
    url: str
    token: str
    fingerprint: str | None = None  # SHA-256 of the server certificate, hex (colons allowed)
    ca_file: str | None = None
