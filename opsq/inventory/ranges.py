"""Ansible host ranges (``web[01:20]``, ``db[a:f]``, ``[0:10:2]``) and ``host:port``."""

from __future__ import annotations

import ipaddress
import re

from opsq.errors import InventoryError
from opsq.inventory.hosts import _DIGITS_RE, _parse_port

# A typo such as web[1:1000000] should be an error, not a memory blow-up.
MAX_RANGE_HOSTS = 65536

_LETTER_RE = re.compile(r"^[a-zA-Z]$")
# Ansible's parse_address(): an IPv6 address takes a port only inside brackets.
_BRACKETED_HOST_PORT_RE = re.compile(r"^\[(.+)\]:([0-9]+)$")


def expand_host_range(name: str) -> list[str]:
    """Expand Ansible host ranges: web[01:03] -> web01, web02, web03.

    Supports numeric ranges (leading zeros set the width), single-letter
    ranges (db[a:c]), strides ([0:10:2]) and several ranges in one name.
    Raises InventoryError (without file context; callers add it) for an
    unbalanced bracket, a start after the end, mixed or malformed bounds,
    a non-positive stride, or more than MAX_RANGE_HOSTS names.
    """
    start = name.find("[")
    if start == -1:
        if "]" in name:
            raise InventoryError(f"invalid host range in {name!r}: ']' without '['")
        return [name]
    end = name.find("]", start)
    if end == -1:
        raise InventoryError(f"invalid host range in {name!r}: '[' without closing ']'")
    head, body, tail = name[:start], name[start + 1 : end], name[end + 1 :]
    values = _range_values(body, name)
    tails = expand_host_range(tail)
    if len(values) * len(tails) > MAX_RANGE_HOSTS:
        raise InventoryError(f"host range {name!r} expands to more than {MAX_RANGE_HOSTS} hosts")
    return [head + value + rest for value in values for rest in tails]


def _range_values(body: str, name: str) -> list[str]:
    """Return the values of one range body such as "01:20" or "a:f:2".

    Raises InventoryError as expand_host_range() does.
    """
    bad = f"invalid host range {name!r}"
    parts = body.split(":")
    if len(parts) not in (2, 3):
        raise InventoryError(f"{bad}: expected [start:end] or [start:end:step]")
    first, last = parts[0].strip(), parts[1].strip()
    step_text = parts[2].strip() if len(parts) == 3 else "1"
    if not _DIGITS_RE.match(step_text) or int(step_text) == 0:
        raise InventoryError(f"{bad}: step {step_text!r} must be a positive integer")
    step = int(step_text)
    if not last:
        raise InventoryError(f"{bad}: the range has no end")
    if not first and _DIGITS_RE.match(last):
        first = "0"  # Ansible: [:5] means [0:5]
    if _DIGITS_RE.match(first) and _DIGITS_RE.match(last):
        width = 0
        if first.startswith("0") and len(first) > 1:
            # Zero-padded ranges must say the width the same way at both ends.
            if len(first) != len(last):
                raise InventoryError(
                    f"{bad}: zero-padded start {first!r} and end {last!r} "
                    "must have the same number of digits"
                )
            width = len(first)
        low, high = int(first), int(last)
    elif _LETTER_RE.match(first) and _LETTER_RE.match(last) and first.islower() == last.islower():
        width = -1
        low, high = ord(first), ord(last)
    else:
        raise InventoryError(
            f"{bad}: start {first!r} and end {last!r} must both be numbers or "
            "both single letters of the same case"
        )
    if low > high:
        raise InventoryError(f"{bad}: start {first!r} is after end {last!r}")
    if (high - low) // step + 1 > MAX_RANGE_HOSTS:
        raise InventoryError(f"{bad}: expands to more than {MAX_RANGE_HOSTS} hosts")
    if width < 0:
        return [chr(code) for code in range(low, high + 1, step)]
    return [str(number).zfill(width) for number in range(low, high + 1, step)]


def _split_host_port(token: str, where: str) -> tuple[str, int | None]:
    """Split the INI/YAML "host:port" shorthand as Ansible does.

    ``name:port`` and ``[address]:port``; ranges keep their colons, and a name
    with several colons outside brackets is an IPv6 address without a port.
    Raises InventoryError if the part after a single colon is not a valid port
    or nothing precedes it.
    """
    bracketed = _BRACKETED_HOST_PORT_RE.match(token)
    if bracketed:
        inner, tail = bracketed.groups()
        return inner, _parse_port(tail, f"{where}: host {token!r}")
    colons = _top_level_colons(token)
    if len(colons) != 1:
        return token, None  # a plain name, a range, or an IPv6 address
    head, tail = token[: colons[0]], token[colons[0] + 1 :]
    if not head:
        raise InventoryError(f"{where}: host {token!r} has a port but no name")
    if not _DIGITS_RE.match(tail):
        raise InventoryError(
            f"{where}: invalid host {token!r}: the part after ':' must be a "
            f"port number, got {tail!r}"
        )
    return head, _parse_port(tail, f"{where}: host {token!r}")


def _top_level_colons(token: str) -> list[int]:
    """Positions of the colons outside [...] ranges; never fails."""
    depth = 0
    found: list[int] = []
    for index, char in enumerate(token):
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(0, depth - 1)
        elif char == ":" and depth == 0:
            found.append(index)
    return found


def _check_address_name(name: str, entry: str, where: str) -> None:
    """Refuse a host name with a colon unless it is an IPv6 address.

    Raises InventoryError with the bracketed form to use for a port.
    """
    if ":" not in name:
        return
    try:
        ipaddress.IPv6Address(name)
    except ValueError:
        raise InventoryError(
            f"{where}: invalid host {entry!r}: a name with ':' must be an IPv6 "
            "address (with a port, write [2001:db8::1]:2222)"
        ) from None


def _expand_host_pattern(token: str, where: str) -> tuple[list[str], int | None]:
    """Return the host names and optional port one inventory host entry names.

    Raises InventoryError, prefixed with where, for a bad port or range.
    """
    head, port = _split_host_port(token, where)
    try:
        names = expand_host_range(head)
    except InventoryError as exc:
        raise InventoryError(f"{where}: {exc}") from None
    if ":" in head:
        for name in names:
            _check_address_name(name, token, where)
    return names, port
