"""The console for daily work, in Chromium: live output, folded results, paging and
filters, the schedule form's messages, confirmations, accessibility (axe-core) and the
layout from a phone to a wide screen."""

from __future__ import annotations

import re
import secrets
import subprocess

import pytest
from helpers import wait_until
from jobtools import HOST_NUMBER
from playwright.sync_api import expect
from test_web_browser import PAGE_TIMEOUT_MS, SCREENSHOTS, chromium  # noqa: F401
from webtools import ROOT, Web, make_account

from opsq import jobs

API = "/api/v1"
AXE_DIR = ROOT / "tests" / "axe"
AXE = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
#: axe's impact levels this console must have none of.
BLOCKING = ("serious", "critical")


@pytest.fixture(scope="module")
def accounts(services):
    return {role: make_account(role, "con") for role in ("viewer", "operator", "admin")}


@pytest.fixture(scope="module")
def web(accounts, worker, tmp_path_factory):
    w = Web(tmp_path_factory.mktemp("web") / "web.log")
    yield w
    w.stop()


@pytest.fixture(scope="module")
def axe():
    if not AXE.exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=AXE_DIR,
                       check=True, capture_output=True, timeout=300)
    return AXE.read_text()


def page_as(chromium, web, account, width=1400, height=900, dark=False):  # noqa: F811
    context = chromium.new_context(viewport={"width": width, "height": height},
                                   color_scheme="dark" if dark else "light")
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.goto(web.url + "/login")
    page.fill("#name", account.name)
    page.fill("#password", account.password)
    page.click("button[type=submit]")
    page.wait_for_url(web.url + "/jobs")
    return page


def submit(web, account, **job) -> str:
    with web.client(account.token) as c:
        r = c.post(f"{API}/jobs", json=job)
        assert r.status_code == 201, r.text
        return r.json()["job_id"]


def _wider(page, width: int) -> list[str]:
    """The elements that reach past the window's right edge (what makes it scroll)."""
    return page.evaluate("""(w) => Array.from(document.querySelectorAll("body *"))
        .filter(e => e.getBoundingClientRect().right > w)
        .map(e => e.tagName + "#" + e.id + "." + e.className).slice(0, 10)""", width)


def saved(page, web) -> None:
    """Save the schedule form; fail with what the form said if it did not go back to the
    list."""
    page.click("#save")
    page.wait_for_load_state()
    if page.locator("#error").count():
        raise AssertionError(page.locator("#error").text_content())
    page.wait_for_url(web.url + "/schedules")


def test_a_running_host_shows_its_output_as_it_comes_and_cancel_asks_first(
        chromium, web, accounts):  # noqa: F811
    job_id = submit(web, accounts["operator"], pattern="host01",
                    command="echo first-line; sleep 2; echo second-line; sleep 60")
    page = page_as(chromium, web, accounts["operator"])
    page.goto(f"{web.url}/jobs/{job_id}")
    row = page.locator("#hosts tbody tr[data-host=host01]")
    # The second line, while the host still runs: not once it ended.
    expect(row.locator("td").nth(4)).to_have_text("second-line")
    expect(row.locator("td").nth(1)).to_have_text("running")
    expect(row.locator(".elapsed")).to_have_text(re.compile(r"^\d+ s$"))
    before = int(row.locator(".elapsed").text_content().split()[0])
    page.wait_for_timeout(2000)
    assert int(row.locator(".elapsed").text_content().split()[0]) > before
    # Cancel asks first: dismissed, nothing happens.
    page.once("dialog", lambda d: d.dismiss())
    page.click("#cancel")
    page.wait_for_timeout(1000)
    assert jobs.summary(job_id, with_hosts=False).status.value == "running"
    page.once("dialog", lambda d: d.accept())
    page.click("#cancel")
    expect(page.locator("#job-status")).to_have_text("cancelled")


