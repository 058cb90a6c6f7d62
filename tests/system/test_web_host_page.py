"""The restore-first host page in a real browser (headless Chromium), wide and phone-narrow.

A host with two backup sources (a tree and a database dump), a file deleted since an older
backup, a run with a very long message and a second host whose agent never connected. The
page must show the backups before the runs and the plan (collapsed), mark every wrong plan
field at once and say "saved", find the deleted file by searching every backup, offer
"restore this version" from a file's versions, and warn in the restore dialog that the
target's agent is not online; at 400 px nothing overflows the page sideways.

Screenshots of the host page at 1400 and 400 px, the browse view at 400 px and the restore
dialog with its warning are written to $RDR_SCREENSHOTS (`RDR_SCREENSHOTS=docs/screenshots`
refreshes the committed ones, for people to look at), else to a directory under the system's
temporary directory: a test run leaves the checkout as it was.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from appliance import wiring
from appliance.accounts import Accounts

from ..conftest import Appliance, agent_cmd
from ..treeutil import make_tree, run
from .test_web_browser import PASSWORD, WAIT, chrome, pytestmark  # noqa: F401 (skip rule)

SHOTS = Path(os.environ.get("RDR_SCREENSHOTS")
             or Path(tempfile.gettempdir()) / "rdr-screenshots")
LONG_MESSAGE = ("the dump command failed: pg_dump: error: connection to server on socket "
                "/var/run/postgresql/.s.PGSQL.5432 failed: FATAL: role "
                "backup_operator_with_a_very_long_name_indeed does not exist; "
                "/srv/very/long/path/without/any/spaces/" + "x" * 120)


def viewport(d: WebDriver, width: int, height: int) -> None:
    """The page's CSS viewport, exactly (a window size would include the browser's frame)."""
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})


def overflow(d: WebDriver) -> int:
    """How far the page is wider than its viewport (0: no sideways scrolling)."""
    return d.execute_script(
        "return document.documentElement.scrollWidth - window.innerWidth")


def too_wide(d: WebDriver) -> list:
    """The outermost elements that reach past the viewport's right edge (for the message)."""
    return d.execute_script(
        "const out = []; for (const e of document.querySelectorAll('body *')) {"
        " const r = e.getBoundingClientRect();"
        " if (r.right > window.innerWidth + 1 && !out.some(o => o.contains(e))"
        "     && !e.closest('.table-wrap')) out.push(e); }"
        "return out.slice(0, 8).map(e => e.tagName + '#' + e.id + '.' + e.className + ' '"
        " + Math.round(e.getBoundingClientRect().right));")


def before(d: WebDriver, a: str, b: str) -> bool:
    return d.execute_script(
        "return Boolean(document.querySelector(arguments[0]).compareDocumentPosition("
        "document.querySelector(arguments[1])) & Node.DOCUMENT_POSITION_FOLLOWING)", a, b)


