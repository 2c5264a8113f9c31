"""
Durations as operators write them (``30s``, ``500ms``, ``1h30m``) turned into
float seconds.
"""
from __future__ import annotations

import math
import re

_SECONDS_PER_UNIT = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PLAIN = re.compile(_NUMBER + r"\Z")
_PART = re.compile(r"(" + _NUMBER + r")(ns|us|µs|ms|s|m|h|d)")

EXAMPLES = "30s, 500ms, 5m, 1h, 1d or 1h30m"


def parse_duration(value: object) -> float:
    """
    Return ``value`` as a number of seconds.

    A number (int or float, not bool) is seconds.  A string is either a plain
    number of seconds (``"2.5"``) or one or more number-and-unit parts, Go
    style: ``"500ms"``, ``"8ms"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"1d"``,
    ``"1h30m"``.  Units: ns, us (or µs), ms, s, m, h, d.  Negative, infinite
    and NaN values are refused.

    Raises TypeError when ``value`` is neither a number nor a string, and
    ValueError when it is not a duration; both messages are meant for people.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"expected a duration such as {EXAMPLES}")
    if isinstance(value, str):
        seconds = _parse_text(value)
    else:
        seconds = float(value)
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError("must be a finite duration")
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def _parse_text(text: str) -> float:
    """Parse the string forms accepted by parse_duration."""
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ValueError("must not be negative")
    if _PLAIN.match(stripped):
        return float(stripped)
    total = 0.0
    position = 0
    for match in _PART.finditer(stripped):
        if match.start() != position:
            break
        total += float(match.group(1)) * _SECONDS_PER_UNIT[match.group(2)]
        position = match.end()
    if stripped and position == len(stripped):
        return total
    raise ValueError(f"expected a duration such as {EXAMPLES}; got {text!r}")


def format_duration(seconds: float) -> str:
    """Return a short human form of ``seconds`` (``"500ms"``, ``"30s"``, ``"1d"``) for docs and reports."""
    for unit in ("d", "h", "m", "s"):
        size = _SECONDS_PER_UNIT[unit]
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    if seconds == 0:
        return "0s"
    milliseconds = seconds * 1000
    if abs(milliseconds - round(milliseconds)) < 1e-9:
        return f"{round(milliseconds)}ms"
    return f"{seconds:g}s"
