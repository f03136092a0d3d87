"""deploy/: the systemd units, their environment file and the broker and database setup,
checked against the real thing.

The units' command lines are expanded the way systemd expands them (a tiny expander
below) and run: the worker nodes must start under ``celery multi``, answer a ping with
the pools and queues opsq's own daemon command gives them, warm-restart and stop; beat
must lead; Flower and the web console must ask for a login. rabbitmq-setup.sh and
postgres-setup.sql run against throwaway vhost, user, role and database names, removed
afterwards. Every process a test starts carries a marker in its environment and is killed
by it at the end, pass or fail. The nginx example runs in front of a stand-in console.

systemd-analyze and nginx are installed with apt-get when missing and the tests run as
root; otherwise their tests are skipped, saying so.
"""

from __future__ import annotations

import base64
import contextlib
import grp
import hashlib
import hmac
import http.server
import ipaddress
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ROOT, alive, free_port

DEPLOY = ROOT / "deploy"
ENV_FILE = DEPLOY / "opsq.env"
UNIT_DIR = DEPLOY / "systemd"
UNITS = ("opsq-workers", "opsq-beat", "opsq-flower", "opsq-web")
NGINX_SITE = DEPLOY / "nginx" / "opsq-web.conf"
RABBIT_SETUP = DEPLOY / "rabbitmq-setup.sh"
POSTGRES_SETUP = DEPLOY / "postgres-setup.sql"
#: Seconds for nodes, beat or Flower to come up, and for nodes to stop.
START_TIMEOUT = 60
STOP_TIMEOUT = 60
#: Highest `systemd-analyze security` exposure the units may have (0 best, 10 worst).
MAX_EXPOSURE = 5.0
#: The class `celery inspect stats` reports for each -P pool name.
POOL_CLASSES = {"threads": "celery.concurrency.thread:TaskPool",
                "prefork": "celery.concurrency.prefork:TaskPool"}
#: Environment variable whose value marks the processes a test started.
MARK = "OPSQ_DEPLOYTEST_MARK"
#: Seconds one apt-get run may take when a test installs the tool it checks with.
APT_TIMEOUT = 600
#: Seconds the stand-in console holds a live stream open between its two events.
STREAM_HOLD = 10
#: Settings from the test run that replace the server's values in the env file.
RUN_SETTINGS = ("OPSQ_BROKER_URL", "OPSQ_DATABASE_URL", "OPSQ_INVENTORY", "OPSQ_KNOWN_HOSTS",
                "OPSQ_CONNECT_TIMEOUT", "OPSQ_COMMAND_TIMEOUT", "OPSQ_ENV_FILE")


# -- reading the files as systemd and a shell do ----------------------------------------


def source_env_file(path: Path = ENV_FILE) -> dict[str, str]:
    """The variables ``set -a; . FILE`` defines in bash (the file's own, nothing else)."""
    script = 'set -a; . "$1"; set +a; env -0'
    clean = {"PATH": "/usr/bin:/bin"}
    base = subprocess.run(["bash", "-c", "env -0"], env=clean, capture_output=True,
                          check=True).stdout
    out = subprocess.run(["bash", "-c", script, "_", str(path)], env=clean,
                         capture_output=True, check=True).stdout

    def parse(raw: bytes) -> dict[str, str]:
        return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)

    before, after = parse(base), parse(out)
    return {k: v for k, v in after.items() if k not in before}


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file's sections as (key, value) lists, with systemd's line continuation."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        assert "=" in line, f"{path.name}: not KEY=VALUE: {line!r}"
        key, value = line.split("=", 1)
        sections[current].append((key.strip(), value.strip()))
    assert not pending, f"{path.name}: ends inside a continued line"
    return sections


def unit_values(path: Path, section: str, key: str) -> list[str]:
    return [v for k, v in parse_unit(path).get(section, []) if k == key]


def unit_value(path: Path, section: str, key: str) -> str:
    values = unit_values(path, section, key)
    assert len(values) == 1, f"{path.name}: [{section}] {key}= set {len(values)} times"
    return values[0]


VAR_BRACED = re.compile(r"\$\{(\w+)\}")
VAR_WORD = re.compile(r"\$(\w+)")


def systemd_expand(command: str, env: dict[str, str]) -> list[str]:
    """argv systemd builds from an Exec*= value: words (quotes honoured), then variables.

    ``${VAR}`` is replaced in place and stays part of its word; ``$VAR`` standing as a
    word of its own is split at whitespace; ``$VAR`` inside a word is left alone (a shell
    run by the command may expand it); ``$$`` is a dollar sign.
    """
    command = command.lstrip("-@:+!")
    argv: list[str] = []
    for word in shlex.split(command):
        whole = VAR_WORD.fullmatch(word)
        if whole:
            argv.extend(shlex.split(env.get(whole.group(1), "")))
            continue
        parts = word.split("$$")
        parts = [VAR_BRACED.sub(lambda m: env.get(m.group(1), ""), p) for p in parts]
        argv.append("$".join(parts))
    return argv


def unit_variables(path: Path) -> set[str]:
    """Every variable an Exec*= line of the unit uses, for systemd or for its shell."""
    names: set[str] = set()
    for key, value in parse_unit(path)["Service"]:
        if key.startswith("Exec"):
            names.update(VAR_BRACED.findall(value))
            names.update(VAR_WORD.findall(value))
    return names


# -- processes ----------------------------------------------------------------------------


