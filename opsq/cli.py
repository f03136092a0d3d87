"""The ``opsq`` command.

Exit codes: 0 every host succeeded (or the command did what was asked), 1 at least one
host did not, 2 a usage or input error (bad pattern, inventory, job id; ``result`` of a job
not finished yet), 3 RabbitMQ or PostgreSQL unreachable.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from opsq.errors import BackendUnavailable, OpsqError
from opsq.limits import MAX_CONNECT_TIMEOUT, MAX_WAIT

EXIT_OK, EXIT_HOST_FAILED, EXIT_INPUT, EXIT_UNAVAILABLE = 0, 1, 2, 3
#: Characters of a host's first output line shown in the result table.
TABLE_OUTPUT_WIDTH = 60
#: Characters of the progress bar ``--wait`` draws on a terminal.
PROGRESS_BAR_WIDTH = 30
#: Most jobs ``opsq jobs -n`` lists (SQL is there for more).
MAX_LISTED = 10_000


class Seconds(click.ParamType):
    """A duration option: a finite number of seconds above zero and at most ``maximum``
    (click's float type accepts ``nan`` and ``inf``)."""

    name = "seconds"

    def __init__(self, maximum: float) -> None:
        self.maximum = maximum

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, float):
            return value
        from opsq import limits

        try:
            return limits.seconds(value, "it", self.maximum)
        except limits.InvalidNumber as exc:
            reason = str(exc).removeprefix("it ").rsplit(", not ", 1)[0]
            self.fail(f"{value!r}: {reason}", param, ctx)


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
            if _captured.get() is not None:  # reading a job line: its reader reports it
                raise
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


def _notify_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--notify", multiple=True, metavar="URL",
                        help="POST the job's summary to URL when it ends (http/https; "
                             "repeatable).")(fn)


