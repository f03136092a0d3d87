"""Host patterns from an untrusted user: bounded time, clear refusals, never a hang.

A console user types the pattern, so a regex that makes a backtracking engine take
minutes (``~(.|.)*!`` against a long host name), or a pattern whose splitting or glob
translation is quadratic, would freeze the process that resolves it.  Each hostile case
runs in a subprocess with a generous deadline: a regression shows as a timeout, not as
a flaky tight timing assertion.
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from opsq.errors import PatternError
from opsq.inventory import Inventory
from opsq.inventory.patterns import (
    MAX_PATTERN_CHARS,
    MAX_REGEX_CHARS,
    _colon_terms,
    _glob_matcher,
)

#: Seconds a hostile pattern may take in the subprocess; a backtracking engine takes
#: minutes to hours on these, RE2 and the linear scanners well under one second.
DEADLINE = 20

LONG_NAME = "x" * 200

#: Resolves each pattern and prints {pattern: [host names] or "PatternError: ..."}.
RESOLVER = textwrap.dedent("""
    import json, sys
    from opsq.errors import PatternError
    from opsq.inventory import Inventory, patterns
    path, max_chars = sys.argv[1], int(sys.argv[2])
    wanted = json.load(sys.stdin)
    patterns.MAX_PATTERN_CHARS = max_chars
    inventory = Inventory.load(path)
    answers = {}
    for pattern in wanted:
        try:
            answers[pattern] = [host.name for host in inventory.resolve(pattern)]
        except PatternError as exc:
            text = str(exc)
            if len(text) > 400:  # keep the head and the tail of a message quoting a long pattern
                text = text[:200] + " ... " + text[-200:]
            answers[pattern] = "PatternError: " + text
    print(json.dumps(answers))
""")


def _resolve_elsewhere(path: Path, patterns: list[str],
                       max_chars: int = MAX_PATTERN_CHARS) -> dict[str, object]:
    """Resolve patterns in a subprocess; fail the test if it takes longer than DEADLINE."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", RESOLVER, str(path), str(max_chars)],
            input=json.dumps(patterns), capture_output=True, text=True, timeout=DEADLINE,
            check=True,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"resolving {[p[:40] for p in patterns]} took more than {DEADLINE} s")
    assert done.stderr == ""  # no traceback, and no RE2 log lines either
    return json.loads(done.stdout)


@pytest.fixture
def long_named(tmp_path: Path) -> Path:
    path = tmp_path / "hosts.ini"
    path.write_text(f"[long]\n{LONG_NAME}\n[short]\nxxxy\nweb1\n", encoding="utf-8")
    return path


def test_catastrophic_regexes_answer_at_once(long_named: Path) -> None:
    answers = _resolve_elsewhere(long_named, ["~(.|.)*!", "~(x+x+)+y", "~(x|xx)+$"])
    assert answers["~(.|.)*!"] == (
        "PatternError: pattern '~(.|.)*!' matches no host: '~(.|.)*!' matches no host or "
        "group name (opsq hosts all lists the known hosts)"
    )
    assert answers["~(x+x+)+y"] == ["xxxy"]
    assert answers["~(x|xx)+$"] == [LONG_NAME]


def test_quadratic_splitting_and_globs_answer_at_once(long_named: Path) -> None:
    # Far beyond MAX_PATTERN_CHARS, to show the work is linear and not merely bounded:
    # Ansible's splitting regex and fnmatch.translate take minutes on these.
    brackets = "[" * 300_000
    answers = _resolve_elsewhere(
        long_named, [brackets, "a[" * 150_000, "web1," + "[" * 100_000], max_chars=10**6
    )
    unbalanced = "' has an unbalanced '[': close the [...] expression"
    assert str(answers[brackets]).startswith("PatternError: pattern '[[[[")
    assert str(answers[brackets]).endswith("[[[" + unbalanced)
    assert str(answers["a[" * 150_000]).endswith("a[" + unbalanced)
    assert str(answers["web1," + "[" * 100_000]).startswith(
        "PatternError: pattern 'web1,[[[[")
    assert "matches no host" in str(answers["web1," + "[" * 100_000])