def marked_pids(marker: str) -> list[int]:
    """Processes whose environment carries ``MARK=marker`` (any depth of children)."""
    needle = f"{MARK}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_marked(marker: str) -> None:
    """SIGKILL every process of this test still running, and wait until they are gone."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = [p for p in marked_pids(marker) if alive(p)]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


@pytest.fixture
def marker() -> Iterator[str]:
    mark = secrets.token_hex(8)
    yield mark
    kill_marked(mark)


def unit_env(tmp_path: Path, marker: str, **extra: str) -> dict[str, str]:
    """The env file's variables, pointed at this test run: its celery, broker, database
    and tmp_path for pid files and logs."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "LANG": "C.UTF-8"}
    env.update(source_env_file())
    env.update({k: os.environ[k] for k in RUN_SETTINGS if k in os.environ})
    run, log = tmp_path / "run", tmp_path / "log"
    run.mkdir(exist_ok=True)
    log.mkdir(exist_ok=True)
    env.update({
        "CELERY_BIN": f"{sys.executable} -m celery",
        "OPSQ_BIN": str(Path(sys.executable).parent),
        "CELERYD_PID_FILE": f"{run}/%n.pid",
        "CELERYD_LOG_FILE": f"{log}/%n%I.log",
        "CELERYBEAT_PID_FILE": f"{run}/beat.pid",
        "CELERYBEAT_LOG_FILE": f"{log}/beat.log",
        "OPSQ_RUN_DIR": str(run),
        "OPSQ_LOG_DIR": str(log),
        "OPSQ_FLOWER_DB": str(tmp_path / "flower.db"),
        MARK: marker,
    })
    env.update(extra)
    return env


def run_unit_command(unit: str, key: str, env: dict[str, str], cwd: Path,
                     timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess[str]:
    argv = systemd_expand(unit_value(UNIT_DIR / f"{unit}.service", "Service", key), env)
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                     for p in sorted((tmp_path / "log").glob("*.log")))


# -- the environment file -----------------------------------------------------------------