def _job_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options every fleet job takes: where, deadlines, become, and how to wait."""
    for opt in reversed([
        click.option("-t", "--target", "pattern", required=True, metavar="PATTERN",
                     help="Host pattern, e.g. 'web:!web3', 'web:&prod', '~db\\d+'."),
        _inventory_option,
        # The command timeout's upper bound depends on RabbitMQ's consumer_timeout: the
        # job's check says so (opsq.jobs.check_timeouts).
        click.option("--timeout", type=Seconds(math.inf), metavar="SECONDS",
                     help="Deadline per host."),
        click.option("--connect-timeout", type=Seconds(MAX_CONNECT_TIMEOUT),
                     metavar="SECONDS", help="Connect + SSH handshake deadline per host."),
        click.option("--rerun-safe", is_flag=True,
                     help="It may run again on a host whose worker died mid-run."),
        click.option("--become", is_flag=True,
                     help="Through sudo (password: inventory ansible_become_pass or the "
                          "worker's OPSQ_BECOME_PASSWORD_FILE)."),
        click.option("--become-user", metavar="USER", help="With --become: as USER (root)."),
        click.option("-K", "--ask-become-pass", is_flag=True,
                     help="With --become: ask for the sudo password (handed to the workers "
                          "through RabbitMQ for this job only)."),
        click.option("--batch-size", metavar="N|P%",
                     help="Rolling: this many hosts (or percent of them) at a time."),
        click.option("--pause", type=float, metavar="SECONDS",
                     help="Rolling: wait this long between batches."),
        click.option("--max-fail", metavar="N|P%",
                     help="Rolling: start no further batch once more hosts than this "
                          "have failed."),
        click.option("--retries", type=int, default=0, metavar="N",
                     help="Run a host whose command failed again, up to N times."),
        click.option("--retry-delay", type=float, metavar="SECONDS",
                     help="Wait between two runs of a host."),
        click.option("--retry-on", type=click.Choice(["failure", "unreachable"]),
                     help="Retry any failure (needs --rerun-safe) or only hosts where the "
                          "command never started."),
        click.option("--deadline", type=Seconds(MAX_WAIT), metavar="SECONDS",
                     help="Hosts not started this long after submission (no worker of "
                          "their site took them) end unreachable."),
        click.option("--wait", "wait_", is_flag=True, help="Show progress, then the results."),
        click.option("--stream", is_flag=True,
                     help="With --wait: print each host's output as it arrives, each line "
                          "prefixed by its host."),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
        _notify_option,
    ]):
        fn = opt(fn)
    return fn


#: Set while ``schedule add/edit`` reads a job line: the job commands then hand their
#: spec over instead of submitting it.
_captured: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "opsq_captured", default=None)
#: The commands a schedule's job line may start with.
JOB_COMMANDS = ("run", "put", "get", "script")


def job_line_spec(words: list[str]) -> Any:
    """The JobSpec an opsq job line (``put app.conf /etc/app.conf -t web --become``) makes,
    checked as the command would check it, without submitting anything. Raises
    click.UsageError or OpsqError."""
    if not words or words[0] not in JOB_COMMANDS:
        raise click.UsageError(f"a job line starts with {', '.join(JOB_COMMANDS)}")
    captured: list[Any] = []
    token = _captured.set(captured)
    try:
        main.commands[words[0]].main(args=list(words[1:]), prog_name=f"opsq {words[0]}",
                                     standalone_mode=False)
    except click.exceptions.Exit:
        pass
    except click.ClickException as exc:  # an option the command refuses
        raise OpsqError(f"in the job line: {exc.format_message()}") from None
    finally:
        _captured.reset(token)
    if not captured:
        raise click.UsageError(f"opsq {words[0]} made no job from {' '.join(words[1:])!r}")
    return captured[0]


def _submit(spec_for: Callable[[Any], Any], opts: dict[str, Any]) -> str | None:
    """Build the job from the shared options, submit it, print its id (or wait for it)."""
    from opsq import jobs
    from opsq.jobs import kinds

    capturing = _captured.get()
    if capturing is not None and opts["ask_become_pass"]:
        raise OpsqError("-K cannot be scheduled (no typed password is stored): give the "
                        "workers OPSQ_BECOME_PASSWORD_FILE or ansible_become_pass")
    if capturing is not None and opts["wait_"]:
        raise OpsqError("--wait means nothing in a schedule")

    params = kinds.become_params(opts["become"], opts["become_user"],
                                   opts["ask_become_pass"])
    base = jobs.JobSpec(
        command="", pattern=opts["pattern"], inventory=opts["inventory"],
        command_timeout=opts["timeout"], connect_timeout=opts["connect_timeout"],
        rerun_safe=opts["rerun_safe"], params=params, notify=list(opts["notify"]),
        batch_size=opts["batch_size"], batch_pause=opts["pause"], max_fail=opts["max_fail"],
        retries=opts["retries"], retry_delay=opts["retry_delay"], retry_on=opts["retry_on"],
        deadline=opts["deadline"])
    spec = spec_for(base)  # a bad file or path is refused before the prompt
    if capturing is not None:
        capturing.append(spec)
        return None
    hand_over = None
    if opts["ask_become_pass"]:
        from opsq.app import app
        from opsq.jobs import become_password

        jobs.plan(spec)  # so is anything else, and a job that would outlive the password

        password = click.prompt("sudo password", hide_input=True, err=True)

        def hand_over(job_id: str) -> None:
            become_password.hand_over(app, job_id, password)

    result = jobs.submit(spec, before_publish=hand_over)
    if not opts["wait_"]:
        click.echo(json.dumps({"job_id": result.id}) if opts["as_json"] else result.id)
        return None
    if not opts["as_json"]:
        click.echo(f"job {result.id}", err=True)
    return result.id


@main.command()
@click.argument("command")
@_job_options
@_errors
def run(command: str, **opts: Any) -> None:
    """Run COMMAND on the hosts PATTERN selects; prints the job id at once."""
    from dataclasses import replace

    from opsq import quick

    if _captured.get() is None and quick.eligible(command, opts):
        _run_quick(command, opts)
    if (job_id := _submit(lambda spec: replace(spec, command=command), opts)) is not None:
        _show_finished(job_id, opts["as_json"], progress=not opts["as_json"],
                       stream=opts["stream"])


@main.command()
@click.argument("local", metavar="LOCAL")
@click.argument("remote", metavar="REMOTE")
@_job_options
@click.option("--mode", metavar="OCTAL", help="File mode, e.g. 0644 (default: the "
              "existing file's, else 0644 less the host's umask).")
@click.option("--owner", metavar="USER[:GROUP]", help="Owner (needs --become unless it is "
              "the login user).")
@click.option("--backup", is_flag=True, help="Keep the old file beside it as "
              "<file>.opsq-<time> (hard-linked; a taken name gets a random suffix).")
@_errors
def put(local: str, remote: str, mode: str | None, owner: str | None, backup: bool,
        **opts: Any) -> None:
    """Copy the file LOCAL to the absolute path REMOTE on every host PATTERN selects.

    A host whose file already has that content, mode and owner reports it unchanged and is
    not written; otherwise the file is replaced atomically (rename)."""
    from opsq.jobs import kinds

    if (job_id := _submit(lambda spec: kinds.put_spec(
            spec, local, remote, mode=mode, owner=owner, backup=backup), opts)) is not None:
        _show_finished(job_id, opts["as_json"], progress=not opts["as_json"])


@main.command()
@click.argument("remote", metavar="REMOTE")
@click.argument("dest", metavar="DEST")
@_job_options
@_errors
def get(remote: str, dest: str, **opts: Any) -> None:
    """Fetch the file REMOTE (absolute, no '..') from every host PATTERN selects (into the
    directory DEST/<host>/REMOTE with --wait; later: 'opsq result JOB --save DEST'). Over
    OPSQ_FETCH_LIMIT fails the host."""
    from opsq.jobs import kinds

    kinds.check_dest(dest)  # refused before a job exists, not after the hosts ran
    job_id = _submit(lambda spec: kinds.get_spec(spec, remote), opts)
    if job_id is not None:
        _show_finished(job_id, opts["as_json"], progress=not opts["as_json"],
                       save_to=dest)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("path", metavar="FILE")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@_job_options
@_errors
def script(path: str, args: tuple[str, ...], **opts: Any) -> None:
    """Run the local script FILE (with ARGS) on every host PATTERN selects, from a private
    temporary directory removed afterwards; its #! line says what runs it."""
    from opsq.jobs import kinds

    if (job_id := _submit(lambda spec: kinds.script_spec(spec, path, list(args)),
                          opts)) is not None:
        _show_finished(job_id, opts["as_json"], progress=not opts["as_json"],
                       stream=opts["stream"])


