"""The store's admission limit alone: up to max_active_backups sessions, counting only live ones
(agents waiting their turn against a daemon are tests/integration/test_admission.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from appliance.store.datastore import Datastore
from appliance.store.errors import Unavailable


def test_the_store_admits_up_to_its_limit_and_counts_only_live_sessions(tmp_path: Path,
                                                                        ) -> None:
    st = Datastore(tmp_path / "s", session_lease=0.3, reserve_bytes=0, max_active=2)
    for h in ("a", "b", "c"):
        st.add_host(h)
    sa, _ = st.open_session("a")
    st.open_session("b")
    with pytest.raises(Unavailable) as err:
        st.open_session("c")
    assert err.value.code == "busy" and err.value.details["retry_after"] > 0
    assert st.open_session("a", sa) == (sa, True)  # a running backup always resumes
    st.abort_session("a", sa)
    sc, resumed = st.open_session("c")  # a slot freed
    assert not resumed
    with pytest.raises(Unavailable):
        st.open_session("a")
    time.sleep(0.35)  # b and c went silent past their lease: their slots are free again
    assert st.open_session("a")[1] is False
