"""Snapshot paths on the wire: raw bytes, percent-encoded, so any file name survives a URL.

File names are bytes and need not be UTF-8. The page never builds a path itself: every entry
it receives carries `q`, the percent-encoded path, which goes back unchanged in the next
request; the server decodes it to bytes and checks it cannot leave the snapshot root.
"""

from __future__ import annotations

from urllib.parse import quote_from_bytes, unquote_to_bytes

from rdr_format.catalog import CatalogError, split_path

from ..store.errors import StoreError


def to_q(path: bytes) -> str:
    return quote_from_bytes(path, safe="/")


def from_q(q: str) -> bytes:
    """Decode a `q` value to a catalog path; "" and "/" are the snapshot root."""
    raw = unquote_to_bytes(q).strip(b"/")
    try:
        split_path(raw)
    except CatalogError as exc:
        raise StoreError("bad_path", f"invalid snapshot path: {exc}") from None
    return raw


def display(path: bytes) -> str:
    """A name for people: undecodable bytes shown as U+FFFD (the `q` keeps the real bytes)."""
    return path.decode("utf-8", "replace")
