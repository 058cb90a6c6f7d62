"""The LAN restore page in a real browser (headless Chromium through chromedriver).

What a customer does when a file is lost: sign in with the keyboard, find the host in the
overview, go host -> backup -> folder by folder down to the file, open its details, download
it; then download the folder as a zip. The bytes that land in the browser's download
directory are compared with the source tree the real agent backed up. Also: a wrong password
shows the server's message in the page, a hostile file name stays text, and the strict
Content-Security-Policy blocks nothing the page needs.

The daemon runs in the test's event loop, so the blocking Selenium script runs in a worker
thread. CI installs Chromium and chromedriver from .ci/browser-packages.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
import zipfile
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote_from_bytes

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from appliance import wiring
from appliance.accounts import Accounts

from ..conftest import Appliance, agent_cmd
from ..integration.test_agent_service import local_hhmm
from ..treeutil import make_tree, run

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PASSWORD = "correct horse battery"
HOSTILE = '<img src=x onerror="document.title=1">.txt'  # a file name is attacker-controlled
WAIT = 15

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs /usr/bin/chromium and /usr/bin/chromedriver (Debian: chromium, "
           "chromium-driver; CI installs them from .ci/browser-packages)")


def q(path: bytes | str) -> str:
    """The page's path parameter: percent-encoded bytes, as the server sends it."""
    return quote_from_bytes(os.fsencode(path).strip(b"/"), safe="/")