def host_page_script(url: str, old_snapshot: str, src: Path, logs: list) -> None:
    d = chrome(Path(tempfile.mkdtemp(prefix="rdr-dl-")), Path(tempfile.mkdtemp(prefix="rdr-cr-")))
    w = WebDriverWait(d, WAIT)

    def find(selector: str) -> WebElement:
        return w.until(EC.presence_of_element_located((By.CSS_SELECTOR, selector)))

    def visible(selector: str) -> WebElement:
        return w.until(EC.visibility_of_element_located((By.CSS_SELECTOR, selector)))

    def host_page() -> None:
        d.get(url + "/#/host/web01")
        find("#host-view #snapshots-table")

    try:
        viewport(d, 1400, 1100)
        d.get(url + "/")
        visible("#login-name").send_keys("alice")
        d.find_element(By.ID, "login-password").send_keys(PASSWORD, Keys.ENTER)
        find("#hosts-table")
        host_page()

        # --- restore first: backups (by source), then runs, then the plan, collapsed -----
        assert before(d, "#backups", "#schedule") and before(d, "#schedule", "#plan")
        assert not d.execute_script("return document.getElementById('plan').open")
        sources = [li.get_attribute("data-source")
                   for li in d.find_elements(By.CSS_SELECTOR, "#sources li")]
        assert "stdin:db.sql" in sources and len(sources) == 2, sources
        Select(find("#source-filter")).select_by_value("stdin:db.sql")
        shown = [tr for tr in d.find_elements(By.CSS_SELECTOR, "#snapshots-table tbody tr")
                 if tr.is_displayed()]
        assert len(shown) == 1 and shown[0].get_attribute("data-source") == "stdin:db.sql"
        Select(find("#source-filter")).select_by_value("*")
        # Times say their zone: the header names the appliance's, the window the plan's.
        assert find("#appliance-zone").text == "Times in America/New_York"
        assert "daily at" in find("#host-view .status-line").text
        # The long run message wraps inside its cell: the table is no wider than its box.
        msg = find("#runs-table td.msg")
        assert LONG_MESSAGE[:40] in msg.text
        assert d.execute_script(
            "const w = document.querySelector('#schedule .table-wrap');"
            "return w.scrollWidth <= w.clientWidth")
        assert d.save_screenshot(str(SHOTS / "host-1400.png"))

        # --- the plan: every wrong field at once, beside it; then saved, audited ---------
        find("#plan-summary").click()
        paths = visible("#plan-paths")
        paths.clear()
        paths.send_keys("relative/path")
        win = find("#plan-window")
        win.clear()
        win.send_keys("25:00")
        find("#plan-timezone").send_keys("Mars/Olympus")
        find("#plan-save").click()
        w.until(lambda d: find("#err-timezone").text)
        for name in ("paths", "window_start", "timezone"):
            assert find(f"#err-{name}").text, name
        assert find("#plan-paths").get_attribute("aria-invalid") == "true"
        assert "3 fields need a change" in find("#plan-error").text
        assert not find("#err-policy").text
        d.execute_script("document.getElementById('plan').scrollIntoView()")
        assert d.save_screenshot(str(SHOTS / "plan-errors-1400.png"))
        paths.clear()
        paths.send_keys("/srv/www")
        win.clear()
        win.send_keys("17:00")
        zone = find("#plan-timezone")
        zone.clear()
        zone.send_keys("Europe/Paris")
        find("#plan-save").click()
        w.until(EC.staleness_of(paths))
        saved = visible("#plan-saved").text
        assert saved.startswith("Saved") and "paths" in saved and "/srv/www" in saved, saved
        assert "Europe/Paris" in saved
        audit = find("#plan-audit").text
        assert "by account:alice" in audit and "→" in audit, audit
        assert "daily at 17:00 Europe/Paris" in find("#plan-summary").text
        d.execute_script("document.getElementById('plan').scrollIntoView()")
        assert d.save_screenshot(str(SHOTS / "plan-saved-1400.png"))
        assert "(daily at 17:00 Europe/Paris)" in find("#host-view .status-line").text

        # --- the overview labels each time with its zone ------------------------------------
        d.get(url + "/#/")
        row = find('#hosts-table tr[data-host="web01"]')
        assert "daily at 17:00 Europe/Paris" in row.text, row.text
        status = find("#appliance-status").text
        assert "Time zone America/New_York" in status
        assert d.execute_script(  # the appliance's clock in its own zone, named
            "return /E[SD]T/.test(document.querySelector('#appliance-status time')"
            ".textContent)"), status
        assert d.save_screenshot(str(SHOTS / "overview-1400.png"))
        host_page()

        # --- search every backup: a file deleted since the older backup is found ----------
        find("#history-search-input").send_keys("gone-since", Keys.ENTER)
        row = find("#history-results tbody tr")
        assert row.get_attribute("data-snapshot") == old_snapshot
        assert "1 match in 3 of 3 backups" in find("#search-note").text

        # --- "restore this version" from a file's versions -> the offline warning ---------
        find("#history-results a.entry-link").send_keys(Keys.ENTER)
        visible("#versions")
        restore = visible(f'#versions button.version-restore[data-snapshot="{old_snapshot}"]')
        restore.click()
        w.until(lambda d: d.execute_script(
            "return document.getElementById('restore-dialog').open"))
        assert old_snapshot[:10] in find("#restore-summary").text or "gone-since.txt" in \
            find("#restore-summary").text
        Select(find("#restore-host")).select_by_value("db01")
        warning = visible("#restore-offline").text
        assert "The agent of db01 is not online" in warning
        assert "never connected" in warning, warning
        find("#restore-dir").send_keys("/var/tmp/restore")
        assert d.save_screenshot(str(SHOTS / "restore-offline.png"))
        find("#restore-submit").click()  # queued all the same: it waits for the agent
        w.until(lambda d: d.current_url.endswith("#/jobs"))
        assert "db01 restores into /var/tmp/restore" in find("#status-text").text

        # --- 400 px: nothing overflows sideways, names stay readable ----------------------
        viewport(d, 400, 1400)
        host_page()
        assert overflow(d) <= 0, too_wide(d)
        assert d.execute_script("return document.documentElement.scrollWidth") <= 400
        assert d.save_screenshot(str(SHOTS / "host-400.png"))
        d.get(url + f"/#/host/web01/{old_snapshot}/dir?q=" + str(src).strip("/") + "/docs")
        find("#listing .entry-name")
        assert overflow(d) <= 0, too_wide(d)
        heights = d.execute_script(
            "return [...document.querySelectorAll('#listing .entry-name')].map("
            "e => [e.textContent, e.getBoundingClientRect().width, "
            "e.getBoundingClientRect().height])")
        for name, width, height in heights:
            # one line per name (a name short enough to fit), never a letter per line
            if len(name) < 20:
                assert height < 30 and width > 4 * len(name), (name, width, height)
        assert d.save_screenshot(str(SHOTS / "browse-400.png"))
        # ... and the other views, the plan form and the restore dialog, at 400 px too
        for address, ready in (("/#/", "#hosts-table"), ("/#/jobs", "#view h1"),
                               ("/#/search?text=readme&host=web01", "#history-results")):
            d.get(url + address)
            find(ready)
            assert overflow(d) <= 0, (address, too_wide(d))
        host_page()
        find("#plan-summary").click()
        visible("#plan-paths")
        assert overflow(d) <= 0, too_wide(d)
        find("#history-search-input").send_keys("readme.txt", Keys.ENTER)
        find("#history-results button").click()
        visible("#restore-offline")
        assert d.execute_script(
            "const b = document.getElementById('restore-dialog').getBoundingClientRect();"
            "return b.left >= 0 && b.right <= window.innerWidth")
        logs.extend(d.get_log("browser"))
    finally:
        d.quit()


