"""Schedules end to end: real beat processes, a real worker, PostgreSQL and RabbitMQ."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from helpers import ROOT, wait_until
from sqlalchemy import text

from opsq import jobs, schedules
from opsq.schedules.beat import fire_due
from opsq.store import db
from opsq.store.models import ScheduleKind

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture(autouse=True)
def clean_schedules():
    # Each test starts with only the built-in schedules, disabled so they stay out of
    # the counts.
    with db.session_scope() as s:
        s.execute(text("DELETE FROM schedules WHERE name NOT IN (:a, :b)"),
                  {"a": schedules.RETENTION_SCHEDULE, "b": schedules.RECONCILE_SCHEDULE})
        s.execute(text("UPDATE schedules SET enabled = false, next_run_at = NULL"))
    yield


def jobs_of(name: str) -> list[dict]:
    with db.session_scope() as s:
        rows = s.execute(text(
            "SELECT id, status, host_count, ok_count, submitted_at FROM jobs "
            "WHERE schedule = :n ORDER BY submitted_at"), {"n": name}).all()
    return [dict(r._mapping) for r in rows]




def add_every(name: str, every: str, command: str = "echo tick", pattern: str = "odd"):
    # These tests are about firing, not overlap: a job still running when the next
    # firing is due (a loaded machine, intervals of a second) must not skip it.
    return schedules.add(name, schedules.timing(every=every), schedules.SUBMIT_TASK,
                         kwargs=schedules.fleet_kwargs(command, pattern),
                         overlap="allow")


def test_every_2s_fires_real_jobs_then_disable_edit_and_remove_take_effect(
        start_beat, opsq_cli):
    add_every("tick", "2s")
    beat = start_beat()
    beat.wait_leading()
    fired = wait_until(lambda: len(jobs_of("tick")) >= 3 and jobs_of("tick"), 12,
                       "three firings")
    done = wait_until(
        lambda: [j for j in jobs_of("tick") if j["status"] == "succeeded"][:2], 20,
        "two finished jobs")
    for j in done:
        assert (j["host_count"], j["ok_count"]) == (3, 3)
        rows = jobs.host_results(j["id"])
        assert {r["stdout"] for r in rows} == {"tick\n"}
    gaps = [(b["submitted_at"] - a["submitted_at"]).total_seconds()
            for a, b in zip(fired, fired[1:], strict=False)]
    assert all(0.5 < g < 4.5 for g in gaps[:2]), gaps

    # editing the interval takes effect without restarting beat
    out = opsq_cli("schedule", "edit", "tick", "--every", "1s")
    assert out.returncode == 0, out.stderr
    before = len(jobs_of("tick"))
    time.sleep(4.5)
    assert len(jobs_of("tick")) - before >= 3

    # disabling stops the firings within 5 s
    out = opsq_cli("schedule", "disable", "tick")
    assert out.returncode == 0, out.stderr
    time.sleep(1.5)
    settled = len(jobs_of("tick"))
    time.sleep(4)
    assert len(jobs_of("tick")) == settled

    # enabling resumes from now, without a burst of the runs missed while disabled
    assert opsq_cli("schedule", "enable", "tick").returncode == 0
    wait_until(lambda: len(jobs_of("tick")) > settled, 5, "a firing after enable")
    time.sleep(0.5)
    assert len(jobs_of("tick")) <= settled + 1

    # removing stops them too; the jobs stay, with the schedule's name
    assert opsq_cli("schedule", "rm", "tick").returncode == 0
    time.sleep(1.5)
    settled = len(jobs_of("tick"))
    time.sleep(4)
    assert len(jobs_of("tick")) == settled > 0


def test_two_beats_fire_once_per_due_time_and_standby_takes_over(start_beat):
    add_every("duo", "1s", command="true", pattern="host01")
    a, b = start_beat("a"), start_beat("b")
    wait_until(lambda: a.leading or b.leading, 30, "a leader")
    time.sleep(1)
    assert [a.leading, b.leading].count(True) == 1
    leader, standby = (a, b) if a.leading else (b, a)
    # Counted over a window of its own, so a slow start does not count as a burst: one
    # firing a second, by one beat (two beats firing would make about twice as many).
    before = schedules.get("duo").run_count
    time.sleep(4)
    runs = schedules.get("duo").run_count
    ids = [j["id"] for j in jobs_of("duo")]
    assert 3 <= runs - before <= 5, (before, runs)
    assert len(ids) == len(set(ids))
    assert abs(len(ids) - runs) <= 1  # the last firing's job may not be written yet

    leader.stop(signal.SIGKILL)
    standby.wait_leading(timeout=10)
    count = schedules.get("duo").run_count
    wait_until(lambda: schedules.get("duo").run_count >= count + 2, 10,
               "firings from the new leader")


def test_missed_runs_fire_once_not_in_a_burst():
    row = add_every("late", "2s", command="true", pattern="host01")
    cron = schedules.add("late-cron", schedules.timing(cron="* * * * *"),
                         schedules.SUBMIT_TASK,
                         kwargs=schedules.fleet_kwargs("true", "host01"))
    now = datetime.now(UTC)
    with db.session_scope() as s:
        # as if beat had been down for ten minutes
        s.execute(text("UPDATE schedules SET next_run_at = :t WHERE id IN (:a, :b)"),
                  {"t": now - timedelta(minutes=10), "a": row.id, "b": cron.id})
    assert sorted(fire_due(now)) == ["late", "late-cron"]
    assert fire_due(now) == []
    late, late_cron = schedules.get("late"), schedules.get("late-cron")
    assert late.run_count == late_cron.run_count == 1
    assert now < late.next_run_at <= now + timedelta(seconds=2)
    assert late_cron.next_run_at == (now + timedelta(minutes=1)).replace(second=0,
                                                                           microsecond=0)
    wait_until(lambda: len(jobs_of("late")) == 1 and len(jobs_of("late-cron")) == 1, 15,
               "one job each")


def test_a_firing_sent_twice_makes_one_job():
    row = add_every("twice", "1h", command="true", pattern="host01")
    due = datetime.now(UTC).replace(microsecond=0)
    task_id = schedules.firing_id(row.id, due)
    schedules.send(row, task_id=task_id)
    schedules.send(row, task_id=task_id)  # a failed-over beat re-sending the same firing
    summary = jobs.wait(wait_until(lambda: jobs_of("twice") and task_id, 15, "the job"),
                        timeout=30)
    assert summary.succeeded
    time.sleep(1)
    assert [j["id"] for j in jobs_of("twice")] == [task_id]


def test_one_off_fires_once_and_disables_itself(start_beat):
    at = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    schedules.add("oneoff", schedules.timing(at=at), schedules.SUBMIT_TASK,
                  kwargs=schedules.fleet_kwargs("echo once", "host02"))
    start_beat().wait_leading()
    wait_until(lambda: jobs_of("oneoff"), 15, "the one-off job")
    time.sleep(3)
    assert len(jobs_of("oneoff")) == 1
    row = schedules.get("oneoff")
    assert (row.enabled, row.next_run_at, row.run_count) == (False, None, 1)


@pytest.mark.parametrize("args, message", [
    (["--cron", "61 * * * *", "-t", "odd", "--", "true"], "invalid cron line"),
    (["--cron", "0 2 * * * *", "-t", "odd", "--", "true"], "five fields"),
    (["--cron", "0 9 * * *", "--tz", "Mars/Olympus", "-t", "odd", "--", "true"],
     "unknown time zone 'Mars/Olympus'"),
    (["--every", "10x", "-t", "odd", "--", "true"], "invalid interval"),
    (["--every", "0s", "-t", "odd", "--", "true"], "shorter than"),
    (["--at", "tomorrow", "-t", "odd", "--", "true"], "invalid time"),
    (["--at", "2020-01-01T00:00", "-t", "odd", "--", "true"], "in the past"),
    (["--every", "1m", "--task", "no.such.task"], "unknown task 'no.such.task'"),
    (["--every", "1m", "--task", "opsq.prune", "--kwargs", "[1]"], "JSON object"),
    (["--every", "1m", "--task", "opsq.prune", "--args", "{nope"], "not valid JSON"),
    (["--every", "1m", "-t", "nosuchgroup", "--", "true"], "nosuchgroup"),
    (["--every", "1m", "--cron", "* * * * *", "-t", "odd", "--", "true"], "exactly one"),
    (["--every", "1m", "-t", "odd"], "needs -t PATTERN and '-- COMMAND'"),
])
def test_bad_schedule_input_is_refused_and_changes_nothing(opsq_cli, args, message):
    before = [r.name for r in schedules.all_schedules()]
    out = opsq_cli("schedule", "add", "bad", *args)
    assert out.returncode == 2, out.stdout
    assert message in out.stderr
    assert [r.name for r in schedules.all_schedules()] == before


def test_duplicate_name_is_refused(opsq_cli):
    ok = opsq_cli("schedule", "add", "dup", "--every", "1h", "-t", "odd", "--", "true")
    assert ok.returncode == 0, ok.stderr
    again = opsq_cli("schedule", "add", "dup", "--cron", "0 1 * * *", "-t", "even", "--", "ls")
    assert again.returncode == 2 and "already exists" in again.stderr
    row = schedules.get("dup")
    assert (row.kind, row.kwargs["pattern"]) == ("interval", "odd")


def test_cli_list_show_and_run_now(opsq_cli):
    out = opsq_cli("schedule", "add", "disk", "--cron", "0 2 * * *", "--tz", "Europe/Paris",
                   "-t", "even", "--", "df", "-h", "/")
    assert out.returncode == 0, out.stderr
    listed = opsq_cli("schedule", "list").stdout
    assert "disk" in listed and "cron '0 2 * * *' Europe/Paris" in listed
    assert "even: df -h /" in listed
    job_id = opsq_cli("schedule", "run-now", "disk").stdout.strip()
    summary = jobs.wait(wait_until(lambda: jobs_of("disk") and job_id, 15, "the job"),
                        timeout=30)
    assert summary.total == 3 and summary.succeeded
    shown = opsq_cli("schedule", "show", "disk").stdout
    assert job_id in shown and "run_count     1" in shown
    assert job_id in opsq_cli("jobs").stdout


def test_schedule_whose_pattern_stopped_matching_records_an_error_job(tmp_path):
    inv = tmp_path / "inv.ini"
    inv.write_text("[gone]\nlocalhost ansible_connection=local\n")
    row = schedules.add("vanishing", schedules.timing(every="1h"), schedules.SUBMIT_TASK,
                        kwargs=schedules.fleet_kwargs("true", "gone", inventory=str(inv)))
    inv.write_text("[other]\nlocalhost ansible_connection=local\n")
    task_id = schedules.send(row)
    wait_until(lambda: jobs_of("vanishing"), 15, "the error job")
    summary = jobs.summary(task_id)
    assert summary.status == "error" and "gone" in summary.error


def test_birthday_example_greets_the_right_customers_once():
    from devtools.examples import birthday_greetings, ensure_tables

    ensure_tables()  # the example's own tables: opsq's migrations no longer make them
    with db.session_scope() as s:
        s.execute(text("DELETE FROM customers"))
        s.execute(text(
            "INSERT INTO customers (name, phone, birthday) VALUES "
            "('Ada', '+100', '1990-03-14'), ('Bob', '+200', '1985-03-15'), "
            "('Cy', '+300', '2000-03-14'), ('Leap', '+400', '1996-02-29'), "
            "('Feb28', '+500', '1970-02-28')"))
    assert birthday_greetings.delay(on="2026-03-14").get(timeout=30) == \
        {"date": "2026-03-14", "greeted": ["Ada", "Cy"]}
    # a second run the same day sends nothing twice
    assert birthday_greetings.delay(on="2026-03-14").get(timeout=30)["greeted"] == []
    # 29 February birthdays are greeted on 28 February in common years, not in leap years
    assert birthday_greetings.delay(on="2027-02-28").get(timeout=30)["greeted"] == \
        ["Leap", "Feb28"]
    assert birthday_greetings.delay(on="2028-02-28").get(timeout=30)["greeted"] == ["Feb28"]
    with db.session_scope() as s:
        sent = s.execute(text("SELECT count(*), min(message) FROM greetings "
                              "WHERE sent_on = '2026-03-14'")).one()
    assert sent[0] == 2 and sent[1].startswith("Happy birthday, Ada")
    today = date.today().isoformat()
    assert birthday_greetings.delay(tz="UTC").get(timeout=30)["date"] in (
        today, (date.today() + timedelta(days=1)).isoformat(),
        (date.today() - timedelta(days=1)).isoformat())


def test_birthday_task_can_be_scheduled_from_the_cli(opsq_cli):
    out = opsq_cli("schedule", "add", "birthdays", "--cron", "0 9 * * *", "--tz",
                   "Europe/Paris", "--task", "devtools.examples.birthday_greetings",
                   "--kwargs", '{"tz": "Europe/Paris"}')
    assert out.returncode == 0, out.stderr
    row = schedules.get("birthdays")
    assert (row.task, row.kwargs) == ("devtools.examples.birthday_greetings",
                                      {"tz": "Europe/Paris"})
    assert row.next_run_at.astimezone(ZoneInfo("Europe/Paris")).hour == 9


def test_the_example_task_is_not_loaded_unless_asked(opsq_cli):
    """opsq's own task modules leave the example out: without OPSQ_TASK_MODULES naming it,
    no worker knows it, so it cannot be scheduled."""
    from opsq.app import OPSQ_TASK_MODULES

    assert not any("example" in m or "devtools" in m for m in OPSQ_TASK_MODULES)
    out = opsq_cli("schedule", "add", "bdays-unasked", "--every", "1h", "--task",
                   "devtools.examples.birthday_greetings", env={"OPSQ_TASK_MODULES": ""})
    assert out.returncode == 2 and "unknown task" in out.stderr, out.stderr
    assert "birthday" not in out.stderr.split("registered tasks:")[1]
    assert "bdays-unasked" not in {r.name for r in schedules.all_schedules()}


def test_retention_prunes_old_finished_jobs_only():
    from opsq.worker.maintenance_tasks import prune

    old_done = jobs.submit(jobs.JobSpec(command="true", pattern="host01")).get(timeout=30)
    recent = jobs.submit(jobs.JobSpec(command="true", pattern="host01")).get(timeout=30)
    old_running = jobs.create(jobs.JobSpec(command="true", pattern="host02"))
    with db.session_scope() as s:
        s.execute(text("UPDATE jobs SET submitted_at = now() - interval '40 days' "
                       "WHERE id IN (:a, :b)"), {"a": old_done["job_id"], "b": old_running})
        s.execute(text("UPDATE jobs SET status = 'running' WHERE id = :b"), {"b": old_running})
    result = prune.delay(days=30).get(timeout=60)
    assert result["jobs_deleted"] >= 1
    with db.session_scope() as s:
        ids = set(s.execute(text("SELECT id FROM jobs")).scalars())
        orphans = s.execute(text(
            "SELECT count(*) FROM host_results WHERE job_id = :a"),
            {"a": old_done["job_id"]}).scalar()
    assert old_done["job_id"] not in ids and orphans == 0
    assert recent["job_id"] in ids and old_running in ids
    builtin = schedules.get(schedules.RETENTION_SCHEDULE)
    assert (builtin.kind, builtin.expression, builtin.task) == ("cron", "17 3 * * *",
                                                                "opsq.prune")


def test_retention_empties_a_large_job_in_short_transactions(monkeypatch):
    # A job of 100,000 hosts must not be deleted in one transaction: its host rows go a
    # step at a time (PRUNE_ROWS each), then the job.
    from sqlalchemy import event

    from opsq.worker import maintenance_tasks

    monkeypatch.setattr(maintenance_tasks, "PRUNE_ROWS", 2)
    big = jobs.submit(jobs.JobSpec(command="true", pattern="fleet")).get(timeout=30)
    assert big["total"] >= 5
    with db.session_scope() as s:
        s.execute(text("UPDATE jobs SET submitted_at = now() - interval '400 days' "
                       "WHERE id = :a"), {"a": big["job_id"]})
    largest = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().startswith("DELETE FROM host_results"):
            largest.append(cursor.rowcount)

    engine = db.get_engine()
    event.listen(engine, "after_cursor_execute", count)
    try:
        maintenance_tasks.prune(days=300)
    finally:
        event.remove(engine, "after_cursor_execute", count)
    with db.session_scope() as s:
        left = s.execute(text("SELECT count(*) FROM host_results WHERE job_id = :a"),
                         {"a": big["job_id"]}).scalar()
        job = s.execute(text("SELECT count(*) FROM jobs WHERE id = :a"),
                        {"a": big["job_id"]}).scalar()
    assert (left, job) == (0, 0)
    assert len(largest) >= 3 and max(largest) <= 2, largest


@pytest.mark.parametrize("rerun_safe", [False, True])
def test_reconcile_closes_hosts_whose_worker_died(rerun_safe):
    # Hosts left running by a delivery whose lease is gone (its worker died and the
    # broker will not redeliver): the sweep writes them off, or runs them again.
    from opsq.app import app
    from opsq.worker.maintenance_tasks import reconcile

    job_id = jobs.create(jobs.JobSpec(command="echo again", pattern="odd",
                                      rerun_safe=rerun_safe))
    with db.session_scope() as s:
        s.execute(text("UPDATE jobs SET status = 'running', published_at = now() "
                       "WHERE id = :j"), {"j": job_id})
        s.execute(text("UPDATE host_results SET status = 'running', attempt = 1, "
                       "started_at = now(), lease_token = 'gone-with-its-worker' "
                       "WHERE job_id = :j"), {"j": job_id})
    report = reconcile.delay(grace=0).get(timeout=30)
    hosts = ["host01", "host03", "host05"]
    summary = app.AsyncResult(job_id).get(timeout=30)
    if rerun_safe:
        assert report["rerun"] == {job_id: hosts} and report["closed"] == []
        assert summary["succeeded"] and summary["counts"] == {"ok": 3}
        assert {(r["attempt"], r["stdout"]) for r in jobs.host_results(job_id)} == {
            (2, "again\n")}
    else:
        assert report["interrupted"] == {job_id: hosts} and report["closed"] == [job_id]
        assert summary["status"] == "failed" and summary["counts"] == {"interrupted": 3}
        assert {(r["attempt"], r["stdout"] or "") for r in jobs.host_results(job_id)} == {
            (1, "")}
    again = reconcile.delay(grace=0).get(timeout=30)
    assert job_id not in again["interrupted"] and job_id not in again["rerun"]


def test_builtin_schedules_exist():
    rec = schedules.get(schedules.RECONCILE_SCHEDULE)
    assert (rec.kind, float(rec.expression), rec.task) == ("interval", 60.0, "opsq.reconcile")


def test_a_broken_schedule_does_not_hold_back_the_others():
    good = add_every("good", "1h", command="true", pattern="host01")
    bad = add_every("bad", "1h", command="true", pattern="host01")
    past = datetime.now(UTC) - timedelta(seconds=5)
    with db.session_scope() as s:  # a row edited by hand into something unusable
        s.execute(text("UPDATE schedules SET kind = 'cron', expression = 'garbage' "
                       "WHERE id = :b"), {"b": bad.id})
        s.execute(text("UPDATE schedules SET next_run_at = :t WHERE id IN (:a, :b)"),
                  {"t": past, "a": good.id, "b": bad.id})
    assert fire_due(datetime.now(UTC)) == ["good"]
    assert schedules.get("good").run_count == 1
    still = schedules.get("bad")
    assert (still.run_count, still.enabled) == (0, True)
    assert still.next_run_at <= datetime.now(UTC)  # still due: retried next tick


# --- cron lines across daylight-saving changes -------------------------------------------
# Paris leaves summer time on 2026-10-25 (03:00 CEST -> 02:00 CET, 01:00Z: local 02:00-02:59
# happens twice) and enters it on 2026-03-29 (02:00 CET -> 03:00 CEST, 01:00Z: local
# 02:00-02:59 never happens).
FALL_BACK = datetime(2026, 10, 25, 1, 0, tzinfo=UTC)
SPRING_FORWARD = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def firings(expression: str, zone: str, start: datetime, end: datetime) -> list[datetime]:
    """Every due time of a cron line in (start, end], as beat would chain them."""
    when = schedules.Timing(ScheduleKind.CRON, expression, zone)
    out, now = [], start
    while (now := when.next_after(now)) <= end:
        out.append(now)
    return out


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_a_fixed_time_in_the_repeated_hour_fires_once_at_its_first_occurrence():
    # 02:30 happens at 00:30Z (CEST) and again at 01:30Z (CET): fire at the first only.
    assert firings("30 2 * * *", "Europe/Paris", FALL_BACK - timedelta(days=1),
                   FALL_BACK + timedelta(days=2)) == [utc(2026, 10, 25, 0, 30),
                                                      utc(2026, 10, 26, 1, 30)]
    # a time just after the repeated hour is not affected
    assert firings("0 3 * * *", "Europe/Paris", FALL_BACK - timedelta(hours=3),
                   FALL_BACK + timedelta(hours=3)) == [utc(2026, 10, 25, 2, 0)]
    # New York repeats 01:00-01:59 on 2026-11-01 (06:00Z)
    assert firings("15 1 * * *", "America/New_York", utc(2026, 10, 31, 12),
                   utc(2026, 11, 2, 12)) == [utc(2026, 11, 1, 5, 15), utc(2026, 11, 2, 6, 15)]
    # a one-off at a repeated local time is due at its first occurrence
    t = schedules.timing(at="2036-10-26T02:30", tz="Europe/Paris")
    assert t.expression == "2036-10-26T00:30:00+00:00"


def test_a_fixed_time_in_the_skipped_hour_fires_once_when_the_clock_jumps():
    # 02:30 does not exist on 2026-03-29: fire at 03:00 CEST (01:00Z), once, as cron does
    assert firings("30 2 * * *", "Europe/Paris", SPRING_FORWARD - timedelta(days=1),
                   SPRING_FORWARD + timedelta(days=1)) == [utc(2026, 3, 28, 1, 30),
                                                           utc(2026, 3, 29, 1, 0),
                                                           utc(2026, 3, 30, 0, 30)]
    # several skipped times of one line make one firing, not one each
    assert firings("15,45 2 * * *", "Europe/Paris", SPRING_FORWARD - timedelta(hours=3),
                   SPRING_FORWARD + timedelta(hours=3)) == [SPRING_FORWARD]
    # a one-off at a skipped local time is due when the clock jumps too
    t = schedules.timing(at="2036-03-30T02:30", tz="Europe/Paris")
    assert t.expression == "2036-03-30T01:00:00+00:00"


@pytest.mark.parametrize("change", [FALL_BACK, SPRING_FORWARD], ids=["fall", "spring"])
@pytest.mark.parametrize("expression, step", [
    ("0 * * * *", timedelta(hours=1)),
    ("*/30 * * * *", timedelta(minutes=30)),
    ("*/10 * * * *", timedelta(minutes=10)),
])
def test_wildcard_hour_lines_keep_real_time_across_the_change(change, expression, step):
    # An hourly job runs every real hour: none dropped in the skipped hour, none doubled
    # in the repeated one.
    start = change - timedelta(hours=4)
    got = firings(expression, "Europe/Paris", start, change + timedelta(hours=4))
    assert got == [start + step * k for k in range(1, 8 * 3600 // int(step.total_seconds()) + 1)]


def test_beat_fires_once_across_both_changes():
    # fire_due's own bookkeeping, driven with the clock of the changes. The simulated
    # hours pass in seconds while the jobs run in real time: overlap is allowed, or a
    # firing could find the previous hour's job still running and be skipped.
    row = schedules.add("dst", schedules.timing(cron="30 2 * * *", tz="Europe/Paris"),
                        schedules.SUBMIT_TASK, kwargs=schedules.fleet_kwargs("true", "host01"),
                        overlap="allow")
    hourly = schedules.add("dst-hourly", schedules.timing(cron="0 * * * *", tz="Europe/Paris"),
                           schedules.SUBMIT_TASK,
                           kwargs=schedules.fleet_kwargs("true", "host01"), overlap="allow")

    def due_at(name: str, t: datetime) -> None:
        with db.session_scope() as s:
            s.execute(text("UPDATE schedules SET next_run_at = :t WHERE name = :n"),
                      {"t": t, "n": name})

    def fire_through(start: datetime, end: datetime) -> list[tuple[datetime, str]]:
        """Tick once a minute from start to end (a little after each due time)."""
        fired, now = [], start
        while now <= end:
            fired += sorted((now, name) for name in fire_due(now + timedelta(seconds=1)))
            now += timedelta(minutes=1)
        return fired

    due_at("dst", utc(2026, 10, 25, 0, 30))
    due_at("dst-hourly", utc(2026, 10, 24, 23, 0))
    assert fire_through(utc(2026, 10, 24, 22, 30), utc(2026, 10, 25, 3, 30)) == [
        (utc(2026, 10, 24, 23), "dst-hourly"), (utc(2026, 10, 25, 0), "dst-hourly"),
        (utc(2026, 10, 25, 0, 30), "dst"), (utc(2026, 10, 25, 1), "dst-hourly"),
        (utc(2026, 10, 25, 2), "dst-hourly"), (utc(2026, 10, 25, 3), "dst-hourly")]
    assert schedules.get("dst").next_run_at == utc(2026, 10, 26, 1, 30)

    due_at("dst", utc(2026, 3, 29, 1, 0))
    due_at("dst-hourly", utc(2026, 3, 28, 23, 0))
    assert fire_through(utc(2026, 3, 28, 22, 30), utc(2026, 3, 29, 3, 30)) == [
        (utc(2026, 3, 28, 23), "dst-hourly"), (utc(2026, 3, 29, 0), "dst-hourly"),
        (utc(2026, 3, 29, 1), "dst"), (utc(2026, 3, 29, 1), "dst-hourly"),
        (utc(2026, 3, 29, 2), "dst-hourly"), (utc(2026, 3, 29, 3), "dst-hourly")]
    assert schedules.get("dst").next_run_at == utc(2026, 3, 30, 0, 30)
    assert (schedules.get("dst").run_count, schedules.get("dst-hourly").run_count) == (
        row.run_count + 2, hourly.run_count + 10)


# --- bad input at add and edit time -------------------------------------------------------

def schedule_rows() -> list[tuple]:
    with db.session_scope() as s:
        return [tuple(r) for r in s.execute(text("SELECT * FROM schedules ORDER BY id"))]


def assert_refused(out, reason: str) -> None:
    """Exit 2 with one line 'opsq: <reason>' on stderr and no traceback."""
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("opsq: "), out.stderr
    assert reason in lines[0], out.stderr


FLEET = ["-t", "odd", "--", "true"]
#: jobs.submitted_by is 128 characters and holds 'schedule:NAME'.
LONGEST_NAME = 119


@pytest.mark.parametrize("argv, reason", [
    (["big", "--every", "99999999999d", *FLEET], "longer than 366 days"),
    (["year", "--every", "367d", *FLEET], "longer than 366 days"),
    (["huge", "--every", "9" * 400 + "s", *FLEET], "longer than 366 days"),
    (["feb31", "--cron", "0 0 31 2 *", *FLEET], "never fires"),
    (["apr31", "--cron", "0 0 31 4,6,9,11 *", *FLEET], "never fires"),
    (["farat", "--at", "9999-12-31T23:59", "--tz", "America/Los_Angeles", *FLEET],
     "out of range"),
    (["deeptz", "--cron", "0 9 * * *", "--tz", "a/" * 2000 + "b", *FLEET],
     "unknown time zone"),
    (["neg", "--every", "1h", "--timeout", "-5", *FLEET], "the timeout must be above 0"),
    (["nan", "--every", "1h", "--timeout", "nan", *FLEET], "the timeout must be a finite"),
    (["inf", "--every", "1h", "--timeout", "inf", *FLEET], "the timeout must be a finite"),
    (["long", "--every", "1h", "--timeout", "1e9", *FLEET], "the timeout must be at most"),
    (["cinf", "--every", "1h", "--connect-timeout", "inf", *FLEET],
     "the connect timeout must be a finite"),
    (["czero", "--every", "1h", "--connect-timeout", "0", *FLEET],
     "the connect timeout must be above 0"),
    (["n" * (LONGEST_NAME + 1), "--every", "1h", *FLEET], "at most 119 characters"),
    (["", "--every", "1h", *FLEET], "invalid schedule name"),
    (["bigarg", "--every", "1h", "--task", "opsq.prune", "--args", "[1e400]"],
     "not a finite number"),
    (["nanarg", "--every", "1h", "--task", "opsq.prune", "--kwargs", '{"days": NaN}'],
     "not a finite number"),
    (["digits", "--every", "1h", "--task", "opsq.prune", "--args", "[" + "9" * 5000 + "]"],
     "too many digits"),
    (["deep", "--every", "1h", "--task", "opsq.prune", "--args", "[" * 100000],
     "nested too deeply"),
    (["nul", "--every", "1h", "--task", "opsq.prune", "--kwargs", '{"days": "\\u0000"}'],
     "NUL"),
    (["kwarg", "--every", "1h", "--task", "opsq.prune", "--kwargs", '{"nope": 1}'],
     "do not fit task opsq.prune"),
    (["posargs", "--every", "1h", "--task", "opsq.prune", "--args", "[1, 2, 3, 4, 5]"],
     "do not fit task opsq.prune"),
    (["rawjob", "--every", "1h", "--task", "opsq.submit_job",
      "--kwargs", '{"command": "true", "pattern": "nosuchgroup"}'], "nosuchgroup"),
    (["rawnan", "--every", "1h", "--task", "opsq.submit_job",
      "--kwargs", '{"command": "true", "pattern": "odd", "timeout": "nan"}'], "finite"),
    (["rawflag", "--every", "1h", "--task", "opsq.submit_job",
      "--kwargs", '{"command": "true", "pattern": "odd", "rerun_safe": "yes"}'],
     "rerun_safe must be true or false"),
], ids=lambda v: v[0][:12] if isinstance(v, list) else None)
def test_add_refuses_bad_input_in_one_line_and_writes_nothing(opsq_cli, argv, reason):
    before = schedule_rows()
    out = opsq_cli("schedule", "add", *argv)
    assert_refused(out, reason)
    assert schedule_rows() == before


def test_a_name_as_long_as_the_schema_allows_fires(opsq_cli):
    name = "n" * LONGEST_NAME
    out = opsq_cli("schedule", "add", name, "--every", "1h", "-t", "host01", "--", "true")
    assert out.returncode == 0, out.stderr
    task_id = opsq_cli("schedule", "run-now", name).stdout.strip()
    assert jobs.wait(wait_until(lambda: jobs_of(name) and task_id, 15, "the job"),
                     timeout=30).succeeded


def test_a_relative_inventory_is_stored_absolute_and_must_exist(opsq_cli, tmp_path):
    inv = tmp_path / "inv.ini"
    inv.write_text("[here]\nlocalhost ansible_connection=local\n")
    relative = os.path.relpath(inv, ROOT)  # the CLI runs in the project directory
    out = opsq_cli("schedule", "add", "rel", "--every", "1h", "-i", relative, "-t", "here",
                   "--", "true")
    assert out.returncode == 0, out.stderr
    assert schedules.get("rel").kwargs["inventory"] == str(inv)
    before = schedule_rows()
    out = opsq_cli("schedule", "add", "gone", "--every", "1h", "-i", relative + ".missing",
                   "-t", "here", "--", "true")
    assert_refused(out, "inventory file not found")
    out = opsq_cli("schedule", "add", "other", "--every", "1h", "-i", relative, "-t", "odd",
                   "--", "true")
    assert_refused(out, "odd")
    assert schedule_rows() == before


@pytest.mark.parametrize("argv, reason", [
    (["--timeout", "nan"], "the timeout must be a finite"),
    (["--timeout", "-5"], "the timeout must be above 0"),
    (["--every", "99999999999d"], "longer than 366 days"),
    (["--cron", "0 0 31 2 *"], "never fires"),
    (["--at", "2020-01-01T00:00"], "in the past"),
    (["--at", "9999-12-31T23:59", "--tz", "America/Los_Angeles"], "out of range"),
], ids=lambda v: v[0] + v[1][:6] if isinstance(v, list) else None)
def test_edit_refuses_bad_input_in_one_line_and_changes_nothing(opsq_cli, argv, reason):
    # disabled: an edit of a disabled schedule is checked as strictly as of an enabled one
    out = opsq_cli("schedule", "add", "keep", "--every", "1h", "--disabled", *FLEET)
    assert out.returncode == 0, out.stderr
    before = schedule_rows()
    assert_refused(opsq_cli("schedule", "edit", "keep", *argv), reason)
    assert schedule_rows() == before


def test_show_refuses_a_negative_count(opsq_cli):
    assert opsq_cli("schedule", "add", "shown", "--every", "1h", *FLEET).returncode == 0
    out = opsq_cli("schedule", "show", "shown", "-n", "-1")
    assert_refused(out, "at least 0")
    assert out.stdout == ""


@pytest.mark.parametrize("overlap", ["skip", "allow"])
def test_a_firing_while_the_previous_job_runs_follows_the_overlap_policy(overlap, opsq_cli):
    name = f"overlap-{overlap}"
    added = opsq_cli("schedule", "add", name, "--every", "1h", "--overlap", overlap,
                     "-t", "host01", "--", "sleep", "5")
    assert added.returncode == 0, added.stderr
    first = schedules.run_now(name)  # the previous job, still running below
    wait_until(lambda: jobs.job_status(first) is jobs.JobStatus.RUNNING, 20,
               "the first job to run")
    now = datetime.now(UTC)
    with db.session_scope() as s:
        s.execute(text("UPDATE schedules SET next_run_at = :t WHERE name = :n"),
                  {"t": now - timedelta(seconds=1), "n": name})
    fired = fire_due(now)
    row = schedules.get(name)
    if overlap == "skip":
        assert fired == [] and row.skipped_count == 1 and row.last_skipped_at is not None
        assert row.last_task_id == first and len(jobs_of(name)) == 1
        shown = opsq_cli("schedule", "show", name)
        assert "skipped_count 1" in " ".join(shown.stdout.split())
    else:
        assert fired == [name] and row.skipped_count == 0 and row.last_task_id != first
        wait_until(lambda: len(jobs_of(name)) == 2, 20, "the second job")
    assert now < row.next_run_at  # the firing is over either way: next one in an hour
    jobs.wait(first, timeout=30)
    # once the previous job has ended, a firing starts a job again
    with db.session_scope() as s:
        s.execute(text("UPDATE schedules SET next_run_at = :t WHERE name = :n"),
                  {"t": now, "n": name})
    assert fire_due(datetime.now(UTC)) == [name]


def test_an_overlap_policy_that_is_not_one_is_refused(opsq_cli):
    r = opsq_cli("schedule", "add", "bad-overlap", "--every", "1h", "--overlap", "queue",
                 "-t", "host01", "--", "true")
    assert r.returncode == 2 and "queue" in r.stderr
    with pytest.raises(schedules.ScheduleError, match="skip or allow"):
        schedules.add("bad-overlap", schedules.timing(every="1h"), schedules.SUBMIT_TASK,
                      kwargs=schedules.fleet_kwargs("true", "host01"), overlap="queue")


def test_a_schedule_runs_a_whole_job_line(opsq_cli, tmp_path):
    """After '--', an opsq job line as typed at the command line: a put with its mode and
    become, its file read when the schedule is added."""
    import secrets as _secrets

    target_dir = Path(f"/tmp/opsq-sched-{_secrets.token_hex(4)}")
    target_dir.mkdir(mode=0o777)
    target_dir.chmod(0o777)
    local = tmp_path / "app.conf"
    local.write_text("version 1\n")
    r = opsq_cli("schedule", "add", "conf", "--every", "1h", "--", "put", str(local),
                 str(target_dir / "app.conf"), "-t", "host01", "--mode", "0640")
    assert r.returncode == 0, r.stderr
    local.write_text("version 2, written after the schedule was added\n")
    row = schedules.get("conf")
    assert row.kwargs["spec"]["kind"] == "put"
    assert row.kwargs["spec"]["params"]["mode"] == "0640"
    job_id = schedules.run_now("conf")
    summary = jobs.wait(wait_until(lambda: jobs_of("conf") and job_id, 15, "the job"),
                        timeout=60)
    assert summary.succeeded and summary.kind == "put"
    placed = target_dir / "app.conf"
    assert placed.read_text() == "version 1\n"  # the file as it was when added
    assert placed.stat().st_mode & 0o777 == 0o640
    listed = opsq_cli("schedule", "list")
    assert "conf" in listed.stdout and "put app.conf" in listed.stdout
    # the same schedule made a rolling command with retries
    r = opsq_cli("schedule", "edit", "conf", "--", "run", "echo rolled", "-t", "fleet",
                 "--batch-size", "3", "--max-fail", "1", "--retries", "1", "--rerun-safe")
    assert r.returncode == 0, r.stderr
    job_id = schedules.run_now("conf")
    summary = jobs.wait(wait_until(lambda: len(jobs_of("conf")) == 2 and job_id, 15,
                                   "the second job"), timeout=60)
    assert summary.succeeded and summary.batches == 2 and summary.kind == "command"
    with db.session_scope() as s:
        retries = s.execute(text("SELECT retries, batch_size FROM jobs WHERE id = :j"),
                            {"j": job_id}).one()
    assert tuple(retries) == (1, 3)


@pytest.mark.parametrize("line,message", [
    (["run", "true", "-t", "fleet", "--become", "-K"], "-K cannot be scheduled"),
    (["run", "true", "-t", "fleet", "--wait"], "--wait means nothing"),
    (["put", "/nonexistent/app.conf", "/tmp/x", "-t", "host01"], "cannot read"),
    (["run", "true", "-t", "nosuchgroup"], "nosuchgroup"),
    (["get", "/etc/../etc/hostname", "x", "-t", "host01"], ".."),
    (["run", "true", "-t", "fleet", "--batch-size", "0"], "batch"),
])
def test_a_job_line_is_refused_as_the_command_would_be(opsq_cli, line, message):
    r = opsq_cli("schedule", "add", "refused", "--every", "1h", "--", *line)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr
    assert all(row.name != "refused" for row in schedules.all_schedules())


def test_a_by_name_client_submits_any_job(worker):
    """opsq.submit_job by name takes a whole job as 'spec'; a bad one becomes an error job
    with the reason, never a task failure with its arguments on record."""
    from opsq.app import app

    good = app.send_task("opsq.submit_job", kwargs={"spec": {
        "kind": "get", "command": "get /etc/hostname", "pattern": "host01",
        "params": {"remote": "/etc/hostname"}, "retries": 0}})
    summary = jobs.wait(wait_until(lambda: jobs.job_status(good.id) and good.id, 15,
                                   "the job"), timeout=60)
    assert summary.succeeded and summary.kind == "get"
    bad = app.send_task("opsq.submit_job", kwargs={"spec": {
        "kind": "get", "command": "get", "pattern": "host01",
        "params": {"remote": "/etc/hostname", "mode": "0777"}}})
    wait_until(lambda: jobs.job_status(bad.id) is jobs.JobStatus.ERROR, 15, "the error job")
    assert "takes no mode" in jobs.summary(bad.id).error