def _show_progress(done: int, total: int, counts: dict[str, int]) -> None:
    """On a terminal: one line redrawn in place, a bar and the counts by status; piped: a
    plain line at the end only."""
    tty = sys.stderr.isatty()
    if not tty and done < total:
        return
    width = PROGRESS_BAR_WIDTH
    filled = width * done // total if total else width
    bar = f"[{'#' * filled}{'.' * (width - filled)}] " if tty else ""
    line = f"  {bar}{done}/{total} hosts done"
    if counts:
        line += " (" + _count_line(counts) + ")"
    click.echo(("\r\x1b[K" if tty else "") + line, err=True, nl=not tty or done == total)


def _run_quick(command: str, opts: dict[str, Any]) -> None:
    """``opsq run`` through opsq.quick: without Celery or SQLAlchemy in the process."""
    from opsq import quick

    job_id, wait = quick.run(command, opts)
    click.echo(f"job {job_id}", err=True)
    finished, rows = wait(lambda text: click.echo(f"opsq: {text}", err=True))
    if (refusal := quick.refused(finished)) is not None:
        raise refusal
    _show_progress(len(rows), len(rows), finished.counts)
    _print_table(rows, finished)
    sys.exit(EXIT_OK if finished.succeeded else EXIT_HOST_FAILED)


def _show_finished(job_id: str, as_json: bool, progress: bool, timeout: float | None = None,
                   save_to: str | None = None, stream: bool = False) -> None:
    from opsq import jobs

    if stream and not as_json:
        jobs.follow_output(job_id, _print_line, follow=True)
    summary = jobs.wait(job_id, timeout=timeout,
                        on_counts=_show_progress if progress else None)
    _print_result(summary, as_json)
    if save_to is not None:
        _save(job_id, save_to)
    sys.exit(EXIT_OK if summary.succeeded else EXIT_HOST_FAILED)


def _save(job_id: str, dest: str) -> None:
    from opsq.jobs import kinds

    written = kinds.save_fetched(job_id, dest)
    click.echo(f"saved {len(written)} file(s) under {dest}/<host>/", err=True)


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
    # Only the start of each output is read: the table shows one line of it.
    _print_table(jobs.host_runs(summary.job_id, preview=True), summary)


def _print_table(runs: Any, summary: Any) -> None:
    """The result table: a line per host (``runs``: HostRun-like rows), then the job's."""
    rows = [("HOST", "STATUS", "EXIT", "TIME", "OUTPUT")]
    for h in runs:
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
    from opsq import jobs, quick  # jobs loads its modules on first use

    if not as_json and quick.enabled():
        # Counts only, without Celery or SQLAlchemy: a job of 100,000 hosts is one grouped
        # query (--json gives every host's status). Only pending hosts of a site ask
        # RabbitMQ whether the site has workers.
        s: Any = quick.status(job_id)
        waiting = [] if s.finished or not s.site_pending else jobs.waiting(job_id)
    else:
        s = jobs.summary(job_id) if as_json else jobs.progress(job_id)
        waiting = [] if s.finished else jobs.waiting(job_id)
    if as_json:
        click.echo(json.dumps({**s.as_dict(), "waiting": waiting}, indent=2))
        return
    counts = _count_line(s.counts)
    batch = f"  batch {s.batch}/{s.batches}" if s.batches else ""
    click.echo(f"{s.job_id}  {s.status.value}  {s.done}/{s.total} hosts done ({counts})"
               f"{batch}")
    for why in waiting:
        click.echo(why)
    if s.error:
        click.echo(f"error: {s.error}")


