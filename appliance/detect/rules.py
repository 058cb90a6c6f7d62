"""The verdict: which signals a snapshot's changes raise against the thresholds, and whether
enough of them do.

Four signals, each alone common in normal churn, together rare:
- mass change: a large share of the parent's files modified or gone, or rewritten whole or
  renamed to another extension (a package upgrade raises this one);
- incompressibility jump: the changed files compress much worse than this source's files of
  the same class did before (a new class, such as an encryptor's extension, is compared
  with the source's overall ratio);
- extension changes on many files;
- known ransom-note names among the new files.
A snapshot is suspicious when `min_signals` of them are raised (2 by default); every figure
is kept as evidence either way.
"""

from __future__ import annotations

from dataclasses import dataclass

from .compare import Changes

#: A class's baseline counts once it holds this many raw bytes; below, the overall ratio.
CLASS_BASE_MIN_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Thresholds:
    #: Parents with fewer files are not judged on shares (everything looks changed).
    min_files: int = 20
    #: (modified + deleted) / parent's files.
    changed_share: float = 0.5
    #: (rewritten + extension changed) / parent's files.
    rewritten_share: float = 0.3
    #: Extension changes: at least this many files and this share of the parent's.
    extension_min_files: int = 20
    extension_share: float = 0.1
    #: Rise of stored/raw of the changed bytes over the baseline (0 = compresses as before,
    #: 1 = from nothing to incompressible), judged from this many changed bytes.
    entropy_jump: float = 0.25
    entropy_min_bytes: int = 1024 * 1024
    #: Ransom notes among the new files.
    notes_min: int = 1
    #: Signals needed for "suspicious".
    min_signals: int = 2


@dataclass(slots=True)
class Verdict:
    suspicious: bool
    signals: list[str]
    evidence: dict


def entropy(summary: dict[str, list[int]], baseline: dict[str, list[int]],
            ) -> tuple[float | None, int, dict]:
    """(jump, changed raw bytes, per-class detail); jump None without a baseline."""
    raw = sum(v[1] for v in summary.values())
    base_raw = sum(v[1] for v in baseline.values())
    if not summary or base_raw <= 0 or raw <= 0:
        return None, raw, {}
    overall = sum(v[2] for v in baseline.values()) / base_raw
    jump = 0.0
    detail = {}
    for cls, (_, r, s) in summary.items():
        if r <= 0:
            continue
        b = baseline.get(cls)
        base = b[2] / b[1] if b is not None and b[1] >= CLASS_BASE_MIN_BYTES else overall
        ratio = s / r
        jump += r * max(0.0, ratio - base)
        detail[cls or "(none)"] = {"ratio": round(ratio, 3), "baseline": round(base, 3),
                                   "bytes": r}
    return jump / raw, raw, dict(sorted(detail.items(), key=lambda kv: -kv[1]["bytes"])[:8])


def judge(ch: Changes, summary: dict[str, list[int]], baseline: dict[str, list[int]],
          t: Thresholds) -> Verdict:
    signals: list[str] = []
    n = max(ch.parent_files, 1)
    changed = (ch.modified + ch.deleted) / n
    rewritten = (ch.rewritten + ch.extension_changed) / n
    judged = ch.parent_files >= t.min_files
    if judged and (changed >= t.changed_share or rewritten >= t.rewritten_share):
        signals.append("mass_change")
    jump, raw, detail = entropy(summary, baseline)
    if jump is not None and raw >= t.entropy_min_bytes and jump >= t.entropy_jump:
        signals.append("incompressible")
    if (ch.extension_changed >= t.extension_min_files
            and ch.extension_changed / n >= t.extension_share):
        signals.append("extensions")
    if ch.notes >= t.notes_min:
        signals.append("ransom_notes")
    evidence = {
        "changes": ch.to_json(),
        "changed_share": round(changed, 4), "rewritten_share": round(rewritten, 4),
        "judged_on_shares": judged,
        "incompressible_jump": None if jump is None else round(jump, 4),
        "changed_bytes": raw, "classes": detail,
        "signals": signals, "min_signals": t.min_signals,
    }
    return Verdict(len(signals) >= t.min_signals, signals, evidence)
