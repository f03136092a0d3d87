"""The ``opsq`` command.

Exit codes: 0 every host succeeded (or the command did what was asked), 1 at least one
host did not, 2 a usage or input error (bad pattern, inventory, job id), 3 RabbitMQ or
PostgreSQL unreachable.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from opsq.errors import BackendUnavailable, OpsqError

EXIT_OK, EXIT_HOST_FAILED, EXIT_INPUT, EXIT_UNAVAILABLE = 0, 1, 2, 3
#: Characters of a host's first output line shown in the result table.
TABLE_OUTPUT_WIDTH = 60


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn opsq's errors into one clear line on stderr and the documented exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BackendUnavailable as exc:
            click.echo(f"opsq: {exc}", err=True)
            sys.exit(EXIT_UNAVAILABLE)
        except OpsqError as exc:
            click.echo(f"opsq: {exc}", err=True)
            sys.exit(EXIT_INPUT)
        except TimeoutError as exc:
            click.echo(f"opsq: {exc}", err=True)
            sys.exit(EXIT_HOST_FAILED)

    return wrapper


@click.group()
@click.version_option(package_name="opsq")
def main() -> None:
    """Run commands across a fleet of hosts as asynchronous jobs."""


def _inventory_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-i", "--inventory", metavar="PATH",
                        help="Ansible INI/YAML inventory (default: OPSQ_INVENTORY).")(fn)


@main.command()
@click.argument("command")
@click.option("-t", "--target", "pattern", required=True, metavar="PATTERN",
              help="Host pattern, e.g. 'web:!web3', 'web:&prod', '~db\\d+'.")
@_inventory_option
@click.option("--timeout", type=float, metavar="SECONDS", help="Command deadline per host.")
@click.option("--connect-timeout", type=float, metavar="SECONDS",
              help="Connect + SSH handshake deadline per host.")
@click.option("--rerun-safe", is_flag=True,
              help="The command may run again on a host whose worker died mid-run.")
@click.option("--wait", "wait_", is_flag=True, help="Show progress, then the results.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_errors
def run(command: str, pattern: str, inventory: str | None, timeout: float | None,
        connect_timeout: float | None, rerun_safe: bool, wait_: bool, as_json: bool) -> None:
    """Run COMMAND on the hosts PATTERN selects; prints the job id at once."""
    from opsq import jobs

    result = jobs.submit(jobs.JobSpec(
        command=command, pattern=pattern, inventory=inventory, command_timeout=timeout,
        connect_timeout=connect_timeout, rerun_safe=rerun_safe,
    ))
    if not wait_:
        if as_json:
            click.echo(json.dumps({"job_id": result.id}))
        else:
            click.echo(result.id)
        return
    if not as_json:
        click.echo(f"job {result.id}", err=True)
    _show_finished(result.id, as_json, progress=not as_json)


def _show_finished(job_id: str, as_json: bool, progress: bool, timeout: float | None = None
                   ) -> None:
    from opsq import jobs

    tty = sys.stderr.isatty()

    def show(done: int, total: int) -> None:
        end = "\r" if tty and done < total else "\n"
        if tty or done == total:
            click.echo(f"  {done}/{total} hosts done", err=True, nl=False)
            click.echo(end, err=True, nl=False)

    summary = jobs.wait(job_id, timeout=timeout, on_progress=show if progress else None)
    _print_result(summary, as_json)
    sys.exit(EXIT_OK if summary.succeeded else EXIT_HOST_FAILED)


def printable(text: str) -> str:
    """``text`` with every control character (escape sequences, carriage returns...)
    shown as ``\\xNN``: output from a host must not drive the operator's terminal."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def printable_lines(text: str) -> str:
    """As ``printable``, keeping line breaks and tabs."""
    return "\n".join("\t".join(printable(part) for part in line.split("\t"))
                     for line in text.split("\n"))


def _write_host_output(text: str) -> None:
    sys.stdout.write(printable_lines(text) if sys.stdout.isatty() else text)
    sys.stdout.flush()