def _print_groups(job_id: str, as_json: bool) -> None:
    """The job's folded results (``opsq result --fold``), as ClusterShell's clush -b."""
    from opsq import jobs

    pages, offset = [], 0
    while True:
        page = jobs.groups(job_id, offset=offset)
        pages += page.groups
        offset += len(page.groups)
        if not page.groups or offset >= page.total:
            break
    if as_json:
        click.echo(json.dumps({"job_id": job_id, "groups": [g.as_dict() for g in pages]}))
        return
    for g in pages:
        said = ", ".join(f"{n} {s}" for s, n in sorted(g.statuses.items(),
                                                        key=lambda i: -i[1]))
        codes = f"; exit {', '.join(map(str, g.exit_codes))}" if g.exit_codes else ""
        title = f"{g.hosts} ({g.count}): {said}{codes}"
        rule = "-" * min(len(title), 79)
        _write_host_output(f"{rule}\n{title}\n{rule}\n")
        if g.error:
            click.echo(f"opsq: {g.error}")
        _write_host_output(g.stdout or "")
        if g.stderr:
            click.echo("--- stderr")
            _write_host_output(g.stderr)


@main.command()
@click.argument("job_id")
@click.option("--wait", "wait_", is_flag=True, help="Wait for the job to finish first.")
@click.option("--timeout", type=Seconds(MAX_WAIT), metavar="SECONDS",
              help="Give up waiting after this.")
@click.option("--json", "as_json", is_flag=True)
@click.option("-o", "--output", "full", is_flag=True, help="Print each host's full output.")
@click.option("--fold", is_flag=True,
              help="Each distinct output once, under the hosts that printed it "
                   "(web[01-97]), the largest group first.")
@click.option("--save", "save_to", metavar="DEST",
              help="A get job: write the fetched files to DEST/<host>/REMOTE.")
@_errors
def result(job_id: str, wait_: bool, timeout: float | None, as_json: bool, full: bool,
           fold: bool, save_to: str | None) -> None:
    """Each host's status, exit code, timing and output for a job."""
    from opsq import jobs

    if fold:
        if wait_:
            with contextlib.suppress(TimeoutError):  # then shown as it stands, not finished
                jobs.wait(job_id, timeout=timeout)
        _print_groups(job_id, as_json)
        summary = jobs.summary(job_id, with_hosts=False)
        sys.exit(EXIT_INPUT if not summary.finished
                 else EXIT_OK if summary.succeeded else EXIT_HOST_FAILED)
    if wait_:
        _show_finished(job_id, as_json, progress=False, timeout=timeout, save_to=save_to)
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
    if save_to is not None and summary.finished:
        _save(job_id, save_to)
    if not summary.finished:
        # A script reading the exit code must not take a job still running for a success.
        click.echo(f"opsq: job {summary.job_id} is not finished ({summary.status.value}, "
                   f"{summary.done}/{summary.total} hosts done): 'opsq result --wait "
                   f"{summary.job_id}' waits for it", err=True)
        sys.exit(EXIT_INPUT)
    sys.exit(EXIT_OK if summary.succeeded else EXIT_HOST_FAILED)


def _print_line(host: str, stream: str, line: str) -> None:
    """One line a host printed, prefixed by the host (``|`` stdout, ``!`` stderr); control
    characters escaped on a terminal."""
    text = printable(line) if sys.stdout.isatty() else line
    click.echo(f"{host} {'|' if stream == 'stdout' else '!'} {text}")


