"""The restore page and ransomware marks, in a real browser (headless Chromium): restoring a
backup the appliance found suspicious asks for confirmation first (a refusal queues nothing,
an acceptance queues the job), the dialog names the last clean backup of the source, and a
clean backup restores without the question. Reuses test_web_browser's browser set-up."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path

from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from appliance.accounts import Accounts
from appliance.restores.jobs import RestoreJobs
from appliance.restores.ledger import RestoreLedger
from benchmarks.ransomware import encrypt_in_place, office_tree

from ..conftest import Appliance, agent_cmd
from ..treeutil import run
from .test_web_browser import PASSWORD, WAIT, chrome, pytestmark  # noqa: F401


def restore_script(url: str, clean: str, bad: str, profile: Path, downloads: Path) -> dict:
    d = chrome(downloads, profile)
    w = WebDriverWait(d, WAIT)

    def find(selector: str):
        return w.until(EC.visibility_of_element_located((By.CSS_SELECTOR, selector)))

    def open_restore(snap: str) -> str:
        d.get(f"{url}/#/host/web01/{snap}/dir")
        find("#folder-restore").click()
        find("#restore-dialog")
        w.until(lambda d: "Restore the whole backup" in find("#restore-summary").text)
        find("#restore-dir").send_keys("/var/tmp/restored")
        return find("#restore-summary").text

    out: dict = {}
    try:
        d.get(url + "/")
        find("#login-name").send_keys("alice")
        d.find_element(By.ID, "login-password").send_keys(PASSWORD, Keys.ENTER)
        find("#hosts-table")
        out["bad_summary"] = open_restore(bad)
        find("#restore-submit").click()
        alert = w.until(EC.alert_is_present())
        out["question"] = alert.text
        alert.dismiss()  # no: nothing is queued, the dialog stays
        out["dialog_open_after_no"] = d.find_element(By.ID, "restore-dialog").get_attribute(
            "open") is not None
        find("#restore-submit").click()
        w.until(EC.alert_is_present()).accept()
        w.until(lambda d: d.current_url.endswith("#/jobs"))
        out["clean_summary"] = open_restore(clean)
        find("#restore-submit").click()
        w.until(lambda d: d.current_url.endswith("#/jobs"))  # no question asked
        out["alert_for_clean"] = False
    finally:
        d.quit()
    return out


async def test_restoring_a_suspicious_backup_asks_first(appliance: Appliance,
                                                        tmp_path: Path) -> None:
    Accounts(appliance.store.index).add("alice", PASSWORD)
    token = appliance.add_host("web01")
    src = office_tree(tmp_path / "share", files=80)
    snaps = []
    for step in (None, encrypt_in_place):
        if step is not None:
            step(src)
        rc, out, err = await run(agent_cmd() + ["backup", str(src), "--json"],
                                 appliance.env(token, tmp_path / "state"))
        assert rc == 0, err
        snaps.append(json.loads(out)["snapshot"])
    clean, bad = snaps
    profile = Path(tempfile.mkdtemp(prefix="rdr-chromium-"))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    try:
        seen = await asyncio.wait_for(asyncio.to_thread(
            restore_script, appliance.url, clean, bad, profile, downloads), 120)
    except WebDriverException as exc:
        raise AssertionError(f"browser session failed: {exc.msg}") from exc
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert "signs of ransomware" in seen["bad_summary"] and clean in seen["bad_summary"]
    assert "signs of ransomware" in seen["question"] and "Restore it anyway?" in seen["question"]
    assert seen["dialog_open_after_no"]
    assert "ransomware" not in seen["clean_summary"]
    jobs = RestoreJobs(appliance.store.index, RestoreLedger(appliance.store.index)).list("web01")
    assert sorted(j.snapshot for j in jobs) == sorted([bad, clean])  # one each: "no" queued none