def _count_line(counts: dict[str, int]) -> str:
    """'2 failed, 3 ok': hosts per status, in a stable order."""
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def _print_result(summary: Any, as_json: bool) -> None:
    from opsq import jobs

    if as_json:
        click.echo(json.dumps({**summary.as_dict(), "results": jobs.host_results(
            summary.job_id)}, indent=2, default=str))
        return
    rows = [("HOST", "STATUS", "EXIT", "TIME", "OUTPUT")]
    # Only the start of each output is read: the table shows one line of it.
    for h in jobs.host_runs(summary.job_id, preview=True):
        text = (h.stdout or "").strip() if h.succeeded else (
            h.error or (h.stderr or "").strip() or (h.stdout or "").strip())
        first = printable(text.splitlines()[0]) if text else ""
        if len(first) > TABLE_OUTPUT_WIDTH:
            first = first[: TABLE_OUTPUT_WIDTH - 1] + "…"
        rows.append((
            h.host, h.status.value + (" (truncated)" if h.truncated else ""),
            "" if h.exit_code is None else str(h.exit_code),
            "" if h.duration is None else f"{h.duration:.2f}s", first,
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    counts = _count_line(summary.counts)
    duration = f" in {summary.duration:.2f}s" if summary.duration is not None else ""
    click.echo(f"job {summary.job_id}: {summary.status.value} ({counts}){duration}")


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@_errors
def status(job_id: str, as_json: bool) -> None:
    """Where a job stands: status and hosts done / total."""
    from opsq import jobs

    s = jobs.summary(job_id)
    if as_json:
        click.echo(json.dumps(s.as_dict(), indent=2))
        return
    counts = _count_line(s.counts)
    click.echo(f"{s.job_id}  {s.status.value}  {s.done}/{s.total} hosts done ({counts})")
    if s.error:
        click.echo(f"error: {s.error}")


@main.command()
@click.argument("job_id")
@click.option("--wait", "wait_", is_flag=True, help="Wait for the job to finish first.")
@click.option("--timeout", type=float, metavar="SECONDS", help="Give up waiting after this.")
@click.option("--json", "as_json", is_flag=True)
@click.option("-o", "--output", "full", is_flag=True, help="Print each host's full output.")
@_errors
def result(job_id: str, wait_: bool, timeout: float | None, as_json: bool, full: bool) -> None:
    """Each host's status, exit code, timing and output for a job."""
    from opsq import jobs

    if wait_:
        _show_finished(job_id, as_json, progress=False, timeout=timeout)
        return
    summary = jobs.summary(job_id)
    _print_result(summary, as_json)
    if full and not as_json:
        # A host's output is the host's to write: on a terminal, its control characters
        # are shown escaped, so it cannot move the cursor or rewrite the screen.
        # Piped, it is passed through untouched (click.echo would strip some of it).
        for h in jobs.host_runs(job_id):
            click.echo(f"--- {h.host} [{h.status.value}] stdout")
            _write_host_output(h.stdout or "")
            if h.stderr:
                click.echo(f"--- {h.host} stderr")
                _write_host_output(h.stderr)
    sys.exit(EXIT_OK if summary.succeeded or not summary.finished else EXIT_HOST_FAILED)


@main.command("jobs")
@click.option("-n", "--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_errors
def jobs_cmd(limit: int, as_json: bool) -> None:
    """Recent jobs, newest first."""
    from opsq import jobs

    rows = jobs.recent(limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for j in rows:
        dur = f"{j['duration']:.2f}s" if j["duration"] is not None else "-"
        click.echo(f"{j['job_id']}  {j['submitted_at'][:19]}  {j['status']:<9} "
                   f"{j['ok']}/{j['total']} ok  {dur:>8}  {j['pattern']}: {j['command']}")


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("words", nargs=-1, required=True)
@_inventory_option
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="With trust: seconds to wait for each host's key.")
@_errors
def hosts(words: tuple[str, ...], inventory: str | None, timeout: float) -> None:
    """List the hosts PATTERN selects; 'hosts trust PATTERN' records their SSH keys.

    \b
    opsq hosts 'web:!web3'
    opsq hosts trust fleet
    """
    from opsq import jobs

    if words[0] == "trust":
        if len(words) != 2:
            raise click.UsageError("usage: opsq hosts trust PATTERN")
        from opsq.hostkeys import trust

        sys.exit(trust(jobs.resolve(words[1], inventory), timeout=timeout, echo=click.echo))
    if len(words) != 1:
        raise click.UsageError("usage: opsq hosts PATTERN (quote patterns with ! or &)")
    for h in jobs.resolve(words[0], inventory):
        where = "local" if h.connection == "local" else f"{h.user + '@' if h.user else ''}" \
            f"{h.address}:{h.port}"
        click.echo(f"{h.name}\t{where}")


@main.group()
def db() -> None:
    """Database schema."""


@db.command()
@_errors
def upgrade() -> None:
    """Create the database if needed and apply every migration."""
    from opsq import schema
    from opsq.settings import get_settings

    schema.upgrade()
    click.echo(f"database schema is up to date ({_safe_url(get_settings().database_url)})")


@main.group()
def schedule() -> None:
    """Schedules fired by 'celery -A opsq beat' (cron, interval or one-off)."""


def _timing_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--cron", metavar="'M H DOM MON DOW'", help="Five-field cron line."),
        click.option("--every", metavar="DURATION", help="Interval: 30s, 10m, 2h, 1d."),
        click.option("--at", "at", metavar="ISO-TIME", help="Once, e.g. 2026-12-01T09:00."),
        click.option("--tz", metavar="ZONE", help="IANA zone for --cron and --at (UTC)."),
    ]):
        fn = opt(fn)
    return fn


@schedule.command("add")
@click.argument("name")
@click.argument("command", nargs=-1)
@_timing_options
@click.option("-t", "--target", "pattern", metavar="PATTERN", help="Hosts of a fleet command.")
@_inventory_option
@click.option("--timeout", type=float, metavar="SECONDS")
@click.option("--connect-timeout", type=float, metavar="SECONDS")
@click.option("--task", metavar="NAME", help="Send this registered Celery task instead.")
@click.option("--args", "args_json", metavar="JSON", help="--task positional args (array).")
@click.option("--kwargs", "kwargs_json", metavar="JSON", help="--task keyword args (object).")
@click.option("--disabled", is_flag=True, help="Create it disabled.")
@_errors
def schedule_add(name: str, command: tuple[str, ...], cron: str | None, every: str | None,
                 at: str | None, tz: str | None, pattern: str | None, inventory: str | None,
                 timeout: float | None, connect_timeout: float | None, task: str | None,
                 args_json: str | None, kwargs_json: str | None, disabled: bool) -> None:
    """Add schedule NAME: '-t PATTERN -- COMMAND' or '--task NAME'.

    \b
    opsq schedule add disk --cron '0 2 * * *' --tz Europe/Paris -t db -- df -h /
    opsq schedule add ping --every 10m -t web -- true
    opsq schedule add once --at 2026-12-01T09:00 -t all -- reboot
    opsq schedule add bday --cron '0 9 * * *' --task opsq.examples.birthday_greetings
    """
    from opsq import schedules

    when = schedules.timing(cron, every, at, tz)
    if task:
        if command or pattern:
            raise click.UsageError("give either --task or '-t PATTERN -- COMMAND', not both")
        row = schedules.add(name, when, task, schedules.parse_json(args_json, "args", list),
                            schedules.parse_json(kwargs_json, "kwargs", dict), not disabled)
    else:
        if not pattern or not command:
            raise click.UsageError("a fleet schedule needs -t PATTERN and '-- COMMAND'")
        if args_json or kwargs_json:
            raise click.UsageError("--args/--kwargs go with --task")
        kwargs = schedules.fleet_kwargs(" ".join(command), pattern, inventory, timeout,
                                        connect_timeout)
        row = schedules.add(name, when, schedules.SUBMIT_TASK, [], kwargs, not disabled)
    click.echo(f"schedule {row.name} added; next run {_when(row.next_run_at)}")


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %Z") if value else "-"


def _what(row: Any) -> str:
    if row.task == "opsq.submit_job":
        return f"{row.kwargs.get('pattern')}: {row.kwargs.get('command')}"
    return f"{row.task}{tuple(row.args) if row.args else '()'} {row.kwargs or ''}".rstrip()


def _expr(row: Any) -> str:
    if row.kind == "interval":
        return f"every {float(row.expression):g}s"
    if row.kind == "cron":
        return f"cron '{row.expression}' {row.timezone}"
    return f"at {row.expression}"


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True)
@_errors
def schedule_list(as_json: bool) -> None:
    """Every schedule with its timing, next run and what it runs."""
    from opsq import schedules

    rows = schedules.all_schedules()
    if as_json:
        click.echo(json.dumps([_schedule_dict(r) for r in rows], indent=2, default=str))
        return
    for r in rows:
        state = "on " if r.enabled else "off"
        click.echo(f"{r.name:<20} {state} {_expr(r):<32} next {_when(r.next_run_at):<24} "
                   f"runs {r.run_count:<5} {_what(r)}")


