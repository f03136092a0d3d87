"""Numbers a user gives opsq: checked to be finite and in range before anything uses them.

A ``nan`` deadline kills every host at once, ``inf`` overflows the socket layer and a
negative one fails every host at run time; each is refused where it is read (an option,
an inventory variable, a schedule) with a message that names it and the allowed range.
"""

from __future__ import annotations

import math
from typing import Any

from opsq.errors import OpsqError

#: The longest connect timeout opsq accepts, in seconds.
MAX_CONNECT_TIMEOUT = 3600.0
#: The longest a waiting command (``--wait``, ``result --wait``, ``hosts trust``) may wait.
MAX_WAIT = 366 * 86400.0


class InvalidNumber(OpsqError):
    """A number given by the user is not finite or out of its range."""


def number(value: Any, what: str, *, minimum: float | None = None,
           maximum: float | None = None, above: float | None = None,
           integer: bool = False) -> float:
    """``value`` as a float (or int when ``integer``), checked; raises InvalidNumber.

    ``above`` is an exclusive lower bound, ``minimum``/``maximum`` inclusive ones. Strings
    are parsed (inventory variables are strings); booleans are refused.
    """
    if isinstance(value, bool):
        raise InvalidNumber(f"{what} must be a number, not {value!r}")
    try:
        parsed = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidNumber(f"{what} must be a number, not {value!r}") from None
    if not math.isfinite(parsed):
        raise InvalidNumber(f"{what} must be a finite number, not {value!r}")
    if integer:
        if parsed != int(parsed):
            raise InvalidNumber(f"{what} must be a whole number, not {value!r}")
        parsed = int(parsed)
    if above is not None and parsed <= above:
        raise InvalidNumber(f"{what} must be above {above:g}, not {value!r}")
    if minimum is not None and parsed < minimum:
        raise InvalidNumber(f"{what} must be at least {minimum:g}, not {value!r}")
    if maximum is not None and parsed > maximum:
        raise InvalidNumber(f"{what} must be at most {maximum:g}, not {value!r}")
    return parsed


def seconds(value: Any, what: str, maximum: float) -> float:
    """A positive, finite duration in seconds, at most ``maximum``."""
    return number(value, what, above=0, maximum=maximum)