def test_env_file_is_in_the_syntax_systemd_and_bash_agree_on():
    # systemd's EnvironmentFile= and bash's `.` differ on $, backticks, backslashes and
    # unbalanced quotes: the file must stay within the subset both read the same way.
    line_ok = re.compile(r'[A-Z_][A-Z0-9_]*=("[^"$`\\]*"|[^"\'$`\\\s]*)')
    for n, line in enumerate(ENV_FILE.read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            assert line_ok.fullmatch(line), f"opsq.env:{n}: {line!r}"


def test_env_file_sources_and_defines_what_the_units_use():
    env = source_env_file()
    for name in ("CELERY_BIN", "CELERY_APP", "CELERYD_NODES", "CELERYD_OPTS",
                 "CELERYD_PID_FILE", "CELERYD_LOG_FILE", "CELERYD_LOG_LEVEL",
                 "CELERYBEAT_PID_FILE", "CELERYBEAT_LOG_FILE", "OPSQ_BIN"):
        assert env.get(name), f"{name} is not set by opsq.env"
    assert env["CELERY_APP"] == "opsq"
    assert env["CELERY_BIN"] == "/opt/opsq/venv/bin/celery"
    assert env["OPSQ_BIN"] == "/opt/opsq/venv/bin"
    for unit in UNITS:
        missing = unit_variables(UNIT_DIR / f"{unit}.service") - set(env)
        assert not missing, f"{unit}.service uses {missing}, which opsq.env does not define"
    # No secrets in the world-readable file.
    for name in ("OPSQ_BROKER_URL", "OPSQ_DATABASE_URL", "OPSQ_BROKER_API",
                 "OPSQ_FLOWER_PASSWORD", "OPSQ_WEB_SECRET", "OPSQ_WEBHOOK_SECRET"):
        assert name not in env, f"{name} belongs in /etc/opsq/secrets.env"


def _multi_layout(argv: list[str], action: str) -> tuple[list[str], dict[tuple[str, str], str]]:
    """Nodes and per-node -Q/-P/-c options of a `celery multi ACTION ...` argv."""
    rest = argv[argv.index(action) + 1:]
    nodes = []
    while rest and not rest[0].startswith("-"):
        nodes.append(rest.pop(0))
    per_node = {}
    for i, word in enumerate(rest):
        m = re.fullmatch(r"-([QPc]):(\w+)", word)
        if m:
            per_node[(m.group(1), m.group(2))] = rest[i + 1]
    return nodes, per_node


def test_env_file_gives_the_nodes_opsqs_daemon_command_starts():
    from opsq.worker.daemons import multi_args

    env = source_env_file()
    ours = systemd_expand("/bin/true multi start $CELERYD_NODES $CELERYD_OPTS", env)
    our_nodes, our_opts = _multi_layout(ours, "start")
    theirs = multi_args("start")
    their_nodes, their_opts = _multi_layout(theirs, "start")
    assert our_nodes == their_nodes
    assert our_opts == their_opts
    assert {k for k, _ in our_opts} == {"Q", "P", "c"}
    # Same file names as opsq's own daemons, in the directories opsq's settings name, so
    # `opsq daemons status` finds the pid files.
    pidfile = next(a for a in theirs if a.startswith("--pidfile=")).split("=", 1)[1]
    logfile = next(a for a in theirs if a.startswith("--logfile=")).split("=", 1)[1]
    assert Path(env["CELERYD_PID_FILE"]) == Path(env["OPSQ_RUN_DIR"]) / Path(pidfile).name
    assert Path(env["CELERYD_LOG_FILE"]) == Path(env["OPSQ_LOG_DIR"]) / Path(logfile).name
    assert Path(env["CELERYBEAT_PID_FILE"]) == Path(env["OPSQ_RUN_DIR"]) / "beat.pid"
    if "OPSQ_FLEET_CONCURRENCY" in env:
        assert our_opts[("c", "fleet")] == env["OPSQ_FLEET_CONCURRENCY"]


def test_env_file_settings_load_in_opsq(tmp_path):
    env = {**source_env_file(), "PATH": os.environ["PATH"], "OPSQ_ENV_FILE": "/nonexistent"}
    code = ("from opsq.settings import get_settings; s = get_settings(); "
            "print(s.run_path(), s.log_path(), s.inventory_path(), s.known_hosts_path(), "
            "s.flower_address, s.flower_port, s.flower_db, s.web_address, s.web_port, "
            "s.web_secure_cookies, s.web_trusted_proxies, s.web_max_body)")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["/run/opsq", "/var/log/opsq", "/etc/opsq/inventory.yml",
                   "/var/lib/opsq/.ssh/known_hosts", "127.0.0.1", "5555",
                   "/var/lib/opsq/flower.db", "127.0.0.1", "8000", "True", "127.0.0.1",
                   "1048576"]


# -- the unit files -----------------------------------------------------------------------


@pytest.mark.parametrize("unit", UNITS)
def test_unit_has_what_the_deployment_relies_on(unit):
    path = UNIT_DIR / f"{unit}.service"
    service = dict(parse_unit(path)["Service"])
    assert service["User"] == service["Group"] == "opsq"
    assert unit_values(path, "Service", "EnvironmentFile") == [
        "/etc/opsq/opsq.env", "-/etc/opsq/secrets.env"]
    assert service["Restart"] == "always"
    assert service["Type"] == ("forking" if unit == "opsq-workers" else "simple")
    for key, value in {"NoNewPrivileges": "yes", "PrivateTmp": "yes",
                       "ProtectSystem": "full"}.items():
        assert service.get(key) == value, f"{unit}: {key}={service.get(key)}"
    assert dict(parse_unit(path)["Install"])["WantedBy"] == "multi-user.target"
    for key, value in parse_unit(path)["Service"]:
        if key.startswith("Exec"):
            program = shlex.split(value.lstrip("-@:+!"))[0]
            # systemd refuses a variable as the program.
            assert program.startswith("/") and "$" not in program, f"{key}={value}"
            assert os.access(program, os.X_OK), program


def test_worker_unit_main_pid_is_the_fleet_nodes_pid_file():
    # Type=forking with two daemons: systemd needs PIDFile= to know which one to watch.
    env = source_env_file()
    first_node = env["CELERYD_NODES"].split()[0]
    pidfile = unit_value(UNIT_DIR / "opsq-workers.service", "Service", "PIDFile")
    assert pidfile == env["CELERYD_PID_FILE"].replace("%n", first_node)


def _hidden_or_read_only(service: dict[str, str]) -> tuple[list[str], list[str]]:
    """Paths a unit's sandbox hides and paths it makes read-only (systemd.exec(5))."""
    hidden, read_only = [], []
    read_only += {"yes": ["/usr", "/boot", "/efi"], "true": ["/usr", "/boot", "/efi"],
                  "full": ["/usr", "/boot", "/efi", "/etc"], "strict": ["/"]}.get(
                      service.get("ProtectSystem", "no"), [])
    home = service.get("ProtectHome", "no")
    if home in ("yes", "true", "tmpfs"):
        hidden += ["/home", "/root", "/run/user"]
    elif home == "read-only":
        read_only += ["/home", "/root", "/run/user"]
    hidden += service.get("InaccessiblePaths", "").split()
    read_only += service.get("ReadOnlyPaths", "").split()
    return hidden, read_only


def _under(path: str, tops: list[str]) -> bool:
    return any(Path(path).is_relative_to(t) for t in tops if t)


@pytest.mark.parametrize("unit", UNITS)
def test_unit_sandbox_leaves_the_ssh_key_readable_and_the_state_writable(unit):
    env = source_env_file()
    service = dict(parse_unit(UNIT_DIR / f"{unit}.service")["Service"])
    hidden, read_only = _hidden_or_read_only(service)
    writable = [w for w in service.get("ReadWritePaths", "").split()]
    home = _sysusers_home()
    must_write = [str(Path(env[k]).parent) for k in (
        "CELERYD_PID_FILE", "CELERYD_LOG_FILE", "CELERYBEAT_PID_FILE", "CELERYBEAT_LOG_FILE",
        "OPSQ_FLOWER_DB")] + [service["WorkingDirectory"], home]
    must_read = [env["OPSQ_KNOWN_HOSTS"], f"{home}/.ssh/id_ed25519", env["OPSQ_INVENTORY"]]
    for path in must_write:
        assert not _under(path, hidden), f"{unit}: {path} is hidden by the sandbox"
        assert not _under(path, read_only) or _under(path, writable), \
            f"{unit}: {path} is read-only in the sandbox"
    for path in must_read:
        assert not _under(path, hidden), f"{unit}: {path} is hidden by the sandbox"
    # The opsq user's SSH material lives in its home.
    assert Path(env["OPSQ_KNOWN_HOSTS"]).parent == Path(home) / ".ssh"


def _installed(binary: str, *packages: str) -> str:
    """The path of ``binary``; when it is missing, the first of ``packages`` apt-get can
    install is installed (as root only). Skips the test, saying why, when none can be.

    Debian's nginx package starts its own service on install unless policy-rc.d forbids
    it (as container images do): on a workstation, install nginx before running these.
    """
    search = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    if found := shutil.which(binary, path=search):
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{binary} is not installed, and only root with apt-get may install it "
                    f"here (apt-get install {packages[0]})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    said = []
    for refresh in (False, True):  # the package lists may be missing or stale
        if refresh:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True,
                           timeout=APT_TIMEOUT)
        for package in packages:
            r = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends",
                                package], env=env, capture_output=True, text=True,
                               timeout=APT_TIMEOUT)
            if r.returncode == 0 and (found := shutil.which(binary, path=search)):
                return found
            said.append(f"{package}: {(r.stderr.strip().splitlines() or ['no output'])[-1]}")
    pytest.skip(f"{binary} is not installed and apt-get could not install it: "
                + "; ".join(said))


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    return _installed("systemd-analyze", "systemd")


