"""Unit tests serve nothing: a socket that listens fails the test, so a server test cannot
slip into the fast loop unnoticed (it belongs in tests/integration)."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture(autouse=True)
def no_listening_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: socket.socket, *args: object) -> None:
        raise AssertionError("a unit test listens on a socket: move it to tests/integration")

    monkeypatch.setattr(socket.socket, "listen", refuse)
