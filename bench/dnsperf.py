"""
Running dnsperf pinned to a CPU, and reading its statistics.
"""
import math
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from servers import HOST


@dataclass(frozen=True)
class Load:
    """How dnsperf drives a server: clients, outstanding queries, bounds."""

    clients: int = 10
    outstanding: int = 100
    seconds: float | None = None
    passes: int | None = None
    max_qps: int | None = None
    timeout: float = 2.0
    verbose: bool = False


@dataclass(frozen=True)
class Result:
    """What one dnsperf run reported, plus per-query latencies with -v."""

    sent: int
    completed: int
    lost: int
    qps: float
    run_time: float
    avg_latency: float
    rcodes: dict = field(default_factory=dict)
    latencies: tuple = ()
    ok: bool = True

    @property
    def lost_fraction(self) -> float:
        """The fraction of sent queries that got no answer."""
        return self.lost / self.sent if self.sent else 0.0

    def percentile(self, p: float) -> float | None:
        """The ``p``-th percentile (0-100) of the -v latencies, in seconds."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        rank = math.ceil(p / 100.0 * len(ordered))  # nearest-rank method
        return ordered[min(len(ordered), max(1, rank)) - 1]


def command(port: int, queries: Path, load: Load, cpu: int | None) -> list[str]:
    """The dnsperf argv for ``load`` against HOST:port with file ``queries``."""
    argv = ["dnsperf", "-s", HOST, "-p", str(port), "-d", str(queries), "-T", "1",
            "-c", str(load.clients), "-q", str(load.outstanding), "-t", str(load.timeout)]
    if load.seconds is not None:
        argv += ["-l", str(load.seconds)]
    if load.passes is not None:
        argv += ["-n", str(load.passes)]
    if load.max_qps is not None:
        argv += ["-Q", str(load.max_qps)]
    if load.verbose:
        argv.append("-v")
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    return argv


def run(port: int, queries: Path, load: Load, output: Path, cpu: int | None,
        limit: float) -> Result:
    """Run dnsperf, save its whole output to ``output``, and parse it.

    ``limit`` bounds the wall time in seconds whatever the load says.
    """
    argv = command(port, queries, load, cpu)
    with open(output, "w") as out:
        out.write("$ " + " ".join(argv) + "\n")
        out.flush()
        try:
            subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=limit, check=False)
        except subprocess.TimeoutExpired:
            out.write(f"\n[bench] dnsperf killed after {limit:.0f} s\n")
    return parse(output.read_text(errors="replace"))


_NUMBER = r"([0-9.]+)"


def parse(text: str) -> Result:
    """Parse dnsperf's statistics block (and its ``-v`` per-query lines)."""
    def number(label: str, default: float = 0.0) -> float:
        match = re.search(re.escape(label) + r":\s*" + _NUMBER, text)
        return float(match.group(1)) if match else default

    rcodes = {}
    match = re.search(r"Response codes:\s*(.*)", text)
    if match:
        for code, count in re.findall(r"([A-Z]+) (\d+) \(", match.group(1)):
            rcodes[code] = int(count)
    latencies = tuple(float(line.rsplit(None, 1)[1]) for line in text.splitlines()
                      if line.startswith("> ") and _is_float(line.rsplit(None, 1)[-1]))
    return Result(
        sent=int(number("Queries sent")),
        completed=int(number("Queries completed")),
        lost=int(number("Queries lost")),
        qps=number("Queries per second"),
        run_time=number("Run time (s)"),
        avg_latency=number("Average Latency (s)"),
        rcodes=rcodes,
        latencies=latencies,
        ok="Statistics:" in text,
    )


def _is_float(text: str) -> bool:
    """Whether ``text`` reads as a float."""
    try:
        float(text)
    except ValueError:
        return False
    return True