@main.command("logs")
@click.argument("job_id")
@click.argument("host", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the job ends.")
@_errors
def logs(job_id: str, host: str | None, follow: bool) -> None:
    """The output of a job's hosts (or of HOST), each line prefixed by its host: what is
    there now, or with -f as it arrives until the job ends."""
    from opsq import jobs

    jobs.follow_output(job_id, _print_line, host=host, follow=follow)


@main.command("cancel")
@click.argument("job_id")
@_errors
def cancel_cmd(job_id: str) -> None:
    """Stop a job: hosts not started are cancelled, running ones stopped on their host."""
    from opsq import jobs

    s = jobs.cancel(job_id)
    running = s.total - s.done
    click.echo(f"{s.job_id}  {s.status.value}  {s.counts.get('cancelled', 0)} host(s) "
               f"cancelled before starting" + (f"; stopping {running} running host(s)"
                                                if running else ""))


@main.command("rerun")
@click.argument("job_id")
@click.option("--failed", is_flag=True,
              help="Only the hosts that did not end ok (failed, timeout, unreachable...).")
@click.option("--wait", "wait_", is_flag=True, help="Wait and print the results.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_errors
def rerun_cmd(job_id: str, failed: bool, wait_: bool, as_json: bool) -> None:
    """Run job JOB_ID again, as it was submitted, on the same hosts (or only the failed
    ones); the new job records which job it repeats. Prints the new job's id."""
    from opsq import jobs

    spec = jobs.rerun_spec(job_id, failed_only=failed)
    hand_over = None
    if spec.params.get("become_prompt"):
        from opsq.app import app
        from opsq.jobs import become_password

        jobs.plan(spec)
        password = click.prompt("sudo password", hide_input=True, err=True)

        def hand_over(new_id: str) -> None:
            become_password.hand_over(app, new_id, password)

    result = jobs.submit(spec, before_publish=hand_over)
    if not wait_:
        click.echo(json.dumps({"job_id": result.id, "rerun_of": job_id}) if as_json
                   else result.id)
        return
    if not as_json:
        click.echo(f"job {result.id} (again: {job_id})", err=True)
    _show_finished(result.id, as_json, progress=not as_json, stream=False)


@main.command("jobs")
@click.option("-n", "--limit", default=20, show_default=True,
              type=click.IntRange(1, MAX_LISTED))
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
              help="With trust/retrust: seconds to wait for each host's key.")
@click.option("--yes", is_flag=True,
              help="With retrust: replace the keys without asking for each host.")
@_errors
def hosts(words: tuple[str, ...], inventory: str | None, timeout: float, yes: bool) -> None:
    """List the hosts PATTERN selects; 'hosts trust PATTERN' records their SSH keys.

    trust records the key of hosts that have none recorded, and refuses (exit 2) a host
    whose recorded keys do not include the one it offers; retrust replaces a host's
    recorded keys after showing the old and new fingerprints.

    \b
    opsq hosts 'web:!web3'
    opsq hosts trust fleet
    opsq hosts retrust web3
    """
    from opsq import jobs

    if words[0] in ("trust", "retrust"):
        if len(words) != 2:
            raise click.UsageError(f"usage: opsq hosts {words[0]} PATTERN")
        from opsq import limits
        from opsq.hostrun import hostkeys

        timeout = limits.seconds(timeout, "--timeout", limits.MAX_CONNECT_TIMEOUT)
        selected = jobs.resolve(words[1], inventory)
        if words[0] == "trust":
            sys.exit(hostkeys.trust(selected, timeout=timeout, echo=click.echo))
        sys.exit(hostkeys.retrust(selected, timeout=timeout, echo=click.echo,
                                  confirm=lambda text: yes or click.confirm(text)))
    if len(words) != 1:
        raise click.UsageError("usage: opsq hosts PATTERN (quote patterns with ! or &)")
    for h in jobs.load_inventory(inventory).select(words[0]):
        where = "local" if h.connection == "local" else f"{h.user + '@' if h.user else ''}" \
            f"{h.address}:{h.port}"
        click.echo(f"{h.name}\t{where}" + (f"\tnot runnable: {h.problem}" if h.problem else ""))


@main.group()
def db() -> None:
    """Database schema."""


@db.command()
@_errors
def upgrade() -> None:
    """Create the database if needed, apply every migration, and add the built-in
    maintenance schedules."""
    from opsq import schedules
    from opsq.settings import get_settings
    from opsq.store import schema

    schema.upgrade()
    schedules.ensure_builtin()
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
@click.option("--overlap", type=click.Choice(["skip", "allow"]), default="skip",
              show_default=True, help="While its previous job still runs, a firing starts "
                                      "nothing (skip, counted) or another job (allow).")
@_notify_option
@_errors
def schedule_add(name: str, command: tuple[str, ...], cron: str | None, every: str | None,
                 at: str | None, tz: str | None, pattern: str | None, inventory: str | None,
                 timeout: float | None, connect_timeout: float | None, task: str | None,
                 args_json: str | None, kwargs_json: str | None, disabled: bool,
                 overlap: str, notify: tuple[str, ...]) -> None:
    """Add schedule NAME: '-- JOB LINE', '-t PATTERN -- COMMAND' or '--task NAME'.

    A job line is an opsq run, put, get or script as typed at the command line, with all
    its options but -K and --wait; a put's or script's file is read now and kept with the
    schedule.

    \b
    opsq schedule add conf --every 1h -- put app.conf /etc/app.conf -t web --become
    opsq schedule add upgrade --cron '0 3 * * *' -- run 'apt-get -y upgrade' -t web \\
        --batch-size 25% --max-fail 1
    opsq schedule add disk --cron '0 2 * * *' --tz Europe/Paris -t db -- df -h /
    opsq schedule add ping --every 10m -t web -- true
    opsq schedule add once --at 2026-12-01T09:00 -t all -- reboot
    opsq schedule add report --cron '0 9 * * *' --task mypkg.tasks.daily_report
    """
    from opsq import schedules

    when = schedules.timing(cron, every, at, tz)
    if command and command[0] in JOB_COMMANDS and not pattern and not task:
        if inventory or timeout is not None or connect_timeout is not None or notify \
                or args_json or kwargs_json:
            raise click.UsageError("with a job line, give its options in the line (after "
                                   f"'-- {command[0]}')")
        row = schedules.add(name, when, schedules.SUBMIT_TASK, [],
                            _job_line_kwargs(list(command)), not disabled, overlap=overlap)
        click.echo(f"schedule {row.name} added; next run {_when(row.next_run_at)}")
        return
    if task:
        if command or pattern:
            raise click.UsageError("give either --task or '-t PATTERN -- COMMAND', not both")
        if notify:
            raise click.UsageError("--notify goes with '-t PATTERN -- COMMAND'")
        row = schedules.add(name, when, task, schedules.parse_json(args_json, "args", list),
                            schedules.parse_json(kwargs_json, "kwargs", dict), not disabled,
                            overlap=overlap)
    else:
        if not pattern or not command:
            raise click.UsageError("a fleet schedule needs -t PATTERN and '-- COMMAND'")
        if args_json or kwargs_json:
            raise click.UsageError("--args/--kwargs go with --task")
        # add() checks these (fleet_kwargs) and drops the options not given
        kwargs = {"command": " ".join(command), "pattern": pattern, "inventory": inventory,
                  "timeout": timeout, "connect_timeout": connect_timeout,
                  "notify": list(notify)}
        row = schedules.add(name, when, schedules.SUBMIT_TASK, [], kwargs, not disabled,
                            overlap=overlap)
    click.echo(f"schedule {row.name} added; next run {_when(row.next_run_at)}")


def _job_line_kwargs(words: list[str]) -> dict[str, Any]:
    """A schedule's kwargs for a job line, its file (a put's, a script's) stored now."""
    from opsq import jobs
    from opsq.store import db, files

    spec = job_line_spec(words)
    if spec.payload is not None:
        with db.session_scope() as session:
            files.store(session.connection(), [spec.payload])
    return {"spec": jobs.spec_to_dict(spec)}


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %Z") if value else "-"


def _what(row: Any) -> str:
    from opsq.jobs import mask_secrets
    from opsq.schedules import describe_fleet_job, masked_kwargs

    if (fleet := describe_fleet_job(row)) is not None:
        return fleet
    args = mask_secrets(repr(tuple(row.args))) if row.args else "()"
    return f"{row.task}{args} {masked_kwargs(row.kwargs) or ''}".rstrip()


def _expr(row: Any) -> str:
    from opsq.schedules import describe_timing

    return describe_timing(row)


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
    """The schedule as shown: secrets in its command, args and webhook URLs masked, as
    the console masks them."""
    from opsq.jobs import mask_secrets
    from opsq.schedules import masked_kwargs

    shown = {k: getattr(r, k) for k in (
        "name", "kind", "expression", "timezone", "task", "args", "kwargs", "enabled",
        "created_at", "updated_at", "last_run_at", "next_run_at", "run_count", "last_task_id",
        "overlap", "skipped_count", "last_skipped_at")}
    shown["kwargs"] = masked_kwargs(r.kwargs)
    shown["args"] = [mask_secrets(a) if isinstance(a, str) else a for a in r.args or []]
    return shown


@schedule.command("show")
@click.argument("name")
@click.option("-n", "--limit", default=10, show_default=True, help="Recent jobs shown.")
@_errors
def schedule_show(name: str, limit: int) -> None:
    """One schedule, with its recent jobs."""
    from opsq import schedules

    r = schedules.get(name)
    recent = schedules.recent_jobs(r.id, limit)  # a bad -n is refused before any output
    for key, value in _schedule_dict(r).items():
        click.echo(f"{key:<13} {value}")
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
@_notify_option
@click.argument("job", nargs=-1)
@click.option("--no-notify", is_flag=True, help="Drop the schedule's --notify URLs.")
@click.option("--overlap", type=click.Choice(["skip", "allow"]),
              help="While its previous job still runs: skip the firing, or allow another.")
@_errors
def schedule_edit(name: str, cron: str | None, every: str | None, at: str | None,
                  tz: str | None, pattern: str | None, command: str | None,
                  timeout: float | None, notify: tuple[str, ...], no_notify: bool,
                  overlap: str | None, job: tuple[str, ...]) -> None:
    """Change a schedule's timing, command or whole job ('-- JOB LINE'); beat picks it
    up within a second."""
    from opsq import schedules

    if job:
        if pattern or command or timeout is not None or notify or no_notify:
            raise click.UsageError("with a job line, give its options in the line")
        when = schedules.timing(cron, every, at, tz) if (cron or every or at) else None
        r = schedules.edit(name, when=when, kwargs_update=_job_line_kwargs(list(job)),
                           overlap=overlap)
        click.echo(f"schedule {r.name}: {_expr(r)}; next run {_when(r.next_run_at)}")
        return

    when = schedules.timing(cron, every, at, tz) if (cron or every or at) else None
    if tz and when is None:
        raise click.UsageError("--tz goes with --cron or --at")
    update = {k: v for k, v in (("pattern", pattern), ("command", command),
                                ("timeout", timeout)) if v is not None}
    if notify and no_notify:
        raise click.UsageError("give either --notify or --no-notify")
    if notify or no_notify:
        update["notify"] = list(notify)  # the new list replaces the old one
    if when is None and not update and overlap is None:
        raise click.UsageError("nothing to change")
    r = schedules.edit(name, when=when, kwargs_update=update, overlap=overlap)
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


def _site_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--site", "sites", multiple=True, callback=_check_sites, metavar="SITE",
        help="On a site's machine: a fleet-SITE node for the hosts whose opsq_site is SITE "
             "(repeatable), and no control node or beat.")(fn)