def _verify_complaints(systemd_analyze: str, units: list[Path]) -> tuple[int, list[str], str]:
    """(exit status, the lines about these unit files, all output) of systemd-analyze
    verify on ``units``.

    verify also loads the host's units the given ones refer to (multi-user.target,
    network-online.target...) and may warn about those or about the host itself (no
    systemd running in a container): such lines do not name one of these files or units
    and are left out. It checks that each Exec program exists, which needs no stand-in
    here: every unit runs /bin/sh (the real program is behind a variable, which verify
    does not expand), so the files are verified as installed, from where they are.
    """
    r = subprocess.run([systemd_analyze, "verify", "--man=no", *map(str, units)],
                       capture_output=True, text=True, timeout=60)
    output = r.stdout + r.stderr
    ours = [str(u) for u in units] + [u.name for u in units]
    about_ours = [line for line in output.splitlines() if any(n in line for n in ours)]
    return r.returncode, about_ours, output


def test_systemd_analyze_verify_accepts_every_unit(systemd_analyze):
    units = sorted(UNIT_DIR.glob("*.service"))
    assert {u.stem for u in units} == set(UNITS), "a unit in deploy/systemd is not tested"
    code, about_ours, output = _verify_complaints(systemd_analyze, units)
    # Unknown keys and bad values are only warnings to systemd (exit 0): fail on them too.
    assert code == 0 and not about_ours, output