def test_the_job_page_folds_hosts_by_output(chromium, web, accounts):  # noqa: F811
    job_id = submit(web, accounts["operator"], pattern="fleet",
                    command=f"{HOST_NUMBER}; if [ $((n % 2)) = 1 ]; then "
                            "printf '\\033[31modd\\033[0m\\n'; exit 3; fi; echo even")
    wait_until(lambda: jobs.summary(job_id, with_hosts=False).finished, 60, "the job")
    page = page_as(chromium, web, accounts["viewer"])
    page.goto(f"{web.url}/jobs/{job_id}")
    groups = page.locator("#groups details.group")
    expect(groups).to_have_count(2)
    assert groups.nth(0).locator("summary strong").text_content() == "host[01,03,05]"
    assert "(3)" in groups.nth(0).locator("summary").text_content()
    assert "exit 3" in groups.nth(0).locator("summary").text_content()
    # The colour escape is a class, never raw text.
    odd = groups.nth(0).locator("pre.group-stdout")
    assert odd.text_content() == "odd\n"
    assert odd.locator("span.ansi-31").count() == 1
    assert groups.nth(1).locator("summary strong").text_content() == "host[02,04,06]"
    expect(page.locator("#job-counts [data-status=failed]")).to_have_text("3 failed")
    expect(page.locator("#job-counts [data-status=ok]")).to_have_text("3 ok")
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(SCREENSHOTS / f"web-job-{width}.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= width, _wider(page, width)
    # Search in the output, and the host's history across jobs.
    page.fill("#q", "EVEN")
    page.click("#search-form button")
    expect(page.locator("#hosts tbody tr")).to_have_count(3)
    page.click("#hosts tbody tr >> nth=0 >> a")
    page.click("#host-history")
    expect(page.locator("#history tbody tr").first).to_contain_text(job_id[:8])


def test_the_jobs_list_filters_by_substring_refuses_unknown_status_and_pages(
        chromium, web, accounts):  # noqa: F811
    tag = secrets.token_hex(3)
    for i in range(55):
        jobs.create(jobs.JobSpec(command=f"true # {i}", pattern="host01",
                                 submitted_by=f"web:pager-{tag}"))
    page = page_as(chromium, web, accounts["viewer"])
    page.goto(f"{web.url}/jobs?submitter=PAGER-{tag}")
    expect(page.locator("#jobs tbody tr")).to_have_count(50)
    page.click("#older")
    expect(page.locator("#jobs tbody tr")).to_have_count(5)
    page.click("#newer")
    expect(page.locator("#jobs tbody tr")).to_have_count(50)
    page.goto(f"{web.url}/jobs?status=finished")
    expect(page.locator("#filter-error")).to_contain_text("unknown status 'finished'")
    with web.client(accounts["viewer"].token) as c:
        assert len(c.get(f"{API}/jobs", params={"submitter": f"pager-{tag}",
                                                "limit": 50, "offset": 50}).json()) == 5
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(f"{web.url}/jobs")
        page.screenshot(path=str(SCREENSHOTS / f"web-jobs-{width}.png"), full_page=True)


def test_the_schedule_form_names_the_field_at_fault_in_its_own_words(
        chromium, web, accounts):  # noqa: F811
    page = page_as(chromium, web, accounts["operator"])
    page.goto(f"{web.url}/schedules/new")
    # A task schedule's fields are not an operator's, and hidden with the other kind.
    expect(page.locator("#task-fields")).to_have_count(0)
    page.fill("#name", f"form-{secrets.token_hex(3)}")
    page.fill("#expression", "61 2 * * *")
    page.fill("#pattern", "fleet")
    page.click("#save")
    expect(page.locator("#error-command")).to_have_text("give the command to run")
    page.fill("#command", "uptime")
    page.click("#save")
    expect(page.locator("#error-expression")).to_contain_text("minute 61 is out of range (0-59)")
    page.fill("#expression", "0 2 * * *")
    page.click("#job-options summary")
    page.fill("#pause", "5")
    page.click("#save")
    try:
        expect(page.locator("#error-pause")).to_be_visible()
    except AssertionError:
        raise AssertionError(f"no message by the pause field; the form said: "
                             f"{page.locator('#error').all_text_contents()}") from None
    problem = page.locator("#error-pause").text_content()
    assert "“Batch size”" in problem and "--" not in problem
    page.fill("#batch_size", "25%")
    page.fill("#max_fail", "1")
    page.check("#become")
    page.click("#save")
    page.wait_for_url(web.url + "/schedules")
    # The interval hides the zone; the built-in upkeep cannot be deleted from the page.
    page.goto(f"{web.url}/schedules/new")
    page.select_option("#when_kind", "every")
    expect(page.locator("#tz-field")).to_be_hidden()
    page.goto(f"{web.url}/schedules")
    expect(page.locator("#schedules tr[data-name='opsq-retention'] .act-delete")).to_have_count(0)
    with web.client(accounts["admin"].token) as c:
        r = c.delete(f"{API}/schedules/opsq-retention")
        assert r.status_code == 422 and "built-in" in r.json()["error"], r.text


def test_the_console_has_no_serious_accessibility_violation(
        chromium, web, accounts, axe):  # noqa: F811
    job_id = submit(web, accounts["operator"], pattern="host0[1-2]", command="echo hi")
    wait_until(lambda: jobs.summary(job_id, with_hosts=False).finished, 60, "the job")
    found = {}
    for dark in (False, True):
        page = page_as(chromium, web, accounts["admin"], dark=dark)
        for path in ("/jobs", f"/jobs/{job_id}", "/run", "/schedules/new", "/hosts",
                     "/schedules", "/hosts/host01"):
            page.goto(web.url + path)
            page.add_script_tag(content=axe)
            violations = page.evaluate(
                "async (levels) => (await axe.run(document)).violations"
                ".filter(v => levels.includes(v.impact))"
                ".map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '))",
                list(BLOCKING))
            if violations:
                found[(path, "dark" if dark else "light")] = violations
    assert not found


def test_the_jobs_list_keeps_itself_current_and_times_say_how_long_ago(
        chromium, web, accounts):  # noqa: F811
    page = page_as(chromium, web, accounts["viewer"])
    page.goto(f"{web.url}/jobs")
    # A job submitted after the page was drawn appears, and ends, without a reload.
    job_id = submit(web, accounts["operator"], pattern="host01", command="sleep 2",
                    batch_size=1)  # a number where a number is natural
    row = page.locator(f"#jobs tbody tr[data-job='{job_id}']")
    expect(row.locator(".status")).to_have_text("succeeded", timeout=60_000)
    when = row.locator("time[data-rel]")
    assert when.get_attribute("datetime").startswith("20")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC",
                        when.text_content().split(" (")[0])
    expect(when.locator(".rel")).to_have_text(re.compile(r"^\(\d+ (s|min) ago\)$"))