def _check_sites(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
                 ) -> tuple[str, ...]:
    from opsq.errors import InventoryError
    from opsq.inventory.hosts import check_site

    try:
        return tuple(dict.fromkeys(check_site(v, "--site") or "" for v in value))
    except InventoryError as exc:
        raise click.BadParameter(str(exc)) from None


@daemons.command("start")
@click.option("--no-beat", is_flag=True, help="Start the workers only.")
@_site_option
def daemons_start(no_beat: bool, sites: tuple[str, ...]) -> None:
    """Start the fleet and control nodes and beat; clears stale pid files first."""
    from opsq.worker import daemons as d

    sys.exit(d.start(with_beat=not no_beat, echo=click.echo, sites=sites))


@daemons.command("stop")
@click.option("--no-beat", is_flag=True, help="Leave beat running.")
@_site_option
def daemons_stop(no_beat: bool, sites: tuple[str, ...]) -> None:
    """Stop after the running tasks finish (warm shutdown); nothing is lost."""
    from opsq.worker import daemons as d

    sys.exit(d.stop(with_beat=not no_beat, echo=click.echo, sites=sites))


@daemons.command("restart")
@click.option("--no-beat", is_flag=True)
@_site_option
def daemons_restart(no_beat: bool, sites: tuple[str, ...]) -> None:
    """Restart the nodes (warm) and beat."""
    from opsq.worker import daemons as d

    sys.exit(d.restart(with_beat=not no_beat, echo=click.echo, sites=sites))