def test_systemd_analyze_verify_check_sees_a_broken_unit(systemd_analyze, tmp_path):
    # The check above passes on silence; prove that it hears a typo and a bad value.
    broken = tmp_path / "opsq-web.service"
    text = (UNIT_DIR / "opsq-web.service").read_text()
    broken.write_text(text.replace("ProtectSystem=full", "ProtectSytem=full")
                      .replace("RestartSec=5", "RestartSec=five"))
    code, about_ours, output = _verify_complaints(systemd_analyze, [broken])
    assert any("ProtectSytem" in line for line in about_ours), output
    assert any("five" in line for line in about_ours), output


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_security_exposure_stays_low(unit, systemd_analyze):
    r = subprocess.run([systemd_analyze, "security", "--offline=true", "--no-pager",
                        str(UNIT_DIR / f"{unit}.service")],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, r.stdout


# -- the user and its directories ---------------------------------------------------------


def _sysusers_home() -> str:
    for line in (DEPLOY / "sysusers.d" / "opsq.conf").read_text().splitlines():
        if line.startswith("u"):
            return shlex.split(line)[4]
    raise AssertionError("sysusers.d/opsq.conf defines no user")


@pytest.fixture
def sysroot() -> Iterator[Path]:
    # Not under pytest's tmp_path: its 0700 parents would stop the opsq uid at the door.
    root = Path(tempfile.mkdtemp(prefix="opsq-sysroot-"))
    root.chmod(0o755)
    (root / "etc").mkdir()
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(not (shutil.which("systemd-sysusers") and shutil.which("systemd-tmpfiles")),
                    reason="systemd-sysusers/systemd-tmpfiles not installed")
def test_sysusers_and_tmpfiles_give_opsq_its_home_and_directories(sysroot):
    subprocess.run(["systemd-sysusers", f"--root={sysroot}",
                    str(DEPLOY / "sysusers.d" / "opsq.conf")], check=True, capture_output=True)
    entry = next(line.split(":") for line in (sysroot / "etc/passwd").read_text().splitlines()
                 if line.startswith("opsq:"))
    uid, gid, home, shell = int(entry[2]), int(entry[3]), entry[5], entry[6]
    assert home == "/var/lib/opsq" and shell.endswith("nologin")
    r = subprocess.run(["systemd-tmpfiles", f"--root={sysroot}", "--create",
                        str(DEPLOY / "tmpfiles.d" / "opsq.conf")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    env = source_env_file()
    dirs = {str(Path(env["CELERYD_PID_FILE"]).parent), str(Path(env["CELERYD_LOG_FILE"]).parent),
            home, f"{home}/.ssh"}
    for d in dirs:
        st = (sysroot / d.lstrip("/")).stat()
        assert (st.st_uid, st.st_gid) == (uid, gid), d
    assert stat.S_IMODE((sysroot / home.lstrip("/") / ".ssh").stat().st_mode) == 0o700
    # What the permissions mean: the opsq uid writes its directories and reads its key;
    # another unprivileged user cannot even list ~/.ssh.
    key = sysroot / home.lstrip("/") / ".ssh" / "id_ed25519"
    key.write_text("not a real key\n")
    os.chown(key, uid, gid)
    key.chmod(0o600)
    # /bin/sh, not this interpreter: the opsq uid may not reach a virtualenv under /root.
    check = 'cat "$1"; shift; for d; do echo x > "$d/probe" || exit 1; done'
    as_opsq = subprocess.run(
        ["/bin/sh", "-c", check, "_", str(key), *(str(sysroot / d.lstrip("/")) for d in dirs)],
        user=uid, group=gid, extra_groups=[], capture_output=True, text=True, cwd="/")
    assert as_opsq.returncode == 0 and as_opsq.stdout.strip() == "not a real key", \
        as_opsq.stderr
    nobody = subprocess.run(["/bin/ls", str(key.parent)], user=65534, group=65534,
                            extra_groups=[], capture_output=True, cwd="/")
    assert nobody.returncode != 0


@pytest.mark.skipif(not shutil.which("logrotate"), reason="logrotate not installed")
def test_logrotate_config_parses(tmp_path):
    # The opsq user does not exist here: rotate as the current user instead.
    me = os.getuid()
    text = (DEPLOY / "logrotate.d" / "opsq").read_text()
    assert "su opsq opsq" in text
    text = text.replace("su opsq opsq",
                        f"su {pwd.getpwuid(me).pw_name} {grp.getgrgid(os.getgid()).gr_name}")
    text = text.replace("/var/log/opsq", str(tmp_path))
    (tmp_path / "fleet.log").write_text("x\n")
    conf = tmp_path / "opsq.logrotate"
    conf.write_text(text)
    r = subprocess.run(["logrotate", "--debug", "--state", str(tmp_path / "state"), str(conf)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "error" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert "fleet.log" in r.stdout + r.stderr


# -- the units' commands, run ---------------------------------------------------------------


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _wait_for_nodes(names: set[str], pidfiles: list[Path], old: dict[Path, int | None],
                    tmp_path: Path) -> None:
    """Until every node has a new live pid and answers a ping."""
    from opsq.app import app

    deadline = time.monotonic() + START_TIMEOUT
    answered: set[str] = set()
    while time.monotonic() < deadline:
        pids = {p: _pid(p) for p in pidfiles}
        fresh = all(pid and pid != old.get(p) and alive(pid) for p, pid in pids.items())
        if fresh:
            answered = {k for r in app.control.ping(destination=list(names), timeout=1) or []
                        for k in r}
            if answered >= names:
                return
        time.sleep(0.2)
    raise AssertionError(f"nodes did not come up (answered: {answered}):\n{logs(tmp_path)}")


def test_worker_unit_starts_reloads_and_stops_both_nodes(services, tmp_path, marker):
    from opsq.app import CONTROL_QUEUES, FLEET_QUEUE, app

    env = unit_env(tmp_path, marker)
    host = socket.gethostname()
    node_names = env["CELERYD_NODES"].split()
    names = {f"{n}@{host}" for n in node_names}
    pidfiles = [tmp_path / "run" / f"{n}.pid" for n in node_names]

    r = run_unit_command("opsq-workers", "ExecStart", env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr + logs(tmp_path)
    _wait_for_nodes(names, pidfiles, {}, tmp_path)

    # The pools, concurrency and queues opsq's daemon command gives them.
    inspect = app.control.inspect(destination=list(names), timeout=5)
    stats, queues = inspect.stats() or {}, inspect.active_queues() or {}
    control = f"control@{host}"
    opts = _multi_layout(systemd_expand("/bin/true multi start $CELERYD_NODES $CELERYD_OPTS",
                                        env), "start")[1]
    for node in node_names:
        pool = stats[f"{node}@{host}"]["pool"]
        assert pool["implementation"] == POOL_CLASSES[opts[("P", node)]], pool
        assert pool["max-concurrency"] == int(opts[("c", node)]), pool
        assert [q["name"] for q in queues[f"{node}@{host}"]] == opts[("Q", node)].split(",")
    assert len(stats[control]["pool"]["processes"]) == int(opts[("c", "control")])
    assert opts[("Q", "fleet")] == FLEET_QUEUE and opts[("Q", "control")] == CONTROL_QUEUES

    # ExecReload, systemctl reload: a warm restart, each node under a new pid.
    before = {p: _pid(p) for p in pidfiles}
    r = run_unit_command("opsq-workers", "ExecReload", env, tmp_path, timeout=STOP_TIMEOUT * 2)
    assert r.returncode == 0, r.stdout + r.stderr + logs(tmp_path)
    _wait_for_nodes(names, pidfiles, before, tmp_path)

    # ExecStop: every node gone, no pid file left.
    running = [pid for p in pidfiles if (pid := _pid(p))]
    r = run_unit_command("opsq-workers", "ExecStop", env, tmp_path, timeout=STOP_TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr + logs(tmp_path)
    assert not [p for p in pidfiles if p.exists()], list((tmp_path / "run").iterdir())
    assert not [pid for pid in running if alive(pid)]
    assert not [pid for pid in marked_pids(marker) if alive(pid)]


def _wait_for(predicate, what: str, proc: subprocess.Popen, tmp_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    out = proc.stdout.read() if proc.stdout and proc.poll() is not None else ""
    raise AssertionError(f"{what} (exit {proc.poll()}):\n{out}\n{logs(tmp_path)}")


def _popen_unit(unit: str, env: dict[str, str], tmp_path: Path) -> subprocess.Popen:
    argv = systemd_expand(unit_value(UNIT_DIR / f"{unit}.service", "Service", "ExecStart"), env)
    return subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_beat_unit_runs_beat_in_the_foreground_and_leads(services, tmp_path, marker):
    env = unit_env(tmp_path, marker)
    proc = _popen_unit("opsq-beat", env, tmp_path)
    beat_log = tmp_path / "log" / "beat.log"
    pidfile = tmp_path / "run" / "beat.pid"
    _wait_for(lambda: beat_log.exists() and "beat: leading" in beat_log.read_text(),
              "beat never led", proc, tmp_path)
    # exec: the process systemd starts is beat itself, so its signals reach beat.
    assert _pid(pidfile) == proc.pid
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(STOP_TIMEOUT) == 0
    assert not pidfile.exists()


def _http_status(url: str, auth: tuple[str, str] | None = None) -> int | None:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_flower_unit_starts_flower_behind_a_login(services, tmp_path, marker):
    pytest.importorskip("flower")
    port = free_port()
    login = ("deploytest", secrets.token_hex(8))
    env = unit_env(tmp_path, marker, OPSQ_FLOWER_PORT=str(port), OPSQ_FLOWER_USER=login[0],
                   OPSQ_FLOWER_PASSWORD=login[1])
    proc = _popen_unit("opsq-flower", env, tmp_path)
    url = f"http://127.0.0.1:{port}/"
    _wait_for(lambda: _http_status(url) is not None, "Flower did not listen", proc, tmp_path)
    assert _http_status(url) == 401
    assert _http_status(url, login) == 200
    # exec all the way: the unit's main process is Flower.
    assert b"flower" in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    proc.send_signal(signal.SIGTERM)
    proc.wait(STOP_TIMEOUT)


def test_web_unit_serves_the_console_behind_a_login(services, tmp_path, marker):
    from opsq.web import users

    # The console refuses to start while no user exists: one for the length of the test.
    admin = f"deploytest-{secrets.token_hex(3)}"
    users.add(admin, "admin", secrets.token_urlsafe(16), by="deploytest")
    try:
        port = free_port()
        env = unit_env(tmp_path, marker, OPSQ_WEB_PORT=str(port),
                       OPSQ_WEB_SECRET=secrets.token_hex(32))
        proc = _popen_unit("opsq-web", env, tmp_path)
        url = f"http://127.0.0.1:{port}"
        _wait_for(lambda: _http_status(f"{url}/login") == 200, "the console did not serve",
                  proc, tmp_path)
        assert _http_status(f"{url}/api/v1/jobs") == 401
        # exec all the way: the unit's main process is the console.
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[-2:] == [b"web", b""] and any(b"opsq" in a for a in cmdline), cmdline
        proc.send_signal(signal.SIGTERM)
        proc.wait(STOP_TIMEOUT)
    finally:
        users.remove(admin, by="deploytest")


# -- the nginx example ------------------------------------------------------------------


@pytest.fixture(scope="module")
def nginx() -> str:
    return _installed("nginx", "nginx", "nginx-light")


@pytest.fixture
def nginx_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: nginx's workers run as nobody and must reach it.
    d = Path(tempfile.mkdtemp(prefix="opsq-nginx-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _self_signed(d: Path) -> tuple[Path, Path]:
    """A certificate for opsq.example.com and its key, valid for a day."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "opsq.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("opsq.example.com")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _ipv6_loopback() -> bool:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        return True
    return False


def _nginx_conf(d: Path, upstream: int, http_port: int, https_port: int) -> Path:
    """A main nginx.conf in ``d`` that includes the example as a site, as Debian's does,
    with what must differ in a test: free ports on loopback instead of 80 and 443, a
    self-signed certificate, the stand-in console as upstream, files kept in ``d``."""
    env = source_env_file()
    site = NGINX_SITE.read_text()
    # The example proxies to where opsq.env makes the console listen.
    upstream_line = f"server {env['OPSQ_WEB_ADDRESS']}:{env['OPSQ_WEB_PORT']};"
    assert upstream_line in site, f"{NGINX_SITE.name} does not proxy to {upstream_line}"
    site = site.replace(upstream_line, f"server 127.0.0.1:{upstream};")
    cert, key = _self_signed(d)
    site = re.sub(r"ssl_certificate \S+;", f"ssl_certificate {cert};", site)
    site = re.sub(r"ssl_certificate_key \S+;", f"ssl_certificate_key {key};", site)
    ipv6 = _ipv6_loopback()

    def listen(m: re.Match) -> str:
        port = https_port if m.group(2) == "443" else http_port
        if m.group(1):
            return f"listen [::1]:{port}{m.group(3)};" if ipv6 else ""
        return f"listen 127.0.0.1:{port}{m.group(3)};"

    site, n = re.subn(r"listen (\[::\]:)?(80|443)([^;]*);", listen, site)
    assert n == 4, f"{NGINX_SITE.name}: expected listen 80/443 on IPv4 and IPv6"
    (d / "opsq-web.conf").write_text(site)
    temp = "\n".join(f"    {k}_temp_path {d}/{k};"
                      for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    main = d / "nginx.conf"
    main.write_text(f"""pid {d}/nginx.pid;
error_log {d}/error.log warn;
daemon off;
events {{ worker_connections 64; }}
http {{
    access_log off;
{temp}
    include {d}/opsq-web.conf;
}}
""")
    return main


def _nginx_argv(nginx: str, d: Path, conf: Path) -> list[str]:
    return [nginx, "-p", f"{d}/", "-c", str(conf), "-e", str(d / "error.log")]


def test_nginx_example_passes_nginx_t(nginx, nginx_dir):
    conf = _nginx_conf(nginx_dir, free_port(), free_port(), free_port())
    r = subprocess.run([*_nginx_argv(nginx, nginx_dir, conf), "-t"], capture_output=True,
                       text=True, timeout=60)
    # nginx -t reports on stderr; warnings (a deprecated directive, a conflict) count.
    complaints = [ln for ln in r.stderr.splitlines() if re.search(r"\[(emerg|alert|crit|"
                                                                  r"error|warn)\]", ln)]
    assert r.returncode == 0 and not complaints, r.stderr
    assert "test is successful" in r.stderr


class _StandIn(http.server.ThreadingHTTPServer):
    """Answers like the console would, telling what reached it: the peer's address, the
    headers and the body's length as JSON; a job's events path streams two server-sent
    events, the second only when ``release`` is set (or after STREAM_HOLD seconds)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _StandInHandler)
        self.release = threading.Event()


class _StandInHandler(http.server.BaseHTTPRequestHandler):
    server: _StandIn

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base's name)
        pass

    def _echo(self, length: int) -> None:
        body = json.dumps({"peer": self.client_address[0], "length": length,
                           "headers": {k.lower(): v for k, v in self.headers.items()}})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def do_GET(self) -> None:
        if not re.fullmatch(r"/api/v1/jobs/[^/]+/events", self.path):
            return self._echo(0)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.write(b"event: progress\ndata: {\"done\": 1}\n\n")
        self.wfile.flush()
        self.server.release.wait(STREAM_HOLD)
        self.wfile.write(b"event: progress\ndata: {\"done\": 2}\n\n")

    def do_POST(self) -> None:
        self._echo(len(self.rfile.read(int(self.headers.get("Content-Length", 0)))))


@pytest.fixture
def stand_in() -> Iterator[_StandIn]:
    server = _StandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(nginx, nginx_dir, stand_in) -> Iterator[tuple[str, str]]:
    """The example running in front of the stand-in: its (https, http) base URLs."""
    http_port, https_port = free_port(), free_port()
    conf = _nginx_conf(nginx_dir, stand_in.server_address[1], http_port, https_port)
    proc = subprocess.Popen(_nginx_argv(nginx, nginx_dir, conf), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", https_port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                error_log = nginx_dir / "error.log"
                raise AssertionError(f"nginx did not start (exit {proc.poll()}): "
                                     f"{error_log.read_text() if error_log.exists() else ''}")
            time.sleep(0.1)
        yield f"https://127.0.0.1:{https_port}", f"http://127.0.0.1:{http_port}"
    finally:
        # The workers share the master's process group (daemon off): stop them all.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_nginx_example_forwards_what_the_console_trusts(proxy):
    import httpx

    https, http = proxy
    with httpx.Client(verify=False, timeout=10) as client:
        # Plain HTTP only redirects to HTTPS.
        r = client.get(f"{http}/login?next=/jobs")
        assert r.status_code == 301
        assert r.headers["location"] == "https://127.0.0.1/login?next=/jobs"

        # Whatever a client claims, the console hears the address that connected to nginx.
        r = client.get(f"{https}/login", headers={
            "X-Forwarded-For": "203.0.113.9", "Forwarded": "for=203.0.113.9",
            "X-Real-IP": "203.0.113.9", "X-Forwarded-Host": "evil.example",
            "X-Forwarded-Proto": "http"})
        assert r.status_code == 200, r.text
        seen = r.json()
        assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
        assert seen["headers"]["x-forwarded-proto"] == "https"
        for dropped in ("forwarded", "x-real-ip", "x-forwarded-host"):
            assert dropped not in seen["headers"], seen["headers"]
        assert "max-age=" in r.headers["strict-transport-security"]
        # ...and the console trusts that header because nginx's address is listed.
        trusted = [ipaddress.ip_network(n.strip(), strict=False) for n in
                   source_env_file()["OPSQ_WEB_TRUSTED_PROXIES"].split(",") if n.strip()]
        assert any(ipaddress.ip_address(seen["peer"]) in n for n in trusted), seen["peer"]


def test_nginx_example_caps_bodies_at_the_consoles_limit(proxy):
    import httpx

    from opsq.settings import DEFAULT_WEB_MAX_BODY

    limit = int(source_env_file().get("OPSQ_WEB_MAX_BODY", DEFAULT_WEB_MAX_BODY))
    https, _ = proxy
    with httpx.Client(verify=False, timeout=30) as client:
        r = client.post(f"{https}/api/v1/jobs", content=b"x" * limit)
        assert r.status_code == 200 and r.json()["length"] == limit, r.text
        r = client.post(f"{https}/api/v1/jobs", content=b"x" * (limit + 1))
        assert r.status_code == 413


def test_nginx_example_streams_job_events_unbuffered(proxy, stand_in):
    import httpx

    https, _ = proxy
    with httpx.Client(verify=False, timeout=STREAM_HOLD / 2) as client, \
            client.stream("GET", f"{https}/api/v1/jobs/j1/events") as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        # The first event arrives while the console still holds the stream open; a
        # buffering proxy would keep it until the stream ended (a read timeout here).
        assert next(lines) == "event: progress"
        assert next(lines) == 'data: {"done": 1}'
        stand_in.release.set()
        rest = [line for line in lines if line]
    assert rest == ["event: progress", 'data: {"done": 2}']


# -- rabbitmq-setup.sh ----------------------------------------------------------------------


def _rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-s", *args], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def rabbit_names(services) -> Iterator[tuple[str, str]]:
    """A throwaway vhost and user name; both deleted afterwards if the test made them."""
    suffix = secrets.token_hex(4)
    vhost, user = f"opsq_deploytest_{suffix}", f"opsq_deploytest_{suffix}"
    yield vhost, user
    subprocess.run(["rabbitmqctl", "-q", "delete_user", user], capture_output=True)
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)


def _rabbit_setup(vhost: str, user: str, *args: str, ctl: str = "rabbitmqctl",
                  ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPSQ_RABBIT_VHOST": vhost, "OPSQ_RABBIT_USER": user,
           "RABBITMQCTL": ctl}
    return subprocess.run(["bash", str(RABBIT_SETUP), *args], env=env, capture_output=True,
                          text=True, timeout=120)


def _can_connect(vhost: str, user: str, password: str) -> bool:
    from kombu import Connection, Queue

    url = f"amqp://{user}:{password}@127.0.0.1:5672/{vhost}"
    try:
        with Connection(url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
            # Permissions too: declare a queue (exclusive: gone with the connection),
            # publish to it and read the message back.
            queue = Queue(f"deploytest.{secrets.token_hex(4)}", exclusive=True)(conn.channel())
            queue.declare()
            conn.Producer().publish({"ok": 1}, routing_key=queue.name)
            deadline = time.monotonic() + 5
            while (message := queue.get(no_ack=True)) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert message is not None and message.payload == {"ok": 1}
        return True
    except Exception as exc:  # authentication and access errors differ by kombu version
        if "ACCESS_REFUSED" in str(exc) or "403" in str(exc) or "auth" in str(exc).lower():
            return False
        raise


def _rabbit_version() -> tuple[int, ...]:
    out = subprocess.run(["rabbitmqctl", "version"], capture_output=True, text=True,
                         check=True).stdout.strip()
    return tuple(int(x) for x in re.findall(r"\d+", out)[:3])


def test_rabbitmq_setup_dry_run_prints_the_commands_and_changes_nothing(rabbit_names):
    vhost, user = rabbit_names
    r = _rabbit_setup(vhost, user, "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    for line in (f"+ rabbitmqctl -q add_vhost {vhost}",
                 f"+ rabbitmqctl -q add_user {user} <password on stdin>",
                 f"+ rabbitmqctl -q set_permissions -p {vhost} {user} '.*' '.*' '.*'",
                 f"+ rabbitmqctl -q set_user_tags {user} management"):
        assert line in r.stdout.splitlines(), r.stdout
    assert ("+ rabbitmq-plugins -q enable rabbitmq_management" in r.stdout
            or "plugin rabbitmq_management: enabled" in r.stdout), r.stdout
    assert f"OPSQ_BROKER_URL=amqp://{user}:<password>@127.0.0.1:5672/{vhost}" in r.stdout
    assert vhost not in _rabbitmqctl("list_vhosts", "name").split()
    assert user not in _rabbitmqctl("list_users").split()


def test_rabbitmq_setup_creates_the_vhost_and_user_once(rabbit_names, tmp_path):
    vhost, user = rabbit_names
    pwfile = tmp_path / "secret" / "rabbitmq-password"
    # A rabbitmqctl that records its arguments: the password must never be one.
    argv_log = tmp_path / "argv.log"
    recorder = tmp_path / "rabbitmqctl"
    recorder.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{argv_log}"\n'
                        f'exec {shutil.which("rabbitmqctl")} "$@"\n')
    recorder.chmod(0o755)

    # --no-management: the shared broker's plugins are not this test's to change.
    first = _rabbit_setup(vhost, user, "--no-management", "--password-file", str(pwfile),
                          ctl=str(recorder))
    assert first.returncode == 0, first.stdout + first.stderr
    password = pwfile.read_text().strip()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)
    assert stat.S_IMODE(pwfile.stat().st_mode) == 0o600
    assert first.stdout.count(password) == 1  # printed once, in the broker URL
    assert f"OPSQ_BROKER_URL=amqp://{user}:{password}@127.0.0.1:5672/{vhost}" in first.stdout
    assert vhost in _rabbitmqctl("list_vhosts", "name").split()
    assert _can_connect(vhost, user, password)

    second = _rabbit_setup(vhost, user, "--no-management", "--password-file", str(pwfile),
                           ctl=str(recorder))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "password unchanged" in second.stdout
    assert password not in second.stdout
    assert pwfile.read_text().strip() == password
    assert [ln.split("\t")[0] for ln in _rabbitmqctl("list_users").splitlines()].count(user) == 1
    assert _can_connect(vhost, user, password)

    rotated = _rabbit_setup(vhost, user, "--no-management", "--password-file", str(pwfile),
                            "--rotate", ctl=str(recorder))
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    new_password = pwfile.read_text().strip()
    assert new_password != password
    assert not _can_connect(vhost, user, password)
    assert _can_connect(vhost, user, new_password)

    recorded = argv_log.read_text()
    assert "add_user" in recorded and "change_password" in recorded
    assert password not in recorded and new_password not in recorded


def test_rabbitmq_setup_consumer_timeout_uses_what_the_broker_version_has(rabbit_names):
    vhost, user = rabbit_names
    r = _rabbit_setup(vhost, user, "--no-management", "--consumer-timeout", "3600000")
    if _rabbit_version() >= (3, 12):
        assert r.returncode == 0, r.stdout + r.stderr
        policies = _rabbitmqctl("list_policies", "-p", vhost)
        assert "opsq-consumer-timeout" in policies and "3600000" in policies
    else:
        # Only the global rabbitmq.conf setting exists: say so, change nothing, exit 3.
        assert r.returncode == 3, r.stdout + r.stderr
        assert "consumer_timeout = 3600000" in r.stderr
        assert "rabbitmq.conf" in r.stderr
        assert not _rabbitmqctl("list_policies", "-p", vhost).strip()


# -- postgres-setup.sql ---------------------------------------------------------------------


def _psql(*args: str, password: str | None = None, user: str = "postgres",
          db: str = "postgres") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "OPSQ_DB_PASSWORD"}
    if password is not None:
        env["OPSQ_DB_PASSWORD"] = password
    return subprocess.run(["psql", "-h", "127.0.0.1", "-U", user, "-d", db, "-X", "-q", "-At",
                           "-v", "ON_ERROR_STOP=1", *args],
                          env=env, capture_output=True, text=True, timeout=60)


def _scram_matches(verifier: str, password: str) -> bool:
    """Whether a SCRAM-SHA-256 verifier from pg_authid was made from ``password``."""
    m = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", verifier)
    assert m, verifier
    iterations, salt = int(m.group(1)), base64.b64decode(m.group(2))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    return (base64.b64decode(m.group(3)) == hashlib.sha256(client_key).digest()
            and base64.b64decode(m.group(4)) == server_key)


@pytest.fixture
def pg_names(services) -> Iterator[tuple[str, str]]:
    suffix = secrets.token_hex(4)
    role, db = f"opsq_deploytest_{suffix}", f"opsq_deploytest_{suffix}"
    yield role, db
    _psql("-c", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    _psql("-c", f'DROP ROLE IF EXISTS "{role}"')


def test_postgres_setup_creates_the_role_and_database_and_can_rerun(pg_names):
    role, db = pg_names
    # Quotes, a semicolon and spaces: psql must quote it, not paste it into the SQL.
    password = "it's; a pass word"
    names = ["-v", f"role={role}", "-v", f"db={db}", "-f", str(POSTGRES_SETUP)]

    for _ in range(2):
        r = _psql(*names, password=password)
        assert r.returncode == 0, r.stdout + r.stderr
    login, verifier = _psql("-c", f"SELECT rolcanlogin, rolpassword FROM pg_authid "
                                  f"WHERE rolname = '{role}'").stdout.strip().split("|")
    assert login == "t"
    assert _scram_matches(verifier, password)
    owner = _psql("-c", f"SELECT pg_get_userbyid(datdba) FROM pg_database "
                        f"WHERE datname = '{db}'").stdout.strip()
    assert owner == role

    # Without a password, or with an empty one, the role keeps the one it has.
    for empty in (None, ""):
        r = _psql(*names, password=empty)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "keeps its password" in r.stdout
        again = _psql("-c", f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'")
        assert again.stdout.strip() == verifier

    # The role logs in over TCP and, as owner, can create the tables opsq db upgrade makes.
    r = _psql("-c", "CREATE TABLE deploytest (id int); SELECT current_user",
              user=role, db=db)
    assert r.returncode == 0 and r.stdout.strip() == role, r.stderr
