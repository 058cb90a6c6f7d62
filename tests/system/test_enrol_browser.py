"""The "Add a host" view and the host report in a real browser (headless Chromium), with
screenshots for people to look at (issue 27).

Signed in, the admin adds a host: the page shows the one-time code in the pinned install
line, then -- while the page polls -- the host exchanges the code and its agent polls, and
the page says "enrolled · online". The host report of an enrolled host shows what its agent
found on this machine (OS, kernel, file systems) and its RTO. The page's strict
Content-Security-Policy blocks nothing and nothing throws.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from appliance import wiring
from appliance.accounts import Accounts
from rdr_agent.hostreport import collect

from ..conftest import Appliance
from .test_web_browser import CHROMEDRIVER, CHROMIUM, PASSWORD, WAIT, chrome

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs /usr/bin/chromium and /usr/bin/chromedriver (Debian: chromium, "
           "chromium-driver)")


def enrol_script(appliance: Appliance, profile: Path, shots: Path) -> tuple[str, list]:
    """The browser session (blocking); returns the command shown and the console log."""
    d = chrome(shots, profile)
    w = WebDriverWait(d, WAIT)
    enrolment = wiring.enrolment(appliance.store)

    def find(selector: str):
        return w.until(EC.visibility_of_element_located((By.CSS_SELECTOR, selector)))

    try:
        d.get(appliance.url + "/")
        find("#login-name").send_keys("alice")
        d.find_element(By.ID, "login-password").send_keys(PASSWORD, Keys.ENTER)
        find("#hosts-table")
        find("#nav-add-host").click()
        find("#add-host-name").send_keys("web01", Keys.ENTER)
        w.until(lambda d: "already exists" in d.find_element(By.ID, "add-host-error").text)
        name = find("#add-host-name")
        name.clear()
        name.send_keys("pc02", Keys.ENTER)
        command = find("#enrol-command").text
        w.until(lambda d: "waiting for the host" in find("#enrol-status").text)
        assert d.save_screenshot(str(shots / "add-host.png"))
        # the host runs the line: its code is exchanged, its agent polls
        code = re.search(r"'(rdre_[^']+)'", command).group(1)
        enrolment.exchange(code, collect())
        wiring.plans(appliance.store).seen("pc02", "0.1.0")
        w.until(lambda d: "enrolled · online" in find("#enrol-status").text)
        assert d.save_screenshot(str(shots / "add-host-enrolled.png"))

        d.get(appliance.url + "/#/host/web01/report")
        facts = find("#host-report-facts").text
        assert "enrolled · online" in facts and "Debian" in facts, facts
        assert "cannot meet RTO" in facts or "not measured yet" in facts
        find("#host-report-fs")
        assert d.save_screenshot(str(shots / "host-report.png"))
        return command, d.get_log("browser")
    finally:
        d.quit()


async def test_add_a_host_and_its_report_in_the_browser(appliance: Appliance,
                                                        tmp_path: Path) -> None:
    Accounts(appliance.store.index).add("alice", PASSWORD)
    enrolment = wiring.enrolment(appliance.store)
    enrolment.add_host("web01")
    _, _ = enrolment.exchange(enrolment.new_code("web01").code, collect(["/etc"], []))
    wiring.plans(appliance.store).seen("web01", "0.1.0")
    enrolment.rto.set("web01", 4 * 3600.0)
    shots = tmp_path / "shots"
    shots.mkdir()
    profile = Path(tempfile.mkdtemp(prefix="rdr-chromium-"))
    try:
        command, logs = await asyncio.wait_for(asyncio.to_thread(
            enrol_script, appliance, profile, shots), 120)
    except WebDriverException as exc:
        raise AssertionError(f"browser session failed: {exc.msg}") from exc
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert "--pinnedpubkey 'sha256//" in command and command.startswith("sudo sh -c")
    assert enrolment.codes.enrolments()["pc02"]["count"] == 1
    for shot in sorted(shots.glob("*.png")):
        print(f"screenshot: {shot}")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in shots.glob("*.png")} == {"add-host.png", "add-host-enrolled.png",
                                                      "host-report.png"}
    problems = [e["message"] for e in logs
                if "Content Security Policy" in e["message"]
                or (e["level"] == "SEVERE" and e.get("source") != "network")]
    assert not problems, problems