@daemons.command("status")
@_site_option
def daemons_status(sites: tuple[str, ...]) -> None:
    """Each node's pid and whether it answers a Celery ping."""
    from opsq.worker import daemons as d

    sys.exit(d.status(echo=click.echo, sites=sites))


@main.command()
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Address to listen on (the figures name hosts and commands' outcomes: "
                   "keep it private).")
@click.option("--port", type=click.IntRange(1, 65535), default=9808, show_default=True)
@_errors
def metrics(address: str, port: int) -> None:
    """Serve opsq's Prometheus metrics at http://ADDRESS:PORT/metrics, where the console
    (which serves them at /api/v1/metrics) does not run."""
    import time

    from prometheus_client import start_http_server

    from opsq.worker.metrics import registry

    start_http_server(port, addr=address, registry=registry())
    click.echo(f"metrics at http://{address}:{port}/metrics", err=True)
    while True:
        time.sleep(3600)


@main.command()
@_errors
def flower() -> None:
    """Start Flower on OPSQ_FLOWER_ADDRESS:OPSQ_FLOWER_PORT with authentication."""
    from opsq.worker.flower import exec_flower

    exec_flower()


@main.group()
def users() -> None:
    """Users of the web console and REST API (opsq web)."""


def _operator_name() -> str:
    import getpass

    try:
        return "cli:" + getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return "cli:unknown"


