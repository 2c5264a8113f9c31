"""
Run trial, pass its output through, and end with the line ``N passed, N failed``.

Trial's own last line is ``PASSED (successes=N)`` or
``FAILED (failures=F, errors=E, successes=N, ...)``; CI and people read the
plain line this adds.  The exit status is trial's.
"""
import re
import subprocess
import sys


def summarize(last_line: str) -> tuple[int, int, int]:
    """Return (passed, failed, skipped) from trial's closing line."""
    counts = dict(
        (k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", last_line)
    )
    failed = (
        counts.get("failures", 0)
        + counts.get("errors", 0)
        + counts.get("unexpectedSuccesses", 0)
    )
    return counts.get("successes", 0), failed, counts.get("skips", 0)


def main(argv: list[str]) -> int:
    """Run the command in argv, echo it, and print the summary line."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    last = ""
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace")
        sys.stdout.write(line)
        sys.stdout.flush()
        if line.startswith(("PASSED", "FAILED")):
            last = line
    rc = proc.wait()
    passed, failed, skipped = summarize(last)
    if not last:
        failed = max(failed, 1)
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return rc if rc else (1 if failed or not passed else 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
