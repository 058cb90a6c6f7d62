"""What an event is: something that happened (or a condition raised or resolved) that somebody
may want to hear of, by class.

Events are facts, not messages: several of one group (fifty hosts that missed their window)
become one message (`compose`). An event's `key` makes it happen once: the same key offered
twice (the same run seen by two ticks, a tick repeated after a restart) is kept once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The event classes: what a recipient subscribes to and what a throttle counts.
CLASSES = ("premier", "backup", "window", "agent", "disk", "replication", "seed",
           "ransomware", "digest", "report", "test")

#: What each class means, for the docs, the page and the subjects.
TITLES = {
    "premier": "files not backed up",
    "backup": "backup failed",
    "window": "backup window missed",
    "agent": "agent offline",
    "disk": "data disk",
    "replication": "replication",
    "seed": "shipped disk",
    "ransomware": "backup looks like ransomware",
    "digest": "daily digest",
    "report": "monthly report",
    "test": "test message",
}


@dataclass(frozen=True, slots=True)
class Event:
    cls: str
    #: Unique per happening ("run:42:failed", "cond:disk:90:raised:1733..."): kept once.
    key: str
    #: Events of one group are sent together ("window", "premier:host-a").
    group: str
    #: What the message says: plain JSON values (no secret ever goes in).
    data: dict = field(default_factory=dict)
    #: "event" (a thing happened), "raised" or "resolved" (a condition).
    state: str = "event"

    def __post_init__(self) -> None:
        if self.cls not in CLASSES:
            raise ValueError(f"unknown event class {self.cls!r}")
