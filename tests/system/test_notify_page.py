"""The page's Notifications view in a real browser (headless Chromium): sign in, open
Notifications from the top bar, "send a test" to the configured SMTP target (a real aiosmtpd
server with STARTTLS and AUTH), see it delivered and listed; the strict CSP blocks nothing."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from appliance.accounts import Accounts
from appliance.daemon import Daemon
from appliance.notify.settings import parse_notify

from ..conftest import Appliance, SecretScan, make_config
from ..mailserver import USER, MailServer, make_pki, secret_file
from .test_web_browser import CHROMEDRIVER, CHROMIUM, WAIT, chrome

PASSWORD = "correct horse battery"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs /usr/bin/chromium and /usr/bin/chromedriver")


@pytest.fixture
async def setup(tmp_path: Path, secret_scan: SecretScan
                ) -> AsyncIterator[tuple[Appliance, MailServer, str]]:
    smtp_password = "smtp-" + secrets.token_urlsafe(18)
    secret_scan.watch(smtp_password)
    mail = MailServer(make_pki(tmp_path / "pki", "page"), smtp_password)
    mail.start()
    data = tmp_path / "appliance"
    cfg = make_config(data)
    cfg.notify = parse_notify({"poll_seconds": 60.0, "smtp": [{
        "name": "office", "host": "127.0.0.1", "port": mail.port, "from": "rdr@appliance.test",
        "to": ["ops@customer.test"], "username": USER, "ca_file": str(mail.pki.ca),
        "password_file": secret_file(tmp_path / "smtp.pass", smtp_password)}]})
    daemon = Daemon(cfg)
    await daemon.start()
    try:
        yield Appliance.of(daemon, data), mail, smtp_password
    finally:
        await daemon.stop()
        mail.stop()


def page_script(url: str, profile: Path, downloads: Path) -> tuple[list[dict], str, str]:
    d = chrome(downloads, profile)
    w = WebDriverWait(d, WAIT)
    try:
        d.get(url + "/")
        w.until(EC.visibility_of_element_located((By.ID, "login-name"))).send_keys("alice")
        d.find_element(By.ID, "login-password").send_keys(PASSWORD, Keys.ENTER)
        w.until(EC.element_to_be_clickable((By.ID, "nav-notify"))).click()
        w.until(EC.presence_of_element_located((By.ID, "notify-empty")))
        w.until(EC.element_to_be_clickable(
            (By.CSS_SELECTOR, '#notify-targets button[data-target="office"]'))).click()
        w.until(lambda d: "Test delivered to office." in d.find_element(By.ID, "status").text)
        row = w.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#notify-log tbody tr")))
        return d.get_log("browser"), row.text, d.find_element(By.ID, "notify-counts").text
    finally:
        d.quit()


async def test_send_a_test_from_the_page(setup: tuple[Appliance, MailServer, str],
                                         tmp_path: Path) -> None:
    app, mail, smtp_password = setup
    Accounts(app.store.index).add("alice", PASSWORD)
    profile = Path(tempfile.mkdtemp(prefix="rdr-chromium-"))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    try:
        logs, row, counts = await asyncio.wait_for(asyncio.to_thread(
            page_script, app.url, profile, downloads), 120)
    except WebDriverException as exc:
        raise AssertionError(f"browser session failed: {exc.msg}") from exc
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert "office" in row and "sent" in row and "ops@customer.test" in row
    assert counts.startswith("1 sent, 0 waiting")
    [got] = mail.received
    assert "test message" in got.message["Subject"]
    assert smtp_password.encode() not in got.data
    problems = [e["message"] for e in logs
                if "Content Security Policy" in e["message"]
                or (e["level"] == "SEVERE" and e.get("source") != "network")]
    assert not problems, problems


def add_target_script(url: str, profile: Path, downloads: Path, port: int, ca: str,
                      smtp_password: str) -> tuple[list[dict], str, str]:
    """Add an SMTP target through the form (a wrong field first: marked, nothing saved),
    send it a test, then remove it."""
    d = chrome(downloads, profile)
    w = WebDriverWait(d, WAIT)
    try:
        d.get(url + "/")
        w.until(EC.visibility_of_element_located((By.ID, "login-name"))).send_keys("alice")
        d.find_element(By.ID, "login-password").send_keys(PASSWORD, Keys.ENTER)
        w.until(EC.element_to_be_clickable((By.ID, "nav-notify"))).click()
        w.until(EC.element_to_be_clickable((By.ID, "notify-add"))).click()
        w.until(EC.visibility_of_element_located((By.ID, "notify-name"))).send_keys("page-mail")
        d.find_element(By.ID, "notify-host").send_keys("127.0.0.1")
        d.find_element(By.ID, "notify-port").clear()
        d.find_element(By.ID, "notify-port").send_keys(str(port))
        d.find_element(By.ID, "notify-from").send_keys("not-an-address")
        d.find_element(By.ID, "notify-recipients").send_keys("page@customer.test")
        d.find_element(By.ID, "notify-username").send_keys(USER)
        d.find_element(By.ID, "notify-password").send_keys(smtp_password)
        d.find_element(By.ID, "notify-ca-file").send_keys(ca)
        d.find_element(By.ID, "notify-save").click()
        w.until(lambda d: d.find_element(By.ID, "err-notify-from").text)
        refused = d.find_element(By.ID, "notify-form-error").text
        d.find_element(By.ID, "notify-from").clear()
        d.find_element(By.ID, "notify-from").send_keys("rdr@appliance.test")
        d.find_element(By.ID, "notify-save").click()
        w.until(EC.element_to_be_clickable(
            (By.CSS_SELECTOR, '#notify-targets button[data-target="page-mail"]'))).click()
        w.until(lambda d: "Test delivered to page-mail." in d.find_element(By.ID, "status").text)
        listed = d.find_element(By.ID, "notify-target-list").text
        w.until(EC.element_to_be_clickable(
            (By.CSS_SELECTOR, 'button[data-remove="page-mail"]'))).click()
        w.until(EC.alert_is_present()).accept()
        w.until(lambda d: "Target page-mail removed." in d.find_element(By.ID, "status").text)
        return d.get_log("browser"), refused, listed
    finally:
        d.quit()


async def test_add_a_target_on_the_page_and_send_it_a_test(
        setup: tuple[Appliance, MailServer, str], tmp_path: Path) -> None:
    app, mail, smtp_password = setup
    Accounts(app.store.index).add("alice", PASSWORD)
    profile = Path(tempfile.mkdtemp(prefix="rdr-chromium-"))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    try:
        logs, refused, listed = await asyncio.wait_for(asyncio.to_thread(
            add_target_script, app.url, profile, downloads, mail.port, str(mail.pki.ca),
            smtp_password), 120)
    except WebDriverException as exc:
        raise AssertionError(f"browser session failed: {exc.msg}") from exc
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert refused.startswith("Not saved: 1 field needs a change"), refused
    assert "page-mail" in listed and "this page" in listed and smtp_password not in listed
    [got] = mail.received
    assert got.message["To"] == "page@customer.test"
    assert "test message" in got.message["Subject"]
    assert app.store.index.query("SELECT name FROM notify_targets") == []
    problems = [e["message"] for e in logs
                if "Content Security Policy" in e["message"]
                or (e["level"] == "SEVERE" and e.get("source") != "network")]
    assert not problems, problems
