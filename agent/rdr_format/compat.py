"""What the agent needs from Python releases newer than the oldest it supports (3.9, Debian
11's): the agent runs on customers' hosts with the system's Python, the appliance on 3.11.

`SLOTS` is spread into `@dataclass(**SLOTS)`: slotted records (less memory per catalog entry)
where the interpreter can make them, ordinary ones on 3.9. `zip_strict` is `zip(...,
strict=True)`, which 3.9 lacks. `cancelling` is `Task.cancelling()`, which came in 3.11.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

SLOTS: dict[str, Any] = {"slots": True} if sys.version_info >= (3, 10) else {}


def zip_strict(*iterables: Iterable[Any]) -> Iterator[tuple[Any, ...]]:
    """Like zip(), but a ValueError when the inputs differ in length (a programming error:
    an answer that does not match its question)."""
    if sys.version_info >= (3, 10):
        return zip(*iterables, strict=True)
    lists = [list(i) for i in iterables]
    if len({len(x) for x in lists}) > 1:
        raise ValueError("zip_strict: arguments differ in length")
    return zip(*lists)


def cancelling(task: asyncio.Task | None) -> int:
    """How many cancellations of `task` are pending (`Task.cancelling()`); 0 where the
    interpreter does not count them (3.9, 3.10), so there a caller tells its own
    cancellation from another's only by what it recorded itself."""
    count = getattr(task, "cancelling", None)
    return count() if count is not None else 0
