"""A site's machine runs fleet-<site> nodes on its sites' queues, and nothing else."""

from __future__ import annotations

from click.testing import CliRunner

from opsq.cli import main
from opsq.worker import daemons


def test_a_site_machine_runs_one_fleet_node_per_site_and_no_control_node():
    args = daemons.multi_args("start", ("eu", "us-east"))
    assert args[args.index("start") + 1:args.index("-A")] == ["fleet-eu", "fleet-us-east"]
    assert args[args.index("-Q:fleet-eu") + 1] == "opsq.fleet.eu"
    assert args[args.index("-Q:fleet-us-east") + 1] == "opsq.fleet.us-east"
    assert "-Q:control" not in args
    assert [p.name for p in daemons.pidfiles(("eu",))] == ["fleet-eu"]  # no beat either


def test_the_central_machine_keeps_its_two_nodes():
    args = daemons.multi_args("start")
    assert args[args.index("start") + 1:args.index("-A")] == ["fleet", "control"]
    assert args[args.index("-Q:fleet") + 1] == "opsq.fleet"


def test_a_site_name_that_cannot_be_a_queue_is_a_usage_error():
    result = CliRunner().invoke(main, ["daemons", "status", "--site", "EU;rm -rf"])
    assert result.exit_code == 2 and "opsq_site must be" in result.output
