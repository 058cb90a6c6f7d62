"""Enrolment as the page, the CLI and the agents use it: add a host with a code, exchange the
code for the host's token, each host's status and report, and the all-hosts export.

Blocking (SQLite): the daemon calls it through `run_in`, the CLI directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..plans.kinds import check_kind, register_kind
from ..plans.repository import BackupPlans
from ..store.datastore import Datastore
from .codes import EnrolCodes, IssuedCode
from .reports import ONLINE_SECONDS, HostReports, check_report
from .rto import HostRto, RtoEstimate, estimate, host_size

#: (bytes, seconds) of measured restores to one host, or to any host (None).
Throughput = Callable[[str | None], "tuple[int, float] | None"]


class Enrolment:
    def __init__(self, store: Datastore, plans: BackupPlans, throughput: Throughput,
                 codes: EnrolCodes | None = None) -> None:
        self.store = store
        self.plans = plans
        self.throughput = throughput
        self.codes = codes or EnrolCodes(store.index)
        self.reports = HostReports(store.index)
        self.rto = HostRto(store.index)

    def add_host(self, name: str, kind: str = "server") -> IssuedCode:
        """Register a host of `kind` (server or PC: billing, and a PC's 30-0-0 retention)
        and give it its first code. The token `add_host` makes is not shown to anyone: the
        host gets a fresh one when it exchanges the code."""
        check_kind(kind)  # before the host exists: a refused kind adds nothing
        self.store.add_host(name)
        register_kind(self.store, name, kind)
        return self.codes.issue(name)

    def new_code(self, host: str) -> IssuedCode:
        """A new code for a known host (re-enrol: its token rotates when the code is used)."""
        return self.codes.issue(host)

    def exchange(self, code: str, report: object = None) -> tuple[str, str]:
        """Spend `code`; the host's new token (the old one stops working) and its name."""
        kept = check_report(report) if report is not None else None
        host = self.codes.redeem(code)
        token = self.store.rotate_token(host)
        if kept:
            self.reports.put(host, kept)
        return host, token

    def forget(self, host: str) -> None:
        self.codes.forget(host)
        self.reports.forget(host)
        self.rto.forget(host)

    def estimates(self, hosts: list[str] | None = None) -> dict[str, RtoEstimate]:
        """Each host's restore time estimate (with or without an RTO): all, or `hosts`."""
        rtos = self.rto.all()
        overall = self.throughput(None)
        out = {}
        for name in self.store.index.host_names() if hosts is None else hosts:
            size = host_size(self.store.index.snapshots(name))
            own = self.throughput(name)
            out[name] = estimate(name, rtos.get(name), size, own, overall)
        return out

    def status(self, host: str | None = None, now: float | None = None) -> list[dict]:
        """Each host (or one) as the page and the export show it."""
        now = time.time() if now is None else now
        settings = {s["name"]: s for s in self.store.index.host_settings()}
        if host is not None:
            self.store.index.host_record(host)  # NotFound for an unknown host
            settings = {host: settings[host]}
        enrolled = self.codes.enrolments()
        agents = self.plans.agents()
        reports = self.reports.all()
        ests = self.estimates(None if host is None else [host])
        out = []
        for name, s in settings.items():
            agent = agents.get(name)
            seen = agent["last_seen"] if agent else None
            out.append({
                "host": name, "created_at": s["created_at"],
                "enrolled": name in enrolled,
                "enrolled_at": enrolled.get(name, {}).get("enrolled_at"),
                "code_pending": self.codes.pending(name, now),
                "online": seen is not None and now - seen <= ONLINE_SECONDS,
                "last_seen": seen, "agent_version": agent["version"] if agent else None,
                "retention": s["policy"] or "", "window_start": s["window_start"] or "",
                "report": reports.get(name), "rto": ests[name].to_json()})
        return out