def _schedule_dict(r: Any) -> dict[str, Any]:
    return {k: getattr(r, k) for k in (
        "name", "kind", "expression", "timezone", "task", "args", "kwargs", "enabled",
        "created_at", "updated_at", "last_run_at", "next_run_at", "run_count", "last_task_id")}


@schedule.command("show")
@click.argument("name")
@click.option("-n", "--limit", default=10, show_default=True, help="Recent jobs shown.")
@_errors
def schedule_show(name: str, limit: int) -> None:
    """One schedule, with its recent jobs."""
    from opsq import schedules

    r = schedules.get(name)
    for key, value in _schedule_dict(r).items():
        click.echo(f"{key:<13} {value}")
    recent = schedules.recent_jobs(r.id, limit)
    click.echo(f"recent jobs ({len(recent)}):")
    for j in recent:
        click.echo(f"  {j.id}  {j.submitted_at:%Y-%m-%d %H:%M:%S}  {j.status:<9} "
                   f"{j.ok_count}/{j.host_count} ok")


@schedule.command("edit")
@click.argument("name")
@_timing_options
@click.option("-t", "--target", "pattern", metavar="PATTERN")
@click.option("--command", metavar="COMMAND")
@click.option("--timeout", type=float, metavar="SECONDS")
@_errors
def schedule_edit(name: str, cron: str | None, every: str | None, at: str | None,
                  tz: str | None, pattern: str | None, command: str | None,
                  timeout: float | None) -> None:
    """Change a schedule's timing or command; beat picks it up within a second."""
    from opsq import schedules

    when = schedules.timing(cron, every, at, tz) if (cron or every or at) else None
    if tz and when is None:
        raise click.UsageError("--tz goes with --cron or --at")
    update = {k: v for k, v in (("pattern", pattern), ("command", command),
                                ("timeout", timeout)) if v is not None}
    if when is None and not update:
        raise click.UsageError("nothing to change")
    r = schedules.edit(name, when=when, kwargs_update=update)
    click.echo(f"schedule {r.name}: {_expr(r)}; next run {_when(r.next_run_at)}")


