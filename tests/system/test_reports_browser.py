"""The page's Reports view in a real browser (headless Chromium through chromedriver), on a
month of generated history: three hosts (two servers, a PC) with November's windows in
window, late, missed and excused, daily usage samples, portal restores early, late and
never started. Signs in, opens Reports for that month, checks the figures the view shows
against the statement and that each chart has its text alternative and its numbers, and
saves a screenshot of each chart (printed paths) for people to look at."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from dataclasses import replace
from datetime import UTC, timedelta
from pathlib import Path

import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

import provisioning
from appliance.accounts import Accounts
from appliance.capacity.samples import Samples
from appliance.config import ContractConfig
from appliance.daemon import Daemon
from appliance.plans.kinds import HostKinds
from appliance.plans.repository import BackupPlans
from appliance.restores.ledger import RestoreLedger
from appliance.runs.repository import BackupRuns
from appliance.store.datastore import Datastore

from ..conftest import Appliance, make_config
from ..unit.test_capacity import GB, at, record, register
from .test_web_browser import CHROMEDRIVER, CHROMIUM, PASSWORD, WAIT, chrome

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs /usr/bin/chromium and /usr/bin/chromedriver")

EXAMPLE = Path(provisioning.__file__).parent / "contract.example.toml"


def window_run(store: Datastore, host: str, day: int, outcome: str, size: int) -> None:
    """November `day`'s 17:00 window of `host`, as the run queue records it: `outcome` is
    in_window, late (committed after the window), missed (failed, no backup) or paused."""
    runs = BackupRuns(store.index)
    opens = at(2026, 11, day, 17, 0)
    closes = opens + timedelta(hours=12)
    run = runs.schedule(host, opens.date().isoformat(), opens.timestamp(), closes.timestamp(),
                        opens.timestamp(), opens.timestamp())
    assert run is not None
    runs.claim(host, opens.timestamp() + 60)
    if outcome == "paused":
        runs.finish(host, run.id, "paused", snapshot=None, files=0, nbytes=0, message="",
                    gaps=[], gap_count=0, now=opens.timestamp() + 120)
        return
    if outcome == "missed":
        runs.finish(host, run.id, "failed", snapshot=None, files=0, nbytes=0,
                    message="disk full on the host", gaps=[], gap_count=0,
                    now=opens.timestamp() + 600)
        return
    done = opens + (timedelta(hours=1, minutes=day) if outcome == "in_window"
                    else timedelta(hours=13))
    record(store, host, done, size)
    snap = done.astimezone(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    runs.finish(host, run.id, "done", snapshot=snap, files=1, nbytes=size, message="",
                gaps=[], gap_count=0, now=done.timestamp())


def history(store: Datastore) -> None:
    BackupPlans(store.index)  # its tables, which the run queue reads
    for name in ("web01", "db01", "pc1"):
        register(store, name, at(2026, 8, 1), "17:00")
    HostKinds(store.index).set("pc1", "pc")
    for day in range(1, 31):
        window_run(store, "web01", day, "late" if day in (12, 13) else "in_window",
                   (600 + 4 * day) * GB)
        window_run(store, "db01", day, {7: "missed", 8: "missed", 20: "paused"}.get(
            day, "in_window"), (180 + day) * GB)
        window_run(store, "pc1", day, "in_window", 8 * GB)
    samples = Samples(store.index)
    for month, days in ((9, 30), (10, 31), (11, 30)):
        for day in range(1, days + 1):
            n = (month - 9) * 31 + day
            samples.put_usage_sample(f"2026-{month:02d}-{day:02d}", json.dumps(
                {"stored_bytes": (300 + 3 * n) * GB, "capacity_gb": 2000.0}))
    ledger = RestoreLedger(store.index)
    t = at(2026, 11, 10, 9).timestamp()
    for i, minutes in enumerate((2, 12, 41, None, 5)):
        rid = ledger.start("web01" if i % 2 == 0 else "db01", "s", "page", t + i * 86400 * 4,
                           account="alice")
        if minutes is not None:
            with store.index.tx() as db:
                db.execute("UPDATE restores SET first_byte_at = ? WHERE id = ?",
                           (t + i * 86400 * 4 + minutes * 60, rid))


def reports_script(url: str, shots: Path, profile: Path) -> dict:
    d = chrome(shots, profile)
    w = WebDriverWait(d, WAIT)
    try:
        d.get(url + "/#/reports?month=2026-11")
        w.until(EC.visibility_of_element_located((By.ID, "login-name"))).send_keys("alice")
        d.find_element(By.ID, "login-password").send_keys(PASSWORD, Keys.ENTER)
        w.until(EC.presence_of_element_located((By.ID, "chart-restores")))
        out: dict = {"title": d.find_element(By.ID, "page-title").text,
                     "charges": d.find_element(By.ID, "charges-total").text,
                     "credits": d.find_element(By.ID, "credits-total").text,
                     "levels": {r.get_attribute("data-host"): r.text for r in
                                d.find_elements(By.CSS_SELECTOR, "#levels-table tbody tr")},
                     "daily": d.find_element(By.ID, "daily-report").text,
                     "charts": {}}
        for cid in ("chart-usage", "chart-calendar", "chart-restores"):
            svg = d.find_element(By.ID, cid)
            ids = svg.get_attribute("aria-labelledby").split()
            out["charts"][cid] = {
                "role": svg.get_attribute("role"),
                "label": " ".join(d.find_element(By.ID, i).get_attribute("textContent")
                                  for i in ids)}
            section = svg.find_element(By.XPATH, "./ancestor::section[1]")
            d.execute_script("arguments[0].scrollIntoView()", section)
            assert section.screenshot(str(shots / f"{cid}.png"))
        # the numbers by keyboard: Tab reaches the usage chart's table, Enter opens it
        summary = d.find_element(By.CSS_SELECTOR, "#usage-numbers summary")
        d.execute_script("arguments[0].scrollIntoView()", summary)
        d.find_element(By.ID, "report-month").click()
        for _ in range(6):
            if d.switch_to.active_element == summary:
                break
            d.switch_to.active_element.send_keys(Keys.TAB)
        out["summary_focused"] = d.switch_to.active_element == summary
        summary.send_keys(Keys.ENTER)
        out["usage_numbers"] = d.find_element(By.ID, "usage-numbers").text
        assert d.save_screenshot(str(shots / "reports.png"))
        out["log"] = d.get_log("browser")
        return out
    finally:
        d.quit()


async def test_reports_view_with_a_month_of_history(tmp_path: Path) -> None:
    cfg = replace(make_config(tmp_path / "data"),
                  contract=ContractConfig(terms_file=str(EXAMPLE),
                                          statement_close_hours=0))
    # the history is there before the daemon starts (rebuilt into its index as it starts)
    store = Datastore(tmp_path / "data", reserve_bytes=0)
    try:
        history(store)
        Accounts(store.index).add("alice", PASSWORD)
    finally:
        store.close()
    daemon = Daemon(cfg)
    await daemon.start()
    shots = tmp_path / "shots"
    shots.mkdir()
    profile = Path(tempfile.mkdtemp(prefix="rdr-chromium-"))
    try:
        app = Appliance.of(daemon, tmp_path / "data")
        statement = json.loads(daemon_statement(app))
        try:
            seen = await asyncio.wait_for(asyncio.to_thread(
                reports_script, app.url, shots, profile), 120)
        except WebDriverException as exc:
            raise AssertionError(f"browser session failed: {exc.msg}") from exc
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        await daemon.stop()

    assert seen["title"] == "Reports for 2026-11"
    usd = statement["charges"]["charges_cents"]
    assert seen["charges"] == f"${usd // 100:,}.{usd % 100:02d}"
    hosts = {h["host"]: h for h in statement["hosts"]}
    assert hosts["web01"]["backups"]["in_window"] == 28  # the 12th and 13th were late
    assert hosts["db01"]["backups"]["excused"] == 1 and hosts["db01"]["backups"]["met"] is False
    assert "28 of 30" in seen["levels"]["web01"] and "Not met" in seen["levels"]["web01"]
    assert "27 of 29" in seen["levels"]["db01"] and "Not met" in seen["levels"]["db01"]
    assert "30 of 30" in seen["levels"]["pc1"] and "Met" in seen["levels"]["pc1"]
    assert "Daily report: 2026-11-30" in seen["daily"]
    for cid, chart in seen["charts"].items():
        assert chart["role"] == "img" and len(chart["label"]) > 30, (cid, chart)
    assert "50 % minimum-use floor is 1000 GB" in seen["charts"]["chart-usage"]["label"]
    assert "2 not initiated within 30 minutes" in seen["charts"]["chart-restores"]["label"]
    assert seen["summary_focused"], "Tab did not reach the chart's numbers"
    assert "2026-11-30" in seen["usage_numbers"] and "GB protected" in seen["usage_numbers"]
    # the page's first look for a session is a 401 before sign-in (a network entry): expected
    problems = [e for e in seen["log"] if e["level"] in ("SEVERE", "WARNING")
                and not ("/auth/session" in e["message"] and e.get("source") == "network")]
    assert not problems, problems
    for shot in sorted(shots.glob("*.png")):
        print(f"screenshot: {shot}")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def daemon_statement(app: Appliance) -> bytes:
    from appliance import wiring

    billing = wiring.billing(app.daemon.cfg, app.store)
    assert billing is not None
    return billing.statement_bytes("2026-11")
