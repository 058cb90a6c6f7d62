"""Capacity as a service of the appliance: the report, the daily usage sample, the status.

Composition root and CLI build one from the config; it only reads the store and the ledger.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from ..jobs.history import JobHistory
from ..jobs.job import Job
from ..store.datastore import Datastore
from .report import GB, ReportSettings, monthly_report
from .samples import Samples
from .usage import disk_usage, scan
from .watermarks import Watermarks, used_percent

#: Usage samples older than this are dropped (the contract asks for at least 24 months).
SAMPLE_KEEP_DAYS = 3 * 366


class CapacityService:
    def __init__(self, store: Datastore, samples: Samples, history: JobHistory, *,
                 installed_gb: float, marks: Watermarks, timezone: str, default_window: str,
                 commitment_months: int) -> None:
        self.store = store
        self.sample_log = samples
        self.history = history
        self.installed_gb = installed_gb
        self.marks = marks
        self.timezone = timezone
        self.default_window = default_window
        self.commitment_months = commitment_months

    def capacity_gb(self) -> float:
        if self.installed_gb > 0:
            return self.installed_gb
        return disk_usage(self.store.root)[0] / GB

    def report(self, month: str | None = None, now: datetime | None = None) -> dict:
        settings = ReportSettings(capacity_gb=self.capacity_gb(), timezone=self.timezone,
                                  default_window=self.default_window,
                                  commitment_months=self.commitment_months)
        rep = monthly_report(self.store.index, self.sample_log, settings, month, now)
        rep["disk"] = self.status()
        return rep

    def status(self) -> dict:
        pct = used_percent(self.store.root)
        total, used, free = disk_usage(self.store.root)
        return {"used_percent": round(pct, 2), "level": self.marks.level(pct),
                "warn_percent": list(self.marks.warn), "hard_percent": self.marks.hard,
                "disk_total_bytes": total, "disk_used_bytes": used, "disk_free_bytes": free,
                "capacity_gb": self.capacity_gb()}

    def take_sample(self, echo=None) -> dict:
        """Scan the store and keep today's sample (local day); drop samples past retention."""
        with Job(self.history, "usage-sample", echo) as job:
            usage = scan(self.store)
            sample = {**usage.to_json(), "capacity_gb": self.capacity_gb()}
            today = datetime.now(ZoneInfo(self.timezone)).date()
            self.sample_log.put_usage_sample(today.isoformat(), json.dumps(sample))
            cutoff = (today - timedelta(days=SAMPLE_KEEP_DAYS)).isoformat()
            self.sample_log.trim_usage_samples(cutoff)
            job.done({"day": today.isoformat(), "stored_bytes": usage.stored_bytes},
                     f"{usage.chunks} chunks, {usage.stored_bytes} bytes stored")
        return sample

    def samples(self, since_day: str = "") -> list[dict]:
        return [{"day": d, **json.loads(s)} for d, s in self.sample_log.usage_samples(since_day)]


def now_utc() -> datetime:
    return datetime.now(UTC)
