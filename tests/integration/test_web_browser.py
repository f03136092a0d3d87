"""The web console in a real browser (Playwright driving Debian's headless Chromium),
against a real ``opsq web``, worker, beat and sshd fleet."""

from __future__ import annotations

import re
import shutil
import subprocess

import httpx
import pytest
from helpers import wait_until
from playwright.sync_api import expect, sync_playwright
from sqlalchemy import text
from webtools import ROOT, Web, make_account

from opsq.store import db

CHROMIUM = "/usr/bin/chromium"
#: Milliseconds a page gets to show what a test waits for.
PAGE_TIMEOUT_MS = 30_000
SCREENSHOTS = ROOT / "var"


@pytest.fixture(scope="module")
def chromium():
    if not shutil.which("chromium"):
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install "
                       "-y -qq chromium", shell=True, check=True, capture_output=True)
    expect.set_options(timeout=PAGE_TIMEOUT_MS)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def accounts(services):
    return {role: make_account(role, "ui") for role in ("viewer", "operator", "admin")}


@pytest.fixture(scope="module")
def web(accounts, worker, tmp_path_factory):
    w = Web(tmp_path_factory.mktemp("web") / "web.log",
            {"OPSQ_WEB_FLOWER_URL": "http://flower.example:5555"})
    yield w
    w.stop()


def logged_in(chromium, web, account):
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.goto(web.url + "/jobs")
    assert page.url.startswith(web.url + "/login")
    page.fill("#name", account.name)
    page.fill("#password", account.password)
    page.click("button[type=submit]")
    page.wait_for_url(web.url + "/jobs")
    assert page.text_content("#whoami") == f"{account.name} ({account.role})"
    return page


def test_run_page_submits_and_the_job_page_turns_succeeded(chromium, web, accounts):
    page = logged_in(chromium, web, accounts["operator"])
    page.click("#nav-run")
    page.fill("#command", "echo '<b>bold</b>' from $(hostname -s)")
    page.fill("#pattern", "fleet[0:2]")
    expect(page.locator("#preview")).to_have_text("3 host(s): host01, host02, host03")
    page.fill("#timeout", "30")
    page.click("#submit")
    page.wait_for_url(re.compile(r".*/jobs/[0-9a-f-]{36}$"))
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#job-status")).to_have_text("succeeded")
    rows = page.locator("#hosts tbody tr")
    assert rows.count() == 3
    assert rows.first.locator("td").nth(1).text_content() == "ok"
    # host output is shown as text: the <b> is not markup
    assert rows.first.locator("td").nth(4).text_content().startswith("<b>bold</b> from")
    assert page.locator("#hosts b").count() == 0
    assert page.get_attribute("#flower-link", "href") == \
        f"http://flower.example:5555/task/{job_id}"
    page.screenshot(path=str(SCREENSHOTS / "web-job.png"), full_page=True)
    page.click("#hosts tbody tr >> nth=0 >> a")
    assert page.text_content("#stdout").startswith("<b>bold</b> from ")
    with db.session_scope() as s:
        entry = s.execute(text("SELECT \"user\", address FROM audit WHERE action = "
                               "'job.submit' AND target = :j"), {"j": job_id}).one()
    assert tuple(entry) == (accounts["operator"].name, "127.0.0.1")


def test_schedule_made_in_the_form_is_fired_by_beat(chromium, web, accounts, start_beat):
    start_beat("webbeat").wait_leading()
    page = logged_in(chromium, web, accounts["operator"])
    page.goto(web.url + "/schedules/new")
    page.fill("#name", "ui-every")
    page.select_option("#when_kind", "every")
    page.fill("#expression", "0s")
    page.fill("#command", "uptime")
    page.fill("#pattern", "fleet")
    page.click("#save")
    assert "interval '0s' is shorter than 1 s" in page.text_content("#error")
    assert page.input_value("#command") == "uptime"
    page.fill("#expression", "2s")
    page.click("#save")
    page.wait_for_url(web.url + "/schedules")
    row = page.locator("#schedules tr[data-name='ui-every']")
    assert "every 2s" in row.text_content()
    job_link = wait_until(lambda: _schedule_job(page, web), 60, "beat to fire the schedule")
    page.screenshot(path=str(SCREENSHOTS / "web-schedules.png"), full_page=True)
    page.goto(web.url + job_link)
    expect(page.locator("#job-status")).to_have_text("succeeded")
    page.goto(web.url + "/schedules")
    page.click("#schedules tr[data-name='ui-every'] .act-disable")
    assert "no" in page.locator("#schedules tr[data-name='ui-every'] td").nth(5).text_content()
    page.once("dialog", lambda d: d.accept())
    page.click("#schedules tr[data-name='ui-every'] .act-delete")
    page.wait_for_selector("#schedules tr[data-name='ui-every']", state="detached")


def _schedule_job(page, web):
    page.goto(web.url + "/schedules")
    link = page.locator("#schedules tr[data-name='ui-every'] a.mono")
    return link.get_attribute("href") if link.count() else None


def test_a_viewer_has_no_run_button_and_gets_403(chromium, web, accounts):
    page = logged_in(chromium, web, accounts["viewer"])
    assert page.locator("#nav-run").count() == 0
    page.goto(web.url + "/schedules")
    assert page.locator("#new-schedule").count() == 0
    assert page.locator(".act-run").count() == 0
    response = page.goto(web.url + "/run")
    assert response.status == 403
    assert "needs the operator role" in page.text_content("#error")
    # the form's endpoint refuses a viewer even with a valid CSRF token
    csrf = _csrf(page)
    refused = page.request.post(web.url + "/run", form={"csrf": csrf, "command": "true",
                                                        "pattern": "fleet"})
    assert refused.status == 403
    assert page.goto(web.url + "/audit").status == 403


def _csrf(page) -> str:
    page.goto(page.url.split("/", 3)[0] + "//" + page.url.split("/")[2] + "/jobs")
    return page.get_attribute("input[name=csrf]", "value")


def test_a_wrong_csrf_token_is_refused_and_nothing_is_done(chromium, web, accounts):
    page = logged_in(chromium, web, accounts["operator"])
    page.goto(web.url + "/run")
    page.fill("#command", "true")
    page.fill("#pattern", "fleet")
    page.eval_on_selector("#run-form input[name=csrf]", "e => e.value = 'forged'")
    before = _jobs()
    with page.expect_response(web.url + "/run") as answer:
        page.click("#submit")
    assert answer.value.status == 403
    assert "CSRF token is missing or wrong" in page.text_content("#error")
    missing = page.request.post(web.url + "/run", form={"command": "true", "pattern": "fleet"})
    assert missing.status == 403
    assert _jobs() == before


def _jobs() -> int:
    with db.session_scope() as s:
        return s.execute(text("SELECT count(*) FROM jobs")).scalar()


def test_logins_are_rate_limited_and_audited(web, accounts):
    admin = accounts["admin"]
    with httpx.Client(base_url=web.url) as c:
        def attempt(password: str) -> int:
            csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
            return c.post("/login", data={"csrf": csrf, "name": admin.name,
                                          "password": password}).status_code

        assert [attempt("wrong password") for _ in range(5)] == [401] * 5
        assert attempt(admin.password) == 429  # even the right one, for a minute
    with db.session_scope() as s:
        actions = s.execute(text("SELECT action, address FROM audit WHERE target = :u "
                                 "ORDER BY id"), {"u": admin.name}).all()
    assert [a for a, _ in actions if a.startswith("login")] == \
        ["login.failure"] * 5 + ["login.blocked"]
    assert {addr for _, addr in actions if addr} == {"127.0.0.1"}
