"""Folded results: each distinct output once, under the hosts that printed it in
ClusterShell's notation, from the command line and the API, on real sshd hosts."""

from __future__ import annotations

import json

from jobtools import HOST_NUMBER, run_job

from opsq import jobs

#: Hosts 1, 3 and 5 print "odd" and exit 3; 2, 4 and 6 print "even" and exit 0; host 6
#: also says something on stderr, which makes it a group of its own.
COMMAND = (f"{HOST_NUMBER}; if [ $((n % 2)) = 1 ]; then echo odd; exit 3; fi; echo even; "
           "[ $n = 6 ] && echo warn >&2; exit 0")


def _titled(title: str) -> str:
    rule = "-" * len(title)
    return f"{rule}\n{title}\n{rule}\n"


def test_result_fold_prints_each_output_once_under_its_hosts(worker, opsq_cli):
    job_id = run_job(COMMAND)["job_id"]
    shown = opsq_cli("result", job_id, "--fold")
    assert shown.returncode == 1, shown.stderr  # a host failed
    assert shown.stdout == (
        _titled("host[01,03,05] (3): 3 failed; exit 3") + "odd\n"
        + _titled("host[02,04] (2): 2 ok; exit 0") + "even\n"
        + _titled("host06 (1): 1 ok; exit 0") + "even\n--- stderr\nwarn\n")
    as_json = json.loads(opsq_cli("result", job_id, "--fold", "--json").stdout)
    assert [(g["hosts"], g["count"], g["exit_codes"]) for g in as_json["groups"]] == [
        ("host[01,03,05]", 3, [3]), ("host[02,04]", 2, [0]), ("host06", 1, [0])]


def test_groups_page_through_the_api_function(worker):
    job_id = run_job(COMMAND)["job_id"]
    first = jobs.groups(job_id, offset=0, limit=2)
    assert first.total == 3
    assert [g.hosts for g in first.groups] == ["host[01,03,05]", "host[02,04]"]
    rest = jobs.groups(job_id, offset=2, limit=2)
    assert [(g.hosts, g.stdout, g.stderr, g.statuses) for g in rest.groups] == [
        ("host06", "even\n", "warn\n", {"ok": 1})]
