"""Service-level credits (SLA for Servers 1.2, 3.1-3.3; SLA for PC 4.2, 6.2), with their caps.

Pure: the day-by-day results (which backups counted, which were excused) come from `sla`;
here each result becomes cents:

- backup level (3.1): under 95 % of the scheduled backups completed in their window ->
  1/28 of the month's fee for the affected server;
- restore level (3.2): 10 % of the server's month fee for each portal request not initiated
  within 30 minutes;
- retention level (3.3): 1/28 of the server's month fee for each server whose requested data
  could not be restored from a backup;
- all server credits of a month together at most 20 % of that month's service charges (1.2);
- a PC's credits (6.2: 5 % of its backup charge when the PC Services Infrastructure was
  available under 99 % of the month) at most that PC's month charge (4.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .money import div_half_up

BACKUP_LEVEL_PERCENT = 95
BACKUP_CREDIT_DIVISOR = 28
RESTORE_CREDIT_PERCENT = 10
RETENTION_CREDIT_DIVISOR = 28
SERVER_CAP_PERCENT = 20
PC_AVAILABILITY_PERCENT = 99
PC_AVAILABILITY_CREDIT_PERCENT = 5


@dataclass(frozen=True, slots=True)
class ServerLevels:
    """One server's month as the service levels see it."""

    host: str
    fee_cents: int  # its share of the month's server charge
    applies: bool  # False during the 60-day implementation period (SLA 1.6)
    scheduled: int  # backups counted (excused ones left out)
    in_window: int
    late_restores: int  # portal requests not initiated within 30 minutes
    failed_retention: int  # requested data not restored from a backup


@dataclass(frozen=True, slots=True)
class ServerCredit:
    host: str
    fee_cents: int
    backup_met: bool | None  # None: nothing counted, or the level does not apply yet
    backup_cents: int
    restore_cents: int
    retention_cents: int

    @property
    def total_cents(self) -> int:
        return self.backup_cents + self.restore_cents + self.retention_cents

    def to_json(self) -> dict:
        return {**asdict(self), "total_cents": self.total_cents}


def backup_met(scheduled: int, in_window: int) -> bool | None:
    """At least 95 % (exact integer comparison: 19 of 20 meets, 18 of 19 does not)."""
    if scheduled == 0:
        return None
    return in_window * 100 >= BACKUP_LEVEL_PERCENT * scheduled


def server_credit(levels: ServerLevels) -> ServerCredit:
    if not levels.applies:
        return ServerCredit(levels.host, levels.fee_cents, None, 0, 0, 0)
    met = backup_met(levels.scheduled, levels.in_window)
    fee = levels.fee_cents
    return ServerCredit(
        host=levels.host, fee_cents=fee, backup_met=met,
        backup_cents=div_half_up(fee, BACKUP_CREDIT_DIVISOR) if met is False else 0,
        restore_cents=levels.late_restores * div_half_up(fee * RESTORE_CREDIT_PERCENT, 100),
        # "for each server" where data was not restored: once per server and month
        retention_cents=div_half_up(fee, RETENTION_CREDIT_DIVISOR)
        if levels.failed_retention else 0)


@dataclass(frozen=True, slots=True)
class ServerCredits:
    servers: tuple[ServerCredit, ...]
    before_cap_cents: int
    cap_cents: int
    total_cents: int  # min(before_cap, cap)

    def to_json(self) -> dict:
        return {"servers": [s.to_json() for s in self.servers],
                "before_cap_cents": self.before_cap_cents, "cap_cents": self.cap_cents,
                "cap_applied": self.total_cents < self.before_cap_cents,
                "total_cents": self.total_cents}


def server_credits(levels: Sequence[ServerLevels], service_charges_cents: int) -> ServerCredits:
    """Every server's credits, the month's sum capped at 20 % of its service charges."""
    credits = tuple(server_credit(x) for x in levels)
    before = sum(c.total_cents for c in credits)
    cap = service_charges_cents * SERVER_CAP_PERCENT // 100
    return ServerCredits(credits, before, cap, min(before, cap))


@dataclass(frozen=True, slots=True)
class PcCredit:
    host: str
    charge_cents: int
    applies: bool  # False during the PC's 30-day implementation period (SLA 4.3)
    availability_percent: float | None  # None: not measured
    availability_cents: int
    total_cents: int  # capped at the PC's month charge

    def to_json(self) -> dict:
        return asdict(self)


def pc_credit(host: str, charge_cents: int, applies: bool,
              availability_percent: float | None) -> PcCredit:
    credit = 0
    if applies and availability_percent is not None \
            and availability_percent < PC_AVAILABILITY_PERCENT:
        credit = div_half_up(charge_cents * PC_AVAILABILITY_CREDIT_PERCENT, 100)
    return PcCredit(host, charge_cents, applies, availability_percent, credit,
                    min(credit, charge_cents))