async def test_the_host_page_is_restore_first_and_works_at_400_px(appliance: Appliance,
                                                                   tmp_path: Path) -> None:
    Accounts(appliance.store.index).add("alice", PASSWORD)
    token = appliance.add_host("web01")
    appliance.add_host("db01")  # its agent never connected
    env = appliance.env(token, tmp_path / "state")
    src = make_tree(tmp_path / "src-web01", big_mb=1)
    (src / "docs" / "gone-since.txt").write_bytes(b"deleted after the first backup\n")
    rc, out, err = await run(agent_cmd() + ["backup", str(src), "--json"], env)
    assert rc == 0, err
    old_snapshot = json.loads(out)["snapshot"]
    (src / "docs" / "gone-since.txt").unlink()
    rc, out, err = await run(agent_cmd() + ["backup", "--stdin", "--name", "db.sql", "--json"],
                             env, stdin=b"-- a database dump\n")
    assert rc == 0, err
    await asyncio.sleep(1.1)  # snapshot ids are per second
    rc, out, err = await run(agent_cmd() + ["backup", str(src), "--json"], env)
    assert rc == 0, err
    runs = wiring.runs(appliance.store)
    run_ = runs.request_now("web01", "page:alice", time.time(), None)
    assert runs.claim("web01", time.time()).id == run_.id
    runs.finish("web01", run_.id, "failed", snapshot=None, files=0, nbytes=0,
                message=LONG_MESSAGE, gaps=[], gap_count=0, now=time.time())

    SHOTS.mkdir(parents=True, exist_ok=True)
    logs: list = []
    try:
        await asyncio.wait_for(asyncio.to_thread(
            host_page_script, appliance.url, old_snapshot, src, logs), 180)
    except WebDriverException as exc:
        raise AssertionError(f"browser session failed: {exc.msg}") from exc
    for name in ("host-1400.png", "host-400.png", "browse-400.png", "restore-offline.png",
                 "plan-errors-1400.png", "plan-saved-1400.png", "overview-1400.png"):
        png = (SHOTS / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n", name
        width = int.from_bytes(png[16:20], "big")
        assert width == (400 if name.endswith("-400.png") else 1400), (name, width)
    # "Restore this version" queued the older backup's file for db01.
    (job,) = appliance.store.index.query(
        "SELECT source_host, snapshot, paths, target_host, target_dir FROM restore_jobs")
    assert job[:2] == ("web01", old_snapshot) and job[3:] == ("db01", "/var/tmp/restore")
    assert "gone-since.txt" in job[2]
    problems = [e["message"] for e in logs
                if "Content Security Policy" in e["message"]
                or (e["level"] == "SEVERE" and e.get("source") != "network")]
    assert not problems, problems
    shutil.rmtree(tmp_path / "state", ignore_errors=True)
