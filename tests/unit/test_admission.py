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


def test_the_daemons_store_refuses_while_degraded_then_asks_the_watermarks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The admission policy is given to the store when it is built (wiring.open_store with
    the daemon's live reasons): degraded first (503), then the watermarks (507)."""
    import appliance.capacity.watermarks as wm
    from appliance import wiring
    from appliance.store.errors import InsufficientStorage

    from ..conftest import make_config

    degraded: dict[str, str] = {}
    st = wiring.open_store(make_config(tmp_path / "data"), degraded)
    try:
        for h in ("a", "b", "c"):
            st.add_host(h)
        sa, _ = st.open_session("a")
        degraded["data_disk"] = "the data disk vdb is missing"
        with pytest.raises(Unavailable) as err:
            st.open_session("b")
        assert err.value.code == "degraded" and "vdb is missing" in err.value.message
        assert st.open_session("a", sa) == (sa, True)  # a running backup still resumes
        monkeypatch.setattr(wm, "used_percent", lambda path: 99.0)
        with pytest.raises(Unavailable):  # degraded is asked before the disk's fill
            st.open_session("b")
        degraded.clear()
        with pytest.raises(InsufficientStorage):  # then the watermarks
            st.open_session("b")
        monkeypatch.setattr(wm, "used_percent", lambda path: 10.0)
        assert st.open_session("b")[1] is False
    finally:
        st.close()