@schedule.command("enable")
@click.argument("name")
@_errors
def schedule_enable(name: str) -> None:
    """Enable a schedule (it continues from now; missed runs are not fired)."""
    from opsq import schedules

    r = schedules.edit(name, enabled=True)
    click.echo(f"schedule {r.name} enabled; next run {_when(r.next_run_at)}")


@schedule.command("disable")
@click.argument("name")
@_errors
def schedule_disable(name: str) -> None:
    """Disable a schedule; it stops firing within a second."""
    from opsq import schedules

    schedules.edit(name, enabled=False)
    click.echo(f"schedule {name} disabled")


@schedule.command("rm")
@click.argument("name")
@_errors
def schedule_rm(name: str) -> None:
    """Remove a schedule (its jobs stay, with the schedule's name)."""
    from opsq import schedules

    schedules.remove(name)
    click.echo(f"schedule {name} removed")


@schedule.command("run-now")
@click.argument("name")
@_errors
def schedule_run_now(name: str) -> None:
    """Fire a schedule once now; prints the job (task) id."""
    from opsq import schedules

    click.echo(schedules.run_now(name))


@main.group()
def daemons() -> None:
    """Worker nodes (celery multi) and beat as background daemons."""


@daemons.command("start")
@click.option("--no-beat", is_flag=True, help="Start the workers only.")
def daemons_start(no_beat: bool) -> None:
    """Start the fleet and control nodes and beat; clears stale pid files first."""
    from opsq import daemons as d

    sys.exit(d.start(with_beat=not no_beat, echo=click.echo))


@daemons.command("stop")
@click.option("--no-beat", is_flag=True, help="Leave beat running.")
def daemons_stop(no_beat: bool) -> None:
    """Stop after the running tasks finish (warm shutdown); nothing is lost."""
    from opsq import daemons as d

    sys.exit(d.stop(with_beat=not no_beat, echo=click.echo))


@daemons.command("restart")
@click.option("--no-beat", is_flag=True)
def daemons_restart(no_beat: bool) -> None:
    """Restart the nodes (warm) and beat."""
    from opsq import daemons as d

    sys.exit(d.restart(with_beat=not no_beat, echo=click.echo))


@daemons.command("status")
def daemons_status() -> None:
    """Each node's pid and whether it answers a Celery ping."""
    from opsq import daemons as d

    sys.exit(d.status(echo=click.echo))


@main.command()
@_errors
def flower() -> None:
    """Start Flower on OPSQ_FLOWER_ADDRESS:OPSQ_FLOWER_PORT with authentication."""
    from opsq.dashboard import exec_flower

    exec_flower()


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url.removeprefix("db+")).render_as_string(hide_password=True)


if __name__ == "__main__":  # pragma: no cover
    main()
