"""The console's schedule form read into the API's model: which fields make a job line,
and a field of the other kind refused instead of dropped. Pure: no service."""

from __future__ import annotations

import shlex

import pytest

from opsq.web.schedule_form import FormErrors, new_schedule

BASE = {"name": "nightly", "when_kind": "cron", "expression": "0 3 * * *", "tz": "UTC",
        "enabled": "on", "overlap": "skip"}


def test_a_plain_command_stays_a_command():
    s = new_schedule({**BASE, "what": "fleet", "command": "uptime", "pattern": "web",
                      "timeout": "30"})
    assert (s.command, s.pattern, s.timeout, s.job) == ("uptime", "web", 30.0, None)


def test_job_options_make_a_whole_job_line():
    s = new_schedule({**BASE, "what": "fleet", "command": "apt-get -y upgrade",
                      "pattern": "web", "batch_size": "25%", "max_fail": "1", "become": "on",
                      "notify": "https://hooks.example.com/a\nhttps://hooks.example.com/b"})
    assert s.command is None and s.pattern is None
    words = shlex.split(s.job)
    assert words == ["run", "-t", "web", "--become", "--batch-size", "25%", "--max-fail", "1",
                     "--notify", "https://hooks.example.com/a", "--notify",
                     "https://hooks.example.com/b", "--", "apt-get -y upgrade"]


@pytest.mark.parametrize(("what", "extra", "field"), [
    ("task", {"task": "opsq.prune", "command": "uptime"}, "command"),
    ("fleet", {"command": "uptime", "pattern": "web", "task": "opsq.prune"}, "task"),
    ("fleet", {"pattern": "web"}, "command"),
    ("fleet", {"command": "uptime"}, "pattern"),
    ("fleet", {"command": "uptime", "pattern": "web", "job": "run x -t web"}, "job"),
])
def test_a_field_the_kind_does_not_take_is_refused_by_name(what, extra, field):
    with pytest.raises(FormErrors) as refused:
        new_schedule({**BASE, "what": what, **extra})
    assert list(refused.value.errors) == [field]


def test_a_missing_time_says_what_to_give():
    with pytest.raises(FormErrors) as refused:
        new_schedule({**BASE, "expression": "", "what": "fleet", "command": "x",
                      "pattern": "web"})
    assert refused.value.errors == {"expression": "give a cron line such as 0 2 * * *"}