def css(value: str) -> str:
    """A CSS attribute-selector string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def zip_name(rel: bytes) -> str:
    """How zipfile reports an entry name the appliance wrote from raw bytes: flagged UTF-8
    when the bytes are UTF-8, otherwise read as cp437."""
    try:
        return rel.decode("utf-8")
    except UnicodeDecodeError:
        return rel.decode("cp437")


def chrome(downloads: Path, profile: Path) -> WebDriver:
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-proxy-server",
                "--ignore-certificate-errors", "--window-size=1280,900",
                f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {
        "download.default_directory": str(downloads),
        "download.prompt_for_download": False,
        "download.directory_upgrade": True,
        "safebrowsing.enabled": False,
    })
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver: Selenium Manager must never try to download one.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)),
                              options=opts)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(downloads)})
    return driver


def wait_download(downloads: Path, name: str, timeout: float = 30) -> Path:
    """The finished download `name` (Chrome writes NAME.crdownload, then renames it)."""
    deadline = time.monotonic() + timeout
    target = downloads / name
    while time.monotonic() < deadline:
        partial = [p.name for p in downloads.iterdir() if p.name.endswith(".crdownload")]
        if target.exists() and not partial:
            return target
        time.sleep(0.1)
    raise AssertionError(f"{name} not downloaded; download dir has "
                         f"{sorted(p.name for p in downloads.iterdir())}")


def expected_zip(src_root: Path, sub: str) -> dict[str, bytes | None]:
    """Zip entry name -> content (None for directories) of `sub` under `src_root`, as the
    appliance archives it: the folder itself at the top, symlinks carry their target."""
    root = os.fsencode(src_root)
    out: dict[str, bytes | None] = {zip_name(os.fsencode(sub)) + "/": None}
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, os.fsencode(sub))):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if os.path.islink(full):
                out[zip_name(rel)] = os.readlink(full)
            elif os.path.isdir(full):
                out[zip_name(rel) + "/"] = None
            elif os.path.isfile(full):
                with open(full, "rb") as f:
                    out[zip_name(rel)] = f.read()
    return out


def browse_script(url: str, snapshot: str, src: Path, downloads: Path, profile: Path,
                  shots: Path) -> list[dict]:
    """The whole browser session (blocking); returns the browser console log. Screenshots of
    the overview, the host page and the browse view land in `shots`, for people to look at."""
    d = chrome(downloads, profile)
    w = WebDriverWait(d, WAIT)

    def find(selector: str) -> WebElement:
        return w.until(EC.presence_of_element_located((By.CSS_SELECTOR, selector)))

    def visible(selector: str) -> WebElement:
        return w.until(EC.visibility_of_element_located((By.CSS_SELECTOR, selector)))

    def at_folder(path: bytes | str) -> None:
        find(f"section#browse[data-q={css(q(path))}]")

    def enter(selector: str) -> None:
        find(selector).send_keys(Keys.ENTER)

    try:
        d.get(url + "/")
        # --- sign in with the keyboard; a wrong password first -------------------------
        name = visible("#login-name")
        name.send_keys("alice")
        d.find_element(By.ID, "login-password").send_keys("not the password", Keys.ENTER)
        w.until(lambda d: "wrong account name or password"
                in d.find_element(By.ID, "login-error").text)
        assert not d.find_element(By.ID, "login-view").get_attribute("hidden")
        password = d.find_element(By.ID, "login-password")
        password.clear()
        password.send_keys(PASSWORD, Keys.ENTER)

        # --- overview: the host is there; Enter on its link ----------------------------
        find("#hosts-table")
        assert d.find_element(By.ID, "account-name").text == "alice"
        assert d.find_element(By.ID, "appliance-serial").text.startswith("Serial ")
        row = find('#hosts-table tr[data-host="web01"]')
        assert "ok" in row.text
        assert d.save_screenshot(str(shots / "overview.png"))
        enter('a.host-link[data-host="web01"]')

        # --- host: its backups; Enter on the one to open --------------------------------
        find("#snapshots-table")
        find("#schedule")
        assert d.save_screenshot(str(shots / "host.png"))

        # --- scheduled backups on the host page: save a plan, then "Back up now" --------
        # its backups came from rdr-agent on the command line; no agent service polled yet
        assert "Agent command line only" in find("#schedule-status").text
        find("#plan-summary").click()  # the plan is collapsed below the backups
        paths = visible("#plan-paths")
        paths.clear()
        paths.send_keys("/srv/www")
        assert "8-5-4" in Select(find("#plan-policy")).first_selected_option.text  # default
        Select(find("#plan-policy")).select_by_value("30-0-0")
        zone = find("#plan-timezone")
        zone.send_keys("Mars/Olympus")
        find("#plan-one-fs").click()
        d.find_element(By.ID, "plan-save").click()
        # A refused plan says why beside the field and is not saved (nothing half applied).
        w.until(lambda d: "unknown time zone" in find("#err-timezone").text)
        assert "Not saved" in find("#plan-error").text
        zone.clear()
        zone.send_keys("Europe/Paris")
        find("#plan-dump").send_keys("pg_dump shop")
        d.find_element(By.ID, "plan-save").click()
        w.until(EC.staleness_of(paths))  # saved: the view is drawn again from the appliance
        # Saved, and the change is audited: each field from what to what.
        assert "Saved" in visible("#plan-saved").text
        audit = find("#plan-audit").text
        assert "by account:alice" in audit and "pg_dump shop" in audit, audit
        assert find("#plan-paths").get_attribute("value") == "/srv/www"
        assert Select(find("#plan-policy")).first_selected_option.get_attribute("value") \
            == "30-0-0"
        assert find("#plan-timezone").get_attribute("value") == "Europe/Paris"
        assert find("#plan-one-fs").is_selected()
        assert "(Europe/Paris)" in find("label.field:has(#plan-window)").text
        now = find("#backup-now")
        now.click()
        w.until(EC.staleness_of(now))
        w.until(lambda d: "queued" in " ".join(
            r.text for r in d.find_elements(By.CSS_SELECTOR, "#runs-table tr[data-run]")))
        enter(f'a.snap-link[data-snapshot="{snapshot}"]')
        at_folder("")

        # --- folders down to the source tree, then into docs ----------------------------
        parts = list(src.parts[1:]) + ["docs"]
        for i, part in enumerate(parts):
            enter(f"#listing a.entry-link[data-name={css(part)}]")
            at_folder("/".join(parts[:i + 1]))
        assert d.find_element(By.ID, "page-title").text == str(src / "docs")
        # The hostile name is shown as text, nothing in it ran or became markup.
        names = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#listing .entry-name")]
        assert HOSTILE in names and "readme.txt" in names
        assert not d.find_elements(By.CSS_SELECTOR, "#view img")
        assert d.title != "1"

        # --- the file's details, then download it ---------------------------------------
        enter('#listing a.entry-link[data-name="readme.txt"]')
        visible("#details-download")
        assert d.find_element(By.ID, "details-title").text == "readme.txt"
        assert len(d.find_elements(By.CSS_SELECTOR, "#versions tbody tr")) == 1
        assert "#/host/web01/" in d.current_url and "&file=" in d.current_url
        d.find_element(By.ID, "details-download").send_keys(Keys.ENTER)
        got = wait_download(downloads, "readme.txt")
        assert got.read_bytes() == (src / "docs/readme.txt").read_bytes()
        # Escape closes the dialog and takes the address back to the folder.
        d.switch_to.active_element.send_keys(Keys.ESCAPE)
        w.until(lambda d: not d.execute_script("return document.getElementById('details').open"))
        w.until(lambda d: "&file=" not in d.current_url)
        at_folder(src / "docs")

        # --- the browse view, for people to look at -------------------------------------
        d.execute_script("window.scrollTo(0, 0)")
        assert d.save_screenshot(str(shots / "browse.png"))

        # --- the folder as a zip ---------------------------------------------------------
        enter("#folder-zip")
        archive = wait_download(downloads, f"web01-{snapshot}-docs.zip")
        logs = d.get_log("browser")
    finally:
        d.quit()
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None
        got_zip = {i.filename: (None if i.is_dir() else zf.read(i)) for i in zf.infolist()}
    want = expected_zip(src, "docs")
    assert sorted(got_zip) == sorted(want)
    assert got_zip == want
    return logs


async def test_restore_a_file_and_a_folder_through_the_page(appliance: Appliance,
                                                            tmp_path: Path) -> None:
    Accounts(appliance.store.index).add("alice", PASSWORD)
    token = appliance.add_host("web01")
    # The window is closed now, in the appliance's zone and in the Paris zone the form sets
    # (6 hours apart): the scheduler queues no run beside the page's "Back up now".
    appliance.store.set_window("web01", local_hhmm(timedelta(hours=9)))
    src = make_tree(tmp_path / "src-web01", big_mb=1)
    (src / "docs" / HOSTILE).write_bytes(b"just a file with a nasty name\n")
    rc, out, err = await run(agent_cmd() + ["backup", str(src), "--json"],
                             appliance.env(token, tmp_path / "state"))
    assert rc == 0, err
    snapshot = json.loads(out)["snapshot"]

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    profile = Path(tempfile.mkdtemp(prefix="rdr-chromium-"))
    shots = tmp_path / "shots"
    shots.mkdir()
    try:
        logs = await asyncio.wait_for(asyncio.to_thread(
            browse_script, appliance.url, snapshot, src, downloads, profile, shots), 120)
    except WebDriverException as exc:  # a browser that cannot start is a failure, with why
        raise AssertionError(f"browser session failed: {exc.msg}") from exc
    finally:
        shutil.rmtree(profile, ignore_errors=True)

    # What the host page's plan form and "Back up now" did, as the appliance recorded it.
    plan = wiring.plans(appliance.store).get("web01")
    assert (plan.paths, plan.timezone, plan.one_file_system) == (["/srv/www"], "Europe/Paris",
                                                                 True)
    audit = wiring.plans(appliance.store).audit("web01")
    assert {a["who"] for a in audit} == {"account:alice"}
    assert ("dump_command", None, "pg_dump shop") in [(a["field"], a["old"], a["new"])
                                                      for a in audit]
    assert appliance.store.index.host_policy("web01") == "30-0-0"
    (now_run,) = wiring.runs(appliance.store).list("web01")
    assert (now_run.kind, now_run.state, now_run.requested_by) == ("manual", "queued",
                                                                   "page:alice")
    for shot in sorted(shots.iterdir()):
        print(f"screenshot: {shot}")
        png = shot.read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert width >= 800 and height >= 500
    assert {p.name for p in shots.iterdir()} == {"overview.png", "host.png", "browse.png"}
    # Nothing the page does is blocked by its own Content-Security-Policy, nothing throws.
    problems = [e["message"] for e in logs
                if "Content Security Policy" in e["message"]
                or (e["level"] == "SEVERE" and e.get("source") != "network")]
    assert not problems, problems
