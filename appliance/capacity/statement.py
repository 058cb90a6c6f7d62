"""The monthly statement: charges, service levels and credits of one month, to the cent.

Built from what the appliance recorded in that month -- the ledger of commits (it outlives
pruning), the scheduled runs with the window each was scheduled in, the portal's restore
requests -- and the terms and rate card in force. Deterministic: no clock reading goes into
it beyond `now`, which is clipped to the month's close, so a closed month built twice gives
the same bytes (`canonical`). `book.StatementBook` stores closed months.
"""

from __future__ import annotations

import calendar
import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

from ..plans.kinds import HostKinds
from ..plans.repository import BackupPlans
from ..restores.jobs import RestoreJobs
from ..restores.ledger import RestoreLedger
from ..runs.repository import BackupRuns
from ..store.index import Index
from ..windows import month_bounds, parse_month, parse_window_start
from .billing import early_termination_flag
from .charges import (
    floor_gb,
    nrc_charges,
    pc_charge,
    prorate,
    replication_charge,
    server_charge,
    split_by_gb,
)
from .credits import ServerLevels, backup_met, pc_credit, server_credits
from .money import whole_gb
from .ratecard import RateCard
from .sla import (
    EXCUSED,
    IN_WINDOW,
    LATE,
    MISSED,
    PC_IMPLEMENTATION,
    SERVER_IMPLEMENTATION,
    RunRecord,
    backup_days,
    restore_results,
    retention_failures,
)
from .termination import termination_fee
from .terms import Terms

#: A month is closed (its statement final and stored) once its last window has closed and
#: a restore requested at its last minute has had its 30 minutes: a day after it ends.
CLOSE_AFTER = timedelta(days=1)
SCHEMA = 1


def canonical(statement: dict) -> bytes:
    """The statement's stored bytes: sorted keys, no spaces, so equal content is equal bytes."""
    return json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()


def is_closed(month: str, tz: str, now: datetime) -> bool:
    return now >= month_bounds(month, tz)[1] + CLOSE_AFTER


def _months_from(start: date, month: str) -> list[str]:
    y, m = parse_month(month)
    out = []
    cy, cm = start.year, start.month
    while (cy, cm) <= (y, m):
        out.append(f"{cy:04d}-{cm:02d}")
        cy, cm = (cy, cm + 1) if cm < 12 else (cy + 1, 1)
    return out


