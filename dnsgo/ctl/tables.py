"""
Text for people: aligned tables (:func:`table`), ``key  value`` blocks
(:func:`pairs`), and the number formats the tables use.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

#: Between two columns.
GAP = "  "
#: What a table shows for a missing value.
NONE = "-"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], right: Iterable[int] = ()) -> str:
    """
    ``rows`` under ``headers`` in aligned columns, one line each: columns
    whose index is in ``right`` are aligned right (numbers), the others
    left; None shows as ``-``.  No trailing spaces; ends without a newline.
    """
    right = set(right)
    cells = [list(headers)] + [[NONE if v is None else str(v) for v in row] for row in rows]
    for row in cells:
        if len(row) != len(headers):
            raise ValueError(f"a row has {len(row)} cells for {len(headers)} columns: {row!r}")
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append(GAP.join(padded).rstrip())
    return "\n".join(lines)


def pairs(items: Iterable[tuple[str, object]]) -> str:
    """``key  value`` lines, the values aligned after the longest key."""
    items = [(k, NONE if v is None else str(v)) for k, v in items]
    width = max((len(k) for k, _ in items), default=0)
    return "\n".join(f"{k.ljust(width)}{GAP}{v}".rstrip() for k, v in items)


def percent(value) -> str:
    """A percentage as the API gives it (``96.77``) as ``96.8%``; ``-`` when absent."""
    if value is None:
        return NONE
    return f"{float(value):.1f}%"


def size(value) -> str:
    """A byte count in binary units: ``512 B``, ``50.0 MiB``."""
    if value is None:
        return NONE
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(amount) < 1024 or unit == "TiB":
            return f"{int(amount)} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def duration(seconds) -> str:
    """Seconds as ``45s``, ``3m05s``, ``2h03m``, ``4d02h``."""
    if seconds is None:
        return NONE
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def millis(value) -> str:
    """Milliseconds with one decimal: ``1.2``."""
    if value is None:
        return NONE
    return f"{float(value):.1f}"


def count(value) -> str:
    """An integer count, ``-`` when absent."""
    return NONE if value is None else str(int(value))
