"""One edit of a host's settings -- its backup plan, retention policy and backup window -- as
`rdr hosts set` and the page's ``PUT /hosts/{host}/plan`` both make it, so the two check and
write in the same order: everything is checked before anything is written, and a refused
edit changes nothing.

Each caller parses its own input (flags, JSON) and reports a refusal in its own words; what
they share is the order of the writes (the normal form of a window start is
`appliance.windows.window_start`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..store.errors import StoreError
from ..store.retention import Policy
from .kinds import check_contract_policy
from .repository import BackupPlans

if TYPE_CHECKING:
    from ..store.datastore import Datastore


def edit_host(store: Datastore, plans: BackupPlans, host: str, actor: str,
              plan: Mapping[str, object],
              policy: str | None = None, window: str | None = None, *,
              allow_custom_retention: bool = False) -> None:
    """Apply one edit of `host`: `plan` the changed plan fields (checked whole), `policy` a
    retention D-W-M and `window` a start from `window_start` -- None leaves either as it is,
    "" returns it to the appliance default. `actor` is recorded in the plan's audit.

    Raises NotFound for an unknown host and StoreError for a refused plan or policy, in
    both cases before anything is written."""
    if policy:
        try:
            parsed = str(Policy.parse(policy))
        except ValueError as exc:
            raise StoreError("bad_policy", str(exc)) from None
        check_contract_policy(parsed, allow_custom_retention)  # 8-5-4, 30-0-0, 7-0-0 only
    if plan:
        plans.update(host, actor=actor, **plan)
    else:
        plans.get(host)  # NotFound for an unknown host
    if policy is not None:
        store.set_policy(host, policy or None)
    if window is not None:
        store.set_window(host, window or None)
