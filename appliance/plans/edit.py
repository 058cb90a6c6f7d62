"""One edit of a host's settings -- its backup plan, retention policy and backup window -- as
`rdr hosts set` and the page's ``PUT /hosts/{host}/plan`` both make it, so the two check and
write in the same order: everything is checked before anything is written, a refused edit
changes nothing, and a refusal names every wrong field at once (`PlanErrors`), so a form
can show each beside its field instead of one per submit.

Each caller parses its own input (flags, JSON) and reports a refusal in its own words; what
they share is the checks, the order of the writes and the audit of what changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..store.errors import StoreError
from ..store.retention import Policy
from ..windows import window_start
from .kinds import check_contract_policy
from .repository import BackupPlans, PlanErrors

if TYPE_CHECKING:
    from ..store.datastore import Datastore

Change = tuple[str, str | None, str | None]  # (field, old, new), as the audit keeps it


def edit_host(store: Datastore, plans: BackupPlans, host: str, actor: str,
              plan: Mapping[str, object],
              policy: object = None, window: object = None, *,
              allow_custom_retention: bool = False) -> list[Change]:
    """Apply one edit of `host`: `plan` the plan fields to set (checked whole), `policy` a
    retention D-W-M and `window` a window start "HH:MM" -- None leaves either as it is,
    "" returns it to the appliance default. Every changed field, of the plan, the retention
    and the window alike, is audited as one entry by `actor`; a field set to its current
    value is no change; a retention outside the contract's options (8-5-4, 30-0-0,
    7-0-0) is refused unless `allow_custom_retention`. Returns the changes (field, old,
    new), in the form's order.

    Raises NotFound for an unknown host and PlanErrors naming every wrong field, in both
    cases before anything is written."""
    errors: list[tuple[str, str]] = []
    if policy is not None:
        try:
            if not isinstance(policy, str):
                raise ValueError("must be D-W-M (e.g. 8-5-4) or '' for the default")
            policy = str(Policy.parse(policy)) if policy else ""
            check_contract_policy(policy, allow_custom_retention)
        except ValueError as exc:
            errors.append(("policy", str(exc)))
        except StoreError as exc:
            errors.append(("policy", exc.message))
    if window is not None:
        try:
            if not isinstance(window, str):
                raise ValueError("must be HH:MM or '' for the default")
            window = window_start(window)
        except ValueError as exc:
            errors.append(("window_start", str(exc)))
    try:
        plans.prepare(host, plan)  # NotFound first: an unknown host is no field's fault
    except PlanErrors as exc:
        errors = exc.fields + errors
    if errors:
        raise PlanErrors(errors)
    rec = store.index.host_record(host)
    extra: list[Change] = []
    if policy is not None and (rec["policy"] or "") != policy:
        extra.append(("policy", rec["policy"], policy or None))
    if window is not None and (rec["window_start"] or "") != window:
        extra.append(("window_start", rec["window_start"], window or None))
    changes = plans.update(host, actor=actor, extra=extra, **plan)
    if policy is not None:
        store.set_policy(host, policy or None)
    if window is not None:
        store.set_window(host, window or None)
    return changes
