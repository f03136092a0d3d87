"""The quick path's ``opsq.submit_job`` message is the one Celery builds for the same call."""

from __future__ import annotations

from opsq import quick
from opsq.app import app


def test_the_message_matches_celerys_task_protocol_2():
    job_id = "0b6c9a4e-4c1e-4d7e-9d1a-3f1e2d3c4b5a"
    kwargs = {"spec": {"command": "uptime", "pattern": "web"}, "submitted_by": "alice"}
    shown = repr(kwargs)
    headers, properties, body = quick.submit_message(job_id, kwargs, shown)
    celery = app.amqp.as_task_v2(job_id, quick.SUBMIT_JOB, args=(), kwargs=kwargs,
                                 argsrepr="()", kwargsrepr=shown, origin=headers["origin"])
    assert headers == celery.headers
    assert properties == celery.properties
    assert body == [list(part) if isinstance(part, tuple) else part for part in celery.body]


def test_only_the_plain_case_takes_the_quick_path(monkeypatch):
    plain = {"pattern": "web", "inventory": None, "rerun_safe": False, "wait_": True,
             "timeout": None, "retries": 0, "notify": (), "as_json": False}
    assert quick.eligible("uptime", plain)
    assert not quick.eligible("uptime", {**plain, "wait_": False})
    assert not quick.eligible("uptime", {**plain, "timeout": 30.0})
    assert not quick.eligible("uptime", {**plain, "as_json": True})
    assert not quick.eligible("uptime", {**plain, "notify": ("https://x",)})
    assert not quick.eligible("  ", plain)
    monkeypatch.setenv("OPSQ_QUICK", "0")
    assert not quick.eligible("uptime", plain)