class StatementBuilder:
    """Reads the index (in the caller's thread: the pool) and builds statements."""

    def __init__(self, index: Index, terms: Terms, card: RateCard, *, timezone: str,
                 default_window: str) -> None:
        self.index = index
        self.terms = terms
        self.card = card
        self.tz = timezone
        self.default_window = default_window
        self.kinds = HostKinds(index)
        self.plans = BackupPlans(index)
        self.runs = BackupRuns(index)
        self.ledger = RestoreLedger(index)
        RestoreJobs(index, self.ledger)  # its table, joined by the ledger's portal requests

    # --- GB ---------------------------------------------------------------------------
    def max_bytes(self, month: str) -> dict[str, int]:
        start, end = month_bounds(month, self.tz)
        best: dict[str, int] = {}
        for row in self.index.ledger(start.timestamp(), end.timestamp()):
            best[row["host"]] = max(best.get(row["host"], 0), row["logical_size"])
        return best

    def _hosts(self, month: str) -> list[dict]:
        """Hosts registered before the month ended, plus any that committed in it and have
        been removed since (`removed`: charged for what they held, no service levels)."""
        _, end = month_bounds(month, self.tz)
        hosts = {h["name"]: h for h in self.plans.host_settings()
                 if h["created_at"] < end.timestamp()}
        for name in self.max_bytes(month):
            hosts.setdefault(name, {"name": name, "created_at": end.timestamp(),
                                    "policy": None, "window_start": None, "timezone": None,
                                    "removed": True})
        return [hosts[n] for n in sorted(hosts)]

    # --- charges ------------------------------------------------------------------------
    def charges(self, month: str, hosts: Sequence[dict] | None = None) -> dict:
        """The month's charges alone (what early termination averages)."""
        hosts = self._hosts(month) if hosts is None else hosts
        kinds = self.kinds.all()
        maxima = self.max_bytes(month)
        servers = {h["name"]: whole_gb(maxima.get(h["name"], 0)) for h in hosts
                   if kinds.get(h["name"], "server") == "server"}
        pcs = {h["name"]: whole_gb(maxima.get(h["name"], 0)) for h in hosts
               if kinds.get(h["name"]) == "pc"}
        t, card = self.terms, self.card
        tier = t.tier_in_force(month)
        floor = floor_gb(t.capacity_gb)
        pc_gb = sum(pcs.values())
        # V.5: GB backed up to the appliance (servers and PCs) below half its capacity are
        # billed as half its capacity; the shortfall is billed with the servers.
        server_floor = max(floor - pc_gb, 0)
        server = server_charge(card, t.retention, t.commitment_months, tier,
                               sum(servers.values()), server_floor)
        pc_lines = [pc_charge(card, t.commitment_months, h, gb) for h, gb in sorted(pcs.items())]
        replication = replication_charge(card, t.commitment_months, t.devices,
                                         sum(servers.values()) + pc_gb, floor)
        y, m = parse_month(month)
        month_days = calendar.monthrange(y, m)[1]
        start = t.charges_start()
        charged_days = max(0, min(month_days, (date(y, m, month_days) - start).days + 1))
        server_amount = prorate(server.amount_cents, charged_days, month_days)
        pc_amounts = {p.host: prorate(p.amount_cents, charged_days, month_days)
                      for p in pc_lines}
        rep_amount = prorate(replication.amount_cents, charged_days, month_days)
        nrc = nrc_charges(card, self._nrc_counts(month, kinds))
        recurring = server_amount + sum(pc_amounts.values()) + rep_amount
        return {
            "committed_tier": tier, "floor_gb": floor, "capacity_gb": t.capacity_gb,
            "charges_start": start.isoformat(), "charged_days": charged_days,
            "month_days": month_days,
            "server_gb": servers, "pc_gb": pcs,
            "server": {**server.to_json(), "charged_cents": server_amount},
            "server_shares_cents": split_by_gb(server_amount, servers),
            "pcs": [{**p.to_json(), "charged_cents": pc_amounts[p.host]} for p in pc_lines],
            "replication": {**replication.to_json(), "charged_cents": rep_amount},
            "nrc": nrc, "recurring_cents": recurring,
            "nrc_cents": sum(x["amount_cents"] for x in nrc),
            "charges_cents": recurring + sum(x["amount_cents"] for x in nrc),
        }

    def _nrc_counts(self, month: str, kinds: dict[str, str]) -> dict[str, int]:
        """IV.2: a push restore to another host than the one backed up (alternate client);
        a restore one of the provider's accounts requested (company assisted)."""
        start, end = month_bounds(month, self.tz)
        counts = {"alternate_client_restore": 0, "company_assisted_restore": 0}
        for r in self.ledger.portal_requests(start.timestamp(), end.timestamp()):
            if r["job_state"] == "cancelled":
                continue
            if r["account"] in self.terms.provider_accounts:
                counts["company_assisted_restore"] += 1
            elif r["target_host"] is not None and r["target_host"] != r["host"]:
                counts["alternate_client_restore"] += 1
        return counts

    # --- service levels -----------------------------------------------------------------
    def _effective_from(self, hosts: Sequence[dict], kinds: dict[str, str]) -> dict[str, float]:
        """SLA 1.6: servers' levels apply 60 days after the last server of the order was
        provisioned (the servers registered during the order's implementation); a server
        added later has its own 60 days. SLA 4.3: each PC 30 days after its own."""
        first = datetime.combine(self.terms.first_provided, datetime.min.time(), UTC)
        order_end = (first + SERVER_IMPLEMENTATION).timestamp()
        order = [h["created_at"] for h in hosts
                 if kinds.get(h["name"], "server") == "server" and h["created_at"] < order_end]
        last_order = max(order, default=first.timestamp())
        out = {}
        for h in hosts:
            if kinds.get(h["name"]) == "pc":
                out[h["name"]] = h["created_at"] + PC_IMPLEMENTATION.total_seconds()
            elif h["created_at"] < order_end:
                out[h["name"]] = last_order + SERVER_IMPLEMENTATION.total_seconds()
            else:
                out[h["name"]] = h["created_at"] + SERVER_IMPLEMENTATION.total_seconds()
        return out

    def build(self, month: str, now: datetime,
              history: dict[str, int] | None = None) -> dict:
        """The statement of `month` as of `now` (clipped to the month's close).
        `history`: month -> charges_cents of earlier months already known (stored)."""
        parse_month(month)
        start, end = month_bounds(month, self.tz)
        now = min(now, end + CLOSE_AFTER)
        hosts = self._hosts(month)
        kinds = self.kinds.all()
        charges = self.charges(month, hosts)
        effective = self._effective_from(hosts, kinds)
        maintenance = [(a.timestamp(), b.timestamp()) for a, b in self.terms.maintenance]
        maxima = self.max_bytes(month)
        portal = self.ledger.portal_requests(start.timestamp(), end.timestamp())
        restores = restore_results(portal, now.timestamp(), effective)
        retention = retention_failures(portal)
        levels, host_lines = [], []
        shares = charges["server_shares_cents"]
        for h in hosts:
            name = h["name"]
            kind = kinds.get(name, "server")
            tz = h.get("timezone") or self.tz
            current = parse_window_start(h["window_start"] or self.default_window)
            runs = [RunRecord(r.window_day, r.window_start, r.window_end, r.state, r.message,
                              r.in_window)
                    for r in self.runs.scheduled_windows(name)
                    if r.window_day and r.window_start is not None
                    and r.window_end is not None]
            commits = [r["received_at"] for r in self.index.ledger(
                start.timestamp() - 86400, end.timestamp() + 86400, name)]
            days = backup_days(month, runs, commits, current, tz,
                               active_from=h["created_at"], effective_from=effective[name],
                               now=now.timestamp(), maintenance=maintenance)
            counted = [d for d in days if d.counted]
            in_window = sum(d.status == IN_WINDOW for d in counted)
            own = [r for r in restores if r.host == name]
            late = sum(r.late and r.counted for r in own)
            applies = end.timestamp() > effective[name]
            line = {
                "host": name, "kind": kind, "timezone": tz,
                "protected_gb": (charges["server_gb"] if kind == "server"
                                 else charges["pc_gb"]).get(name, 0),
                "max_logical_bytes": maxima.get(name, 0),
                "removed": bool(h.get("removed")),
                "service_levels_from": datetime.fromtimestamp(effective[name], UTC).isoformat(),
                "backups": {
                    "scheduled": len(counted), "in_window": in_window,
                    "late": sum(d.status == LATE for d in counted),
                    "missed": sum(d.status == MISSED for d in counted),
                    "excused": sum(d.status == EXCUSED for d in days),
                    "met": backup_met(len(counted), in_window) if applies else None},
                "days": [d.to_json() for d in days],
                "restores": {"requested": len(own), "counted": sum(r.counted for r in own),
                             "late": late, "list": [r.to_json() for r in own]},
                "retention_failures": retention.get(name, 0),
            }
            if kind == "server":
                line["fee_cents"] = shares.get(name, 0)
                levels.append(ServerLevels(name, shares.get(name, 0), applies, len(counted),
                                           in_window, late, retention.get(name, 0)))
            host_lines.append(line)
        base = charges["server"]["charged_cents"] + charges["replication"]["charged_cents"]
        credits = server_credits(levels, base)
        pcs = {p["host"]: p for p in charges["pcs"]}
        pc_credits = [pc_credit(h["host"], pcs[h["host"]]["charged_cents"],
                                end.timestamp() > effective[h["host"]], None)
                      for h in host_lines if h["kind"] == "pc"]
        by_host = {c.host: c.to_json() for c in credits.servers}
        by_host.update({c.host: c.to_json() for c in pc_credits})
        for line in host_lines:
            line["credit"] = by_host.get(line["host"])
        credit_total = credits.total_cents + sum(c.total_cents for c in pc_credits)
        termination = self._termination(month, charges, history or {})
        return {
            "schema": SCHEMA, "month": month, "timezone": self.tz,
            "closed": now >= end + CLOSE_AFTER,
            "as_of": now.astimezone(UTC).isoformat(),
            "terms": {**self.terms.to_json(), "tier_in_force": charges["committed_tier"]},
            "rate_card": self.card.to_json(),
            "charges": charges,
            "hosts": host_lines,
            "credits": {"servers": credits.to_json(),
                        "pcs": [c.to_json() for c in pc_credits],
                        "pc_availability": "not measured by the appliance",
                        "total_cents": credit_total,
                        "applied_on": "the next month's invoice"},
            "early_termination": termination,
        }

    def _termination(self, month: str, charges: dict, history: dict[str, int]) -> dict:
        """V.9.1: the volume-drop signal and what a termination would cost this month."""
        t = self.terms
        months = _months_from(t.commitment_start, month)
        billed = []
        for m in months[:-1]:
            billed.append(history[m] if m in history else self.charges(m)["charges_cents"])
        billed.append(charges["charges_cents"])
        lookback = 6 if t.commitment_months >= 36 else 3
        from .report import previous_months

        volumes = [sum(whole_gb(b) for b in self.max_bytes(m).values())
                   for m in previous_months(month, lookback + 1)]
        fee = termination_fee(t.commitment_months, billed) if months else None
        return {"volume_drop_flag": early_termination_flag([float(v) for v in volumes],
                                                           t.commitment_months),
                "protected_gb_by_month": dict(zip(previous_months(month, lookback + 1),
                                                  volumes, strict=True)),
                "service_month": t.service_month(month),
                "fee_if_terminated": None if fee is None else fee.to_json()}
