"""
Run trial, pass its output through, and end with the line ``N passed, N failed``.

Trial's own last line is ``PASSED (successes=N)`` or
``FAILED (failures=F, errors=E, successes=N, ...)``; CI and people read the
plain line this adds.  The exit status is trial's.

Every process of the run carries ``DNSGO_TEST_RUN=<a mark for this run>`` in
its environment (the tests pass their environment on), so that one still
running once trial has ended, whichever test started it, is found: it is
reported, killed, and counted as one more failure.
"""
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

#: The environment variable marking every process of one run.
RUN_MARK = "DNSGO_TEST_RUN"


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


def marked(mark: str) -> dict[int, str]:
    """The live processes whose environment has ``RUN_MARK=mark``: pid -> command line."""
    want = f"{RUN_MARK}={mark}".encode()
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if want not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{name}/cmdline", "rb") as f:
                found[int(name)] = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:  # gone, or not ours to read
            continue
    return found


def left_running(mark: str, grace: float = 3.0) -> dict[int, str]:
    """
    The processes of the run still alive ``grace`` seconds after it ended
    (those already exiting get that long), SIGKILLed; pid -> command line.
    """
    deadline = time.monotonic() + grace
    while (left := marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.1)
    killed = dict(left)
    while left:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
        left = marked(mark)
        killed.update(left)
    return killed


def main(argv: list[str]) -> int:
    """Run the command in argv, echo it, and print the summary line."""
    mark = uuid.uuid4().hex
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, **{RUN_MARK: mark}))
    closing: list[str] = []

    def echo() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.startswith(("PASSED", "FAILED")):
                closing.append(line)

    # Read in a thread: a process left running with the output pipe open
    # would keep it from ever reaching its end.
    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    rc = proc.wait()
    reader.join(5)
    left = left_running(mark)
    reader.join(5)
    last = closing[-1] if closing else ""
    passed, failed, skipped = summarize(last)
    if not last:
        failed = max(failed, 1)
    if left:
        print(f"the tests left {len(left)} process(es) running (killed now; one more failure):")
        for pid, command in sorted(left.items()):
            print(f"  pid {pid}: {command}")
        failed += 1
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return rc if rc else (1 if failed or not passed else 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