@pytest.mark.parametrize(
    ("regex", "reason"),
    [
        (r"~(x)\1", "backreferences are not supported"),
        (r"~(?P<a>x)(?P=a)", "named backreferences (?P=name) are not supported"),
        (r"~(?=web)", "lookahead and lookbehind assertions are not supported"),
        (r"~(?!web)", "lookahead and lookbehind assertions are not supported"),
        (r"~x(?<=x)", "lookahead and lookbehind assertions are not supported"),
        (r"~x(?<!y)", "lookahead and lookbehind assertions are not supported"),
        (r"~web\Z", r"\Z is Python's spelling: write \z (or $) for the end of the name"),
        (r"~\pL{1000}", "it is too complex: RE2 would need more than 2 MiB for it"),
        (r"~x{1001}", "invalid repetition size: {1001}"),
        (r"~(?>x)", "invalid perl operator: (?>"),
        (r"~x++", "bad repetition operator: ++"),
        ("~web(", "missing ): web("),
    ],
)
def test_regexes_re2_cannot_run_are_refused_with_the_reason(
    long_named: Path, regex: str, reason: str
) -> None:
    with pytest.raises(PatternError) as info:
        Inventory.load(long_named).resolve(f"web1,{regex}")
    message = str(info.value)
    assert message.startswith(
        f"invalid regular expression {regex!r} in pattern {'web1,' + regex!r}: ")
    assert reason in message
    assert "RE2 regular expression" in message
    assert "without backreferences" in message


def test_refused_regexes_print_nothing_on_stderr(long_named: Path) -> None:
    answers = _resolve_elsewhere(long_named, [r"~(x)\1", r"~\pL{1000}"])
    assert all(str(answer).startswith("PatternError: invalid regular expression")
               for answer in answers.values())


def test_regex_longer_than_the_bound_is_refused(long_named: Path) -> None:
    inventory = Inventory.load(long_named)
    longest = "~x" + "x?" * ((MAX_REGEX_CHARS - 1) // 2)
    assert [h.name for h in inventory.resolve(longest)] == [LONG_NAME, "xxxy"]
    too_long = "~" + "x" * (MAX_REGEX_CHARS + 1)
    with pytest.raises(PatternError) as info:
        inventory.resolve(too_long)
    assert str(info.value) == (
        f"regular expression {'x' * 40!r}... is {MAX_REGEX_CHARS + 1} characters long, "
        f"more than the {MAX_REGEX_CHARS} opsq accepts; write a shorter regex or name a group"
    )


def test_pattern_longer_than_the_bound_is_refused(long_named: Path) -> None:
    inventory = Inventory.load(long_named)
    fits = ",".join(["web1"] * (MAX_PATTERN_CHARS // 5))
    assert [h.name for h in inventory.resolve(fits)] == ["web1"]
    too_long = fits + ",xxxy" * 3
    with pytest.raises(PatternError) as info:
        inventory.resolve(too_long)
    assert str(info.value) == (
        f"host pattern is {len(too_long)} characters long, more than the "
        f"{MAX_PATTERN_CHARS} opsq accepts: name a group of the inventory instead of "
        "listing its hosts"
    )


def test_regex_that_is_not_unicode_is_refused(long_named: Path) -> None:
    # What argv holds for a pattern typed with bytes that are not UTF-8.
    with pytest.raises(PatternError, match="is not valid text"):
        Inventory.load(long_named).resolve("~web\udcff")


def test_host_name_that_is_not_unicode_still_matches(tmp_path: Path) -> None:
    path = tmp_path / "hosts.json"
    path.write_text('{"all": {"hosts": {"odd\\ud800": null, "web1": null}}}', encoding="utf-8")
    inventory = Inventory.load(path)
    assert [h.name for h in inventory.resolve("~odd")] == ["odd\ud800"]
    assert [h.name for h in inventory.resolve("~(odd|web)")] == ["odd\ud800", "web1"]


# The two rewrites are checked against what they replace, on many small inputs.

hypothesis = pytest.importorskip("hypothesis")
strategies = pytest.importorskip("hypothesis.strategies")

#: Ansible's splitting regex (ansible.inventory.manager.split_host_pattern).
ANSIBLE_TERM_RE = re.compile(r"(?:[^\s:\[\]]|\[[^\]]*\])+")


@hypothesis.settings(max_examples=3000, deadline=None)
@hypothesis.given(strategies.text(alphabet="ab[]:! \t\n\u00a0\x0b,~&*", max_size=24))
def test_colon_splitting_finds_what_ansibles_regex_finds(pattern: str) -> None:
    terms, left_over = _colon_terms(pattern)
    assert terms == ANSIBLE_TERM_RE.findall(pattern)
    assert left_over == set(ANSIBLE_TERM_RE.sub("", pattern))


@hypothesis.settings(max_examples=3000, deadline=None)
@hypothesis.given(
    strategies.text(alphabet="ab[]!-*?^\\", max_size=12),
    strategies.text(alphabet="ab[]!-^\\", max_size=8),
)
def test_glob_matches_what_fnmatch_matches(glob: str, name: str) -> None:
    expected = re.match(fnmatch.translate(glob), name) is not None
    assert _glob_matcher(glob)(name) is expected
