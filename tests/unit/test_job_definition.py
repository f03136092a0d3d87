"""One job definition: every option of a job (``opsq.jobs.spec.JOB_OPTIONS``) exists in
``JobSpec``, on ``opsq run`` (and so in a schedule's job line), in the API's job model,
and in the stored form schedules and by-name clients use; no door takes an option the
list does not know."""

from __future__ import annotations

import dataclasses

import pytest

from opsq.cli import main
from opsq.jobs import STORED_FIELDS, JobSpec, spec_from_dict, spec_to_dict
from opsq.jobs.spec import JOB_OPTIONS
from opsq.web.operations import JobIn

#: opsq run's options that are about how the command line waits and prints, not the job.
CLI_ONLY = {"--wait", "--stream", "--json"}
#: JobIn fields that are the job's what, not an option.
API_WHAT = {"command"}
#: Stored params each kind sets from its own arguments (a put's src and dest...).
SPEC_FIELDS = {f.name for f in dataclasses.fields(JobSpec)}


def _cli_flags(command: str) -> set[str]:
    flags = set()
    for param in main.commands[command].params:
        if param.param_type_name == "option":
            flags |= {o for o in param.opts if o.startswith("--")}
    return flags


def test_every_option_is_a_spec_field():
    for option in JOB_OPTIONS:
        field = option.spec.split(".", 1)[0]
        assert field in SPEC_FIELDS, option


@pytest.mark.parametrize("command", ["run", "put", "get", "script"])
def test_each_job_command_takes_exactly_the_listed_options(command):
    listed = {o.cli for o in JOB_OPTIONS}
    assert _cli_flags(command) - CLI_ONLY - {"--help"} - _own_flags(command) == listed


def _own_flags(command: str) -> set[str]:
    """A kind's own parameters (a put's --mode, --owner, --backup), not job options."""
    own = {"put": {"--mode", "--owner", "--backup"}}
    return own.get(command, set())


def test_the_api_model_takes_exactly_the_listed_options():
    listed = {o.api for o in JOB_OPTIONS if o.api is not None}
    assert set(JobIn.model_fields) - API_WHAT == listed


def test_an_option_a_door_lacks_says_why():
    for option in JOB_OPTIONS:
        assert option.api is not None or option.why, option


def test_the_stored_form_keeps_every_option():
    for option in JOB_OPTIONS:
        field = option.spec.split(".", 1)[0]
        assert field in STORED_FIELDS, option


def test_a_spec_with_every_stored_option_survives_its_stored_form():
    spec = JobSpec(command="uptime", pattern="web", inventory="inv.ini", command_timeout=30,
                   connect_timeout=5, rerun_safe=True, params={"become": True,
                                                               "become_user": "app"},
                   batch_size="25%", batch_pause=2, max_fail=1, retries=2, retry_delay=1,
                   retry_on="failure", notify=["https://hooks.example.com/x"],
                   local_hosts=False)
    again = spec_from_dict(spec_to_dict(spec))
    for name in STORED_FIELDS:
        assert getattr(again, name) == getattr(spec, name), name


def test_the_schedule_form_offers_every_option_the_api_takes():
    from opsq.web.schedule_form import LABELS, OPTION_FIELDS

    own_fields = {"pattern", "inventory", "timeout"}  # the form's main fields
    offered = {f.name for f in OPTION_FIELDS} | own_fields
    assert offered == {o.api for o in JOB_OPTIONS if o.api is not None}
    assert all(LABELS[name] for name in offered)


def test_command_line_flags_read_in_the_console_s_words():
    from opsq.web.schedule_form import console_words, field_of

    message = "--max-fail needs --batch-size (it decides whether the next batch starts)"
    assert console_words(message) == \
        "“Stop after failures” needs “Batch size” (it decides whether the next batch starts)"
    assert field_of(message, "form") == "max_fail"
    assert field_of("invalid cron line 'x': minute 'x' is not valid", "form") == "expression"
