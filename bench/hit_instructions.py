"""
User-space instructions per L1 hit, or per miss with ``--misses``, counted
by callgrind, for dnsgo and Unbound side by side: the steady measure of
the hit and miss paths, where throughput moves by 20 % from run to run on
the shared 2-core VM.

    .venv/bin/python bench/hit_instructions.py [--server dnsgo --server unbound] [--names 1000]
    .venv/bin/python bench/hit_instructions.py --misses 2000

Each server runs under ``valgrind --tool=callgrind`` with instrumentation
off, in front of NSD, with the configuration ``bench/run.py`` gives it.
dnsperf warms ``--names`` names (two passes), then callgrind is zeroed and
switched on (``callgrind_control``) for a ``--seconds`` run of dnsperf
with ``--outstanding`` queries in flight, which keeps the slowed server
saturated (it reads many datagrams per wake-up, as at full speed), and
off again.  The instructions counted, divided by the queries dnsperf saw
answered, are printed per server.  Kernel time (the system calls) is not
counted, nor are cache misses: the figure is for comparing versions of
the code, and the ratio to Unbound is not the throughput ratio.

With ``--misses N`` nothing is warmed: the counted run asks each of N new
names once (a block of its own per server), so every query is an L1 and
L2 miss and costs one upstream query to NSD: the whole server's miss path
(listener, handler, chain, upstream pool, caches), where
``bench/inprocess_miss.py`` counts the handler down without the listener.

Needs valgrind, NSD and dnsperf (``make bench-debs``).  No assertions.
"""
import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dnsperf  # noqa: E402
from callgrind import instructions_counted  # noqa: E402
import probe  # noqa: E402
import servers  # noqa: E402
import workload  # noqa: E402
from procs import Processes, free_port  # noqa: E402

COMMANDS = {"dnsgo": servers.dnsgo_command, "unbound": servers.unbound_command}


def measure(name: str, args, workdir: Path, queries: Path, nsd_port: int, procs: Processes) -> str:
    """Run server ``name`` under callgrind and return its line of the report (``queries``: the hit set, or this server's miss names)."""
    home = workdir / name
    home.mkdir()
    port = free_port()
    out = home / "callgrind.out"
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
               *COMMANDS[name](home, port, nsd_port)]
    process = procs.start(name, command, home / "server.log", cpu=1, cwd=home)
    if not probe.wait_until_answering(port, workload.READY_NAME, 300, process.alive):
        return f"{name}: did not answer under valgrind:\n{process.log_tail()}"
    if args.misses:
        counted_load = dnsperf.Load(clients=1, outstanding=args.outstanding, passes=1, seconds=3600)
    else:
        dnsperf.run(port, queries, dnsperf.Load(clients=1, outstanding=20, passes=2, seconds=300),
                    home / "warm.txt", 0, 400)
        counted_load = dnsperf.Load(clients=1, outstanding=args.outstanding, seconds=args.seconds)

    def control(*what: str) -> None:
        subprocess.run(["callgrind_control", *what, str(process.pid)], capture_output=True, check=False)

    control("-z")
    control("-i", "on")
    result = dnsperf.run(port, queries, counted_load, home / "counted.txt", 0, counted_load.seconds + 60)
    control("-i", "off")
    control("-d")
    time.sleep(1)
    process.stop()
    counted = instructions_counted(home)
    if not result.completed or not counted:
        return f"{name}: nothing counted (answered {result.completed})"
    what = "miss" if args.misses else "hit"
    return (f"{name:8} {counted / result.completed:>10,.0f} instructions per {what} "
            f"({result.completed:,} answered of {result.sent:,}, rcodes {result.rcodes})")


def main() -> None:
    """Parse the options, start NSD, measure each server in turn."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", action="append", choices=sorted(COMMANDS), help="dnsgo and unbound by default")
    parser.add_argument("--names", type=int, default=1000, help="names in the warm set")
    parser.add_argument("--seconds", type=int, default=10, help="length of the counted run")
    parser.add_argument("--outstanding", type=int, default=50, help="dnsperf's queries in flight")
    parser.add_argument("--misses", type=int, default=0,
                        help="count misses instead: ask this many new names once each (no warm-up, no --seconds)")
    args = parser.parse_args()
    chosen = args.server or ["dnsgo", "unbound"]
    workdir = Path(tempfile.mkdtemp(prefix="dnsgo-hitinstr-"))
    try:
        sizes = workload.Sizes(hit_names=args.names, cname_every=10**9, zipf_names=0, zipf_queries=0,
                               zipf_exponent=1.0, miss_names=max(args.misses, 1))
        layout = workload.Layout(sizes, servers=len(chosen))
        workload.write_zone(workdir / "bench.zone", layout)
        hits = workdir / "hit.txt"
        workload.write_queries(hits, workload.hit_names(layout))
        with Processes() as procs:
            nsd_port, _, _ = servers.start_nsd(procs, workdir, workdir / "bench.zone", 0)
            for index, name in enumerate(chosen):
                queries = hits
                if args.misses:
                    queries = workdir / f"{name}-misses.txt"
                    workload.write_queries(queries, workload.miss_names(layout, index))
                print(measure(name, args, workdir, queries, nsd_port, procs), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
