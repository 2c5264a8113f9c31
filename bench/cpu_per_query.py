"""
Microseconds of server CPU per query, dnsgo beside Unbound, on the miss path
and on L1 hits.

``run.py`` measures throughput under dnsperf's closed loop, where the
answer depends on how the load generator and the servers share two cores.
This script reads what a query *costs*: each server's user + system CPU
time (``/proc/PID/stat``) over a dnsperf run at a fixed rate it can
sustain, divided by the queries it answered.  The ratio of the two servers'
costs is the inverse of the throughput ratio a CPU-bound server would
reach, and it moves much less from run to run.

    .venv/bin/python bench/cpu_per_query.py [--names 40000] [--rate 3000]
        [--seconds 5] [--server dnsgo --server unbound] [--dnsgo-upstream YAML]
        [--profile]

Scenarios, in this order, each on names no earlier one asked:

``miss``  every query a new name (one upstream query each);
``hit``   the same 2,000 names over and over, after one warming pass.

No assertions; it prints a Markdown table (and py-spy summaries with
``--profile``).  Like ``run.py``, it needs nsd, unbound, dnsperf and taskset.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dnsperf  # noqa: E402
import probe  # noqa: E402
import profile as pyspy  # noqa: E402
import servers  # noqa: E402
import workload  # noqa: E402
from procs import Processes, cpu_ticks, free_port, pin, process_tree  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` and every process below it."""
    user, system = cpu_ticks(pid)
    return user / _TICK, system / _TICK


def measure(server, port: int, queries: Path, seconds: float, rate: int, outdir: Path, label: str,
            client_cpu: int, profile: bool, passes: int | None) -> tuple[float, float]:
    """
    Run dnsperf at ``rate`` for ``seconds`` (over the file at most
    ``passes`` times: None loops); return (answered q/s, CPU µs per answered query).
    """
    load = dnsperf.Load(clients=10, outstanding=200, seconds=seconds, passes=passes, max_qps=rate)
    spy = None
    if profile and pyspy.available():
        folded = outdir / f"{server.name}-{label}.pyspy.txt"
        spy = pyspy.record(server.pid, folded, seconds, rate=500)
    before = cpu_seconds(server.pid)
    result = dnsperf.run(port, queries, load, outdir / f"{server.name}-{label}.txt", client_cpu, seconds + 30)
    after = cpu_seconds(server.pid)
    user, system = after[0] - before[0], after[1] - before[1]
    used = user + system
    if spy is not None:
        spy.wait(timeout=60)
        print(f"  py-spy, {server.name} {label}:\n    " + pyspy.summary(folded, top=30).replace("\n", "\n    "))
    answered = max(1, result.completed)
    print(f"  {server.name} {label}: {result.completed:,} answered at {answered / max(result.run_time, 1e-9):,.0f} q/s; "
          f"CPU per query {user / answered * 1e6:.1f} µs user + {system / answered * 1e6:.1f} µs system")
    return answered / max(result.run_time, 1e-9), used / answered * 1e6


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=40000, help="unique miss names per server")
    parser.add_argument("--rate", type=int, default=3000, help="dnsperf -Q for the miss run")
    parser.add_argument("--hit-rate", type=int, default=10000, help="dnsperf -Q for the hit run")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--server", action="append", choices=["dnsgo", "unbound"])
    parser.add_argument("--server-cpu", type=int, default=1)
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument("--dnsgo-upstream", action="append", default=[], metavar="YAML")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    names = args.server or ["dnsgo", "unbound"]
    servers.DNSGO_UPSTREAM_EXTRA[:] = args.dnsgo_upstream
    sizes = workload.Sizes(hit_names=2000, cname_every=10**9, zipf_names=0, zipf_queries=0,
                           zipf_exponent=1.0, miss_names=args.names)
    layout = workload.Layout(sizes, servers=len(names))
    workdir = Path(tempfile.mkdtemp(prefix="dnsgo-cpuq-"))
    try:
        measure_all(args, names, layout, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def measure_all(args, names: list[str], layout, workdir: Path) -> None:
    """Start NSD and each server in ``workdir``, measure, print and save the table."""
    kinds = {kind.name: kind for kind in servers.SERVERS}
    outdir = Path(__file__).resolve().parent / "results" / (time.strftime("%Y%m%d-%H%M%S") + "-cpu")
    outdir.mkdir(parents=True, exist_ok=True)
    zone = workdir / "bench.zone"
    workload.write_zone(zone, layout)
    hit_file = workdir / "hit.txt"
    workload.write_queries(hit_file, workload.hit_names(layout))
    rows: dict[str, dict[str, tuple[float, float]]] = {}
    with Processes() as procs:
        nsd_port, _, _ = servers.start_nsd(procs, workdir, zone, args.client_cpu)
        for index, name in enumerate(names):
            home = workdir / name
            home.mkdir()
            port = free_port()
            command = kinds[name].command(home, port, nsd_port)
            process = procs.start(name, command, home / f"{name}.log", cpu=args.server_cpu, cwd=home)
            if not probe.wait_until_answering(port, servers.READY_NAME, 60, process.alive):
                raise SystemExit(f"{name} did not start:\n{process.log_tail()}")
            for pid in process_tree(process.pid):
                pin(pid, args.server_cpu)
            miss_file = workdir / f"miss-{name}.txt"
            workload.write_queries(miss_file, workload.miss_names(layout, index))
            rows[name] = {}
            rows[name]["miss"] = measure(process, port, miss_file, args.seconds, args.rate, outdir, "miss",
                                         args.client_cpu, args.profile, passes=1)
            dnsperf.run(port, hit_file, dnsperf.Load(passes=1), outdir / f"{name}-warm.txt", args.client_cpu, 60)
            rows[name]["hit"] = measure(process, port, hit_file, args.seconds, args.hit_rate, outdir, "hit",
                                        args.client_cpu, args.profile, passes=None)
            process.stop()
    lines = ["| scenario | " + " | ".join(f"{n} q/s | {n} µs CPU/query" for n in names) + " | ratio of CPU |",
             "|---|" + "---:|---:|" * len(names) + "---:|"]
    for scenario in ("miss", "hit"):
        cells = []
        for n in names:
            qps, us = rows[n][scenario]
            cells += [f"{qps:,.0f}", f"{us:.1f}"]
        ratio = ""
        if {"dnsgo", "unbound"} <= set(names):
            ratio = f"{rows['dnsgo'][scenario][1] / rows['unbound'][scenario][1]:.2f}"
        lines.append(f"| {scenario} | " + " | ".join(cells) + f" | {ratio} |")
    table = "\n".join(lines)
    (outdir / "results.md").write_text(table + "\n")
    print(table)
    print(f"(saved in {outdir})")


if __name__ == "__main__":
    main()