def test_a_job_downloads_as_json_and_as_a_text_archive(chromium, web, accounts):  # noqa: F811
    import io
    import json
    import tarfile

    job_id = submit(web, accounts["operator"], pattern="host0[1-2]",
                    command="echo out; echo err >&2")
    wait_until(lambda: jobs.summary(job_id, with_hosts=False).finished, 60, "the job")
    page = page_as(chromium, web, accounts["viewer"])
    got = page.request.get(f"{web.url}/jobs/{job_id}/results.json")
    assert got.ok and "attachment" in got.headers["content-disposition"]
    data = json.loads(got.body())
    assert data["job"]["job_id"] == job_id
    assert [(h["host"], h["stdout"], h["stderr"]) for h in data["hosts"]] == [
        ("host01", "out\n", "err\n"), ("host02", "out\n", "err\n")]
    archive = page.request.get(f"{web.url}/jobs/{job_id}/results.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(archive.body()), mode="r:gz") as tar:
        names = sorted(tar.getnames())
        top = f"opsq-job-{job_id[:8]}"
        assert names == sorted([f"{top}/summary.txt"] + [
            f"{top}/{h}/{f}" for h in ("000001-host01", "000002-host02")
            for f in ("stdout.txt", "stderr.txt", "result.txt")])
        assert tar.extractfile(f"{top}/000002-host02/stderr.txt").read() == b"err\n"
    # A viewer's session reads them; no session, no file.
    anonymous = chromium.new_context().request
    assert anonymous.get(f"{web.url}/jobs/{job_id}/results.json", max_redirects=0).status \
        in (303, 401)


def test_the_api_documents_its_token_scheme(web):
    schema = web.client().get(f"{API}/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert [s["scheme"] for s in schemes.values()] == ["bearer"]


def test_the_form_edits_what_it_made_a_task_s_call_and_a_job_s_options(
        chromium, web, accounts):  # noqa: F811
    tag = secrets.token_hex(3)
    page = page_as(chromium, web, accounts["admin"])
    # A registered task: its kwargs are edited in the form.
    page.goto(f"{web.url}/schedules/new")
    page.fill("#name", f"prune-{tag}")
    page.fill("#expression", "0 4 * * *")
    page.select_option("#what", "task")
    expect(page.locator("#fleet-fields")).to_be_hidden()
    page.fill("#task", "opsq.prune")
    page.fill("#kwargs", '{"days": 30}')
    saved(page, web)
    page.goto(f"{web.url}/schedules/prune-{tag}/edit")
    assert page.input_value("#kwargs") == '{"days": 30}'
    page.fill("#kwargs", '{"days": 7}')
    saved(page, web)
    with web.client(accounts["admin"].token) as c:
        assert c.get(f"{API}/schedules/prune-{tag}").json()["kwargs"] == {"days": 7}
    # A command with job options: shown again in the form, changed there.
    page.goto(f"{web.url}/schedules/new")
    page.fill("#name", f"roll-{tag}")
    page.fill("#expression", "30 1 * * *")
    page.fill("#command", "uptime")
    page.fill("#pattern", "fleet")
    page.click("#job-options summary")
    page.fill("#batch_size", "2")
    page.fill("#retries", "1")
    page.check("#rerun_safe")
    saved(page, web)
    page.goto(f"{web.url}/schedules/roll-{tag}/edit")
    assert page.input_value("#batch_size") == "2" and page.input_value("#retries") == "1"
    assert page.get_attribute("#command", "placeholder").startswith("uptime")
    page.fill("#batch_size", "50%")
    saved(page, web)
    with web.client(accounts["admin"].token) as c:
        spec = c.get(f"{API}/schedules/roll-{tag}").json()["kwargs"]["spec"]
    assert (spec["command"], spec["pattern"], spec["batch_size"], spec["retries"]) == (
        "uptime", "fleet", "50%", 1)


def test_a_job_page_draws_hosts_that_printed_nothing_yet(chromium, web, accounts):  # noqa: F811
    job_id = submit(web, accounts["operator"], pattern="host0[1-2]", command="sleep 3")
    page = page_as(chromium, web, accounts["viewer"])
    response = page.goto(f"{web.url}/jobs/{job_id}")
    assert response.status == 200, page.content()[:500]
    expect(page.locator("#groups details.group")).to_have_count(1)
    expect(page.locator("#job-status")).to_have_text("succeeded")
