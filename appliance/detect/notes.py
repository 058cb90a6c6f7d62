"""Known ransom-note names: the patterns of `ransom_notes.txt` (a data file next to this
module, so the list is edited without touching code)."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

NOTES_FILE = Path(__file__).with_name("ransom_notes.txt")


class NoteNames:
    """Matches file names (bytes) against the patterns, case-insensitively."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = patterns
        joined = "|".join(fnmatch.translate(p.lower()) for p in patterns)
        self._re = re.compile(joined) if patterns else None

    @classmethod
    def load(cls, path: Path = NOTES_FILE) -> NoteNames:
        lines = path.read_text(encoding="utf-8").splitlines()
        return cls([s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")])

    def match(self, name: bytes) -> bool:
        if self._re is None:
            return False
        return self._re.match(name.decode("utf-8", "replace").lower()) is not None
