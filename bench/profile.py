"""
Where a server's time goes: py-spy records a process while a scenario runs,
and :func:`summary` folds the samples into the functions that hold the most
CPU, by own time (the function itself was on top of the stack) and by
inclusive time (anywhere on the stack).  Used by ``bench/run.py --profile``.
"""
from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

PY_SPY = shutil.which("py-spy") or str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "py-spy")


def available() -> bool:
    """Whether py-spy can be run."""
    return Path(PY_SPY).exists()


def record(pid: int, output: Path, seconds: float, rate: int = 250) -> subprocess.Popen:
    """Start recording ``pid`` for ``seconds`` into ``output`` (py-spy's raw, folded format)."""
    return subprocess.Popen(
        [PY_SPY, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate),
         "--format", "raw", "--output", str(output), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _frame_name(frame: str) -> str:
    """``handle (dnsgo/serve/handler.py:85)`` as ``handler.py:handle``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{Path(path).name}:{name.strip()}"


def summary(folded: Path, top: int = 25) -> str:
    """A text table of the ``top`` functions by own and by inclusive share of the samples."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in folded.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for name in set(frames):
            inclusive[name] += n
    if not total:
        return "(no samples)"
    lines = [f"{total:,} samples", "", "own %  incl %  function"]
    for name, n in own.most_common(top):
        lines.append(f"{100 * n / total:5.1f}  {100 * inclusive[name] / total:6.1f}  {name}")
    lines += ["", "inclusive, top:"]
    for name, n in inclusive.most_common(top):
        lines.append(f"{100 * n / total:6.1f}  {name}")
    return "\n".join(lines)
