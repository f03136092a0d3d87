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
    _print_result(job_id, summary, as_json)
    sys.exit(EXIT_OK if summary["succeeded"] else EXIT_HOST_FAILED)


def _print_result(job_id: str, summary: dict[str, Any], as_json: bool) -> None:
    from opsq import jobs

    hosts = jobs.host_results(job_id)
    if as_json:
        click.echo(json.dumps({**summary, "results": hosts}, indent=2, default=str))
        return
    rows = [("HOST", "STATUS", "EXIT", "TIME", "OUTPUT")]
    for h in hosts:
        text = (h["stdout"] or "").strip() if h["status"] == "ok" else (
            h["error"] or (h["stderr"] or "").strip() or (h["stdout"] or "").strip())
        first = text.splitlines()[0] if text else ""
        if len(first) > TABLE_OUTPUT_WIDTH:
            first = first[: TABLE_OUTPUT_WIDTH - 1] + "…"
        rows.append((
            h["host"], h["status"] + (" (truncated)" if h["truncated"] else ""),
            "" if h["exit_code"] is None else str(h["exit_code"]),
            "" if h["duration"] is None else f"{h['duration']:.2f}s", first,
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary["counts"].items()))
    duration = f" in {summary['duration']:.2f}s" if summary["duration"] is not None else ""
    click.echo(f"job {job_id}: {summary['status']} ({counts}){duration}")


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@_errors
def status(job_id: str, as_json: bool) -> None:
    """Where a job stands: status and hosts done / total."""
    from opsq import jobs

    s = jobs.summary(job_id)
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    counts = ", ".join(f"{n} {k}" for k, n in sorted(s["counts"].items()))
    click.echo(f"{s['job_id']}  {s['status']}  {s['done']}/{s['total']} hosts done ({counts})")
    if s["error"]:
        click.echo(f"error: {s['error']}")


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
    _print_result(job_id, summary, as_json)
    if full and not as_json:
        for h in jobs.host_results(job_id):
            click.echo(f"--- {h['host']} [{h['status']}] stdout")
            click.echo(h["stdout"] or "", nl=False)
            if h["stderr"]:
                click.echo(f"--- {h['host']} stderr")
                click.echo(h["stderr"], nl=False)
    finished = summary["status"] in ("succeeded", "failed", "error")
    sys.exit(EXIT_OK if summary["succeeded"] or not finished else EXIT_HOST_FAILED)


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


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url.removeprefix("db+")).render_as_string(hide_password=True)


if __name__ == "__main__":  # pragma: no cover
    main()