def _read_password() -> str:
    if sys.stdin.isatty():
        return click.prompt("password", hide_input=True, confirmation_prompt=True, err=True)
    return sys.stdin.readline().rstrip("\r\n")


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), required=True,
              help="viewer reads; operator also runs jobs and edits schedules; admin also "
                   "manages users and reads the audit log.")
@_errors
def users_add(name: str, role: str) -> None:
    """Add user NAME; the password is asked twice (or read from stdin when piped)."""
    from opsq.web import users as u

    u.check_name(name)  # a bad name is refused before the prompt
    u.add(name, role, u.check_password(_read_password()), by=_operator_name())
    click.echo(f"user {name} added ({role})")


@users.command("token")
@click.argument("name")
@click.option("--name", "token_name", metavar="LABEL",
              help="What the token is for (ci-deploy); default token-<random>.")
@click.option("--expires", metavar="LIFETIME",
              help="Refused after this long: N and h, d or w (90d); default never.")
@_errors
def users_token(name: str, token_name: str | None, expires: str | None) -> None:
    """Print a new API token for NAME (shown once: only its hash is kept)."""
    from opsq.web import users as u

    click.echo(u.new_token(name, by=_operator_name(), token_name=token_name,
                           lifetime=u.parse_lifetime(expires)))


@users.command("tokens")
@click.argument("name")
@_errors
def users_tokens(name: str) -> None:
    """NAME's API tokens: name, made, last used, expiry (never the tokens)."""
    from opsq.web import users as u

    def when(value: Any) -> str:
        return f"{value:%Y-%m-%d %H:%M}" if value else "-"

    for t in u.tokens(name):
        state = " (expired)" if t.expired else ""
        click.echo(f"{t.id:<6} {t.name:<24} made {when(t.created_at)}  used "
                   f"{when(t.last_used_at):<16}  expires {when(t.expires_at)}{state}")


@users.command("revoke")
@click.argument("name")
@click.argument("token")
@_errors
def users_revoke(name: str, token: str) -> None:
    """Revoke NAME's API token TOKEN (its name or id, as opsq users tokens lists it)."""
    from opsq.web import users as u

    click.echo(f"token {u.revoke(name, token, by=_operator_name())} of {name} revoked")


@users.command("role")
@click.argument("name")
@click.argument("role", type=click.Choice(["viewer", "operator", "admin"]))
@_errors
def users_role(name: str, role: str) -> None:
    """Give NAME another role; their console sessions end."""
    from opsq.web import users as u

    u.set_role(name, role, by=_operator_name())
    click.echo(f"user {name} is now {role}")


@users.command("passwd")
@click.argument("name")
@_errors
def users_passwd(name: str) -> None:
    """Set NAME's password (asked twice, or read from stdin); their sessions end."""
    from opsq.web import users as u

    u.check_name(name)
    u.set_password(name, u.check_password(_read_password()), by=_operator_name())
    click.echo(f"password of {name} changed")


@users.command("rm")
@click.argument("name")
@_errors
def users_rm(name: str) -> None:
    """Remove user NAME and their API tokens."""
    from opsq.web import users as u

    u.remove(name, by=_operator_name())
    click.echo(f"user {name} removed")


@users.command("list")
@_errors
def users_list() -> None:
    """Every user with their role and how many API tokens they have."""
    from opsq.web import users as u

    for r in u.all_users():
        state = " disabled" if r.disabled else ""
        click.echo(f"{r.name:<24} {r.role:<9} tokens {r.tokens:<3} "
                   f"created {r.created_at:%Y-%m-%d %H:%M}{state}")


@main.command()
@_errors
def web() -> None:
    """Serve the web console and REST API on OPSQ_WEB_ADDRESS:OPSQ_WEB_PORT (needs a user,
    see opsq users add, unless OPSQ_WEB_NO_AUTH on loopback)."""
    from opsq.web.app import serve

    serve()


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url.removeprefix("db+")).render_as_string(hide_password=True)


if __name__ == "__main__":  # pragma: no cover
    main()
