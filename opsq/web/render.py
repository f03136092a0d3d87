"""How the console shows values: times in one format (UTC, with how long ago), host output
with its ANSI colours as CSS classes (never as raw escapes, never as markup), JSON as text.

Host output is hostile: everything here escapes it first and adds only the markup it
makes itself (``<span class="ansi-31">``, ``<time>``).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup, escape

#: One escape sequence: CSI (``ESC [`` ... final byte), OSC (``ESC ]`` ... BEL or ST), or
#: a two-byte ESC sequence. Linear: no nested repetition.
_ESCAPES = re.compile(
    r"\x1b(?:\[([0-9;:?]*)([\x40-\x7e])|\][^\x07\x1b]{0,512}(?:\x07|\x1b\\)?|[@-Z\\-_])")
#: Other control characters but newline and tab are shown as nothing.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_COLOURS = {**{30 + i: f"ansi-{30 + i}" for i in range(8)},
            **{90 + i: f"ansi-{30 + i}" for i in range(8)}}


def when(value: datetime | str | None) -> Markup:
    """``2026-12-06 15:53:11 UTC`` in a ``<time>`` the page's script adds "(3 min ago)" to;
    a naive time is taken as UTC."""
    if value is None or value == "":
        return Markup("")
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return escape(value)
    at = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return Markup('<time datetime="{}" data-rel>{}</time>').format(
        at.isoformat(), at.strftime("%Y-%m-%d %H:%M:%S UTC"))


def strip_ansi(text: str | None) -> str:
    """The text without escape sequences or other control characters."""
    return _CONTROLS.sub("", _ESCAPES.sub("", text or ""))


def ansi_html(text: str | None) -> Markup:
    """Host output as HTML: escaped, its SGR colours and bold/dim/underline as CSS classes
    (``ansi-31``...), every other escape sequence and control character dropped."""
    text = text or ""
    out: list[str] = []
    classes: list[str] = []
    opened = False
    at = 0
    for m in _ESCAPES.finditer(text):
        out.append(_plain(text[at:m.start()]))
        at = m.end()
        if m.group(2) != "m":
            continue  # a cursor move, a title, a screen clear: not shown
        classes = _sgr(m.group(1) or "0", classes)
        if opened:
            out.append("</span>")
            opened = False
        if classes:
            out.append(f'<span class="{" ".join(classes)}">')
            opened = True
    out.append(_plain(text[at:]))
    if opened:
        out.append("</span>")
    return Markup("".join(out))


def _plain(text: str) -> str:
    return str(escape(_CONTROLS.sub("", text)))


def _sgr(params: str, classes: list[str]) -> list[str]:
    state = {c for c in classes}
    parts = params.replace(":", ";").split(";")
    skip = 0
    for i, part in enumerate(parts):
        if skip:
            skip -= 1
            continue
        code = int(part) if part.isdigit() and len(part) <= 3 else 0
        if code in (38, 48, 58):  # 256 or RGB colours: 5;N or 2;R;G;B follow, not shown
            skip = 2 if parts[i + 1:i + 2] == ["5"] else 4
            continue
        if code == 0:
            state = set()
        elif code == 1:
            state.add("ansi-bold")
        elif code == 2:
            state.add("ansi-dim")
        elif code == 4:
            state.add("ansi-underline")
        elif code in (22, 24):
            state -= {"ansi-bold", "ansi-dim"} if code == 22 else {"ansi-underline"}
        elif code in _COLOURS or code == 39:
            state = {c for c in state if not c[5:].isdigit()}
            if code != 39:
                state.add(_COLOURS[code])
    return sorted(state)


def as_text(value: Any) -> str:
    """JSON as a person reads it (``'`` stays ``'``); the template escapes it."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def register(env: Any) -> None:
    env.filters.update(when=when, ansi=ansi_html, strip_ansi=strip_ansi, as_text=as_text)
