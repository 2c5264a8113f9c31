"""
dnsgo benchmark: dnsgo, Unbound and the stock Twisted Names server, each
forwarding to the same local NSD, driven by dnsperf with the same query files
in the same run.

    .venv/bin/python bench/run.py [--quick] [--scenario hit|zipf|miss ...]

Prints a Markdown table and writes it, the raw dnsperf outputs, the server
configurations and logs to bench/results/<timestamp>/.  See bench/README.md.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dnsperf
import probe
import profile as pyspy
import report
import servers
import workload
from procs import Process, Processes, cpu_ticks, free_port, pin, rss_kib

BENCH_DIR = Path(__file__).resolve().parent
SCENARIOS = ("hit", "zipf", "miss")


@dataclass(frozen=True)
class Plan:
    """The sizes and time bounds of a run (full or --quick)."""

    sizes: workload.Sizes
    hit_seconds: float
    latency_seconds: float
    miss_seconds: float
    zipf_limit: float
    warm_limit: float


FULL = Plan(
    sizes=workload.Sizes(hit_names=10_000, cname_every=20, zipf_names=100_000,
                         zipf_queries=200_000, zipf_exponent=1.0, miss_names=200_000),
    hit_seconds=10, latency_seconds=5, miss_seconds=10, zipf_limit=120, warm_limit=60,
)
QUICK = Plan(
    sizes=workload.Sizes(hit_names=2_000, cname_every=20, zipf_names=10_000,
                         zipf_queries=20_000, zipf_exponent=1.0, miss_names=40_000),
    hit_seconds=3, latency_seconds=2, miss_seconds=3, zipf_limit=30, warm_limit=20,
)


@dataclass
class Server:
    """A running server under test and what was measured on it."""

    name: str
    port: int
    process: Process
    results: dict = field(default_factory=dict)


class Bench:
    """One benchmark run: the files, the processes, the scenarios."""

    def __init__(self, args, plan: Plan, workdir: Path, outdir: Path, procs: Processes):
        self.args, self.plan, self.workdir, self.outdir, self.procs = args, plan, workdir, outdir, procs
        self.kinds = [kind for kind in servers.SERVERS if kind.name in args.servers]
        self.layout = workload.Layout(plan.sizes, len(servers.SERVERS))
        self.results: dict[str, dict] = {kind.name: {} for kind in self.kinds}
        self.notes: list[str] = []
        self.live: list[Server] = []

    # ---------------------------------------------------------------- setup

    def prepare_files(self) -> None:
        """Write the zone and every query file."""
        started = time.monotonic()
        workload.write_zone(self.workdir / "bench.zone", self.layout)
        workload.write_queries(self.workdir / "hit.txt", workload.hit_names(self.layout))
        self.zipf_trace = workload.zipf_trace(self.layout, self.args.zipf_nx / 100)
        if self.args.zipf_scan:
            self.zipf_trace = workload.with_scan(self.zipf_trace, self.layout, self.args.zipf_scan)
        workload.write_queries(self.workdir / "zipf.txt", self.zipf_trace)
        for index, kind in enumerate(servers.SERVERS):
            workload.write_queries(self.workdir / f"miss-{kind.name}.txt",
                                   workload.miss_names(self.layout, index))
        say(f"zone: {self.layout.a_records:,} A names + {len(self.layout.cname_indexes):,} CNAMEs; "
            f"files written in {time.monotonic() - started:.1f} s")

    def start_nsd(self) -> None:
        """Start NSD on a free port and wait until it serves the zone."""
        self.nsd_port, self.nsd_conf, nsd = servers.start_nsd(
            self.procs, self.workdir, self.workdir / "bench.zone", self.args.nsd_cpu)
        say(f"nsd answering on {servers.HOST}:{self.nsd_port} (pid {nsd.pid}, CPU {self.args.nsd_cpu})")

    def start_servers(self) -> None:
        """Start every selected server, pinned to the server CPU; a server that
        does not answer in time is noted and left out."""
        for kind in self.kinds:
            home = self.workdir / kind.name
            home.mkdir()
            port = free_port()
            try:
                command = kind.command(home, port, self.nsd_port)
            except (subprocess.CalledProcessError, OSError) as error:
                self.fail(kind.name, f"could not be configured: {error}")
                continue
            process = self.procs.start(kind.name, command, home / "server.log",
                                       cpu=self.args.server_cpu, cwd=home)
            if not probe.wait_until_answering(port, workload.READY_NAME, kind.startup_limit,
                                              process.alive):
                status = process.popen.poll()
                process.stop()
                why = (f"exited with status {status}" if status is not None
                       else f"did not answer within {kind.startup_limit:.0f} s")
                self.fail(kind.name, f"{why}; end of its log:\n    "
                          + process.log_tail(8).replace("\n", "\n    "))
                continue
            pin(process.pid, self.args.server_cpu)
            server = Server(kind.name, port, process, self.results[kind.name])
            server.results["rss_start_mib"] = rss_kib(process.pid) / 1024
            self.live.append(server)
            say(f"{kind.name} answering on {servers.HOST}:{port} (pid {process.pid}, CPU {self.args.server_cpu})")

    def fail(self, name: str, why: str) -> None:
        """Record that server ``name`` is out of the run and why."""
        self.notes.append(f"{name} {why}")
        say(f"!! {name} {why}")

    # ------------------------------------------------------------ scenarios

    def perf(self, server: Server, label: str, queries: Path, load: dnsperf.Load) -> dnsperf.Result:
        """Run dnsperf against ``server`` and keep its output as ``server-label.txt``."""
        bound = (load.seconds or self.plan.warm_limit) + 30
        spy = None
        if self.args.profile and server.name == "dnsgo" and pyspy.available():
            folded = self.outdir / f"{server.name}-{label}.pyspy.txt"
            spy = pyspy.record(server.process.pid, folded, load.seconds or self.plan.warm_limit)
        user, system = cpu_ticks(server.process.pid)
        result = dnsperf.run(server.port, queries, load, self.outdir / f"{server.name}-{label}.txt",
                             self.args.client_cpu, bound)
        user_after, system_after = cpu_ticks(server.process.pid)
        tick = os.sysconf("SC_CLK_TCK")
        busy = (user_after - user + system_after - system) / tick
        if result.run_time:
            server.results[f"{label}_cpu_pct"] = 100 * busy / result.run_time
            server.results[f"{label}_sys_pct"] = 100 * (system_after - system) / tick / result.run_time
        if spy is not None:
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
            if folded.exists():
                table = pyspy.summary(folded)
                (self.outdir / f"{server.name}-{label}.profile.txt").write_text(table + "\n")
                say(f"  py-spy, {server.name} {label}:\n    " + table.replace("\n", "\n    "))
        say(f"  {server.name:14} {label:8} {result.qps:>10,.0f} q/s  completed {result.completed:,}"
            f"/{result.sent:,}  rcodes {result.rcodes}  server CPU {busy:.1f} s")
        if not result.ok:
            self.notes.append(f"{server.name} {label}: dnsperf printed no statistics")
        return result

    def load(self, **overrides) -> dnsperf.Load:
        """The standard load with the command line's concurrency and ``overrides``."""
        return dnsperf.Load(clients=self.args.clients, outstanding=self.args.outstanding, **overrides)

    def hit(self, server: Server) -> None:
        """Warm the hit working set with one pass, then measure throughput at
        max load for hit_seconds and latency at a fixed rate with -v."""
        queries = self.workdir / "hit.txt"
        self.perf(server, "hit-warm", queries, self.load(passes=1, seconds=self.plan.warm_limit))
        before = servers.nsd_queries(self.nsd_conf)
        result = self.perf(server, "hit", queries, self.load(seconds=self.plan.hit_seconds))
        server.results["hit_upstream"] = servers.nsd_queries(self.nsd_conf) - before
        server.results["hit_qps"] = result.qps
        server.results["hit_avg_ms"] = result.avg_latency * 1000
        server.results["hit_lost_pct"] = result.lost_fraction * 100
        latency = self.perf(server, "latency", queries, self.load(
            seconds=self.plan.latency_seconds, max_qps=self.args.latency_qps, verbose=True))
        for p in (50, 99):
            value = latency.percentile(p)
            server.results[f"hit_p{p}_ms"] = None if value is None else value * 1000
        if latency.lost:
            self.notes.append(f"{server.name} latency run lost {latency.lost} of {latency.sent} queries")

    def zipf(self, server: Server) -> None:
        """Send the Zipf trace once and count what reached NSD."""
        before = servers.nsd_queries(self.nsd_conf)
        result = self.perf(server, "zipf", self.workdir / "zipf.txt",
                           self.load(passes=1, seconds=self.args.zipf_limit or self.plan.zipf_limit))
        upstream = servers.nsd_queries(self.nsd_conf) - before
        if result.sent:
            server.results["zipf_hit_pct"] = (1 - upstream / result.sent) * 100
            server.results["zipf_ideal_pct"] = workload.ideal_hit_rate(self.zipf_trace[:result.sent]) * 100
        if result.sent < len(self.zipf_trace):
            self.notes.append(f"{server.name} zipf: time limit hit after {result.sent:,} of "
                              f"{len(self.zipf_trace):,} queries; rates are over the part sent")
        server.results["zipf_qps"] = result.qps
        server.results["zipf_lost_pct"] = result.lost_fraction * 100
        server.results["zipf_servfail"] = result.rcodes.get("SERVFAIL", 0)
        server.results["zipf_upstream"] = upstream
        server.results["rss_zipf_mib"] = rss_kib(server.process.pid) / 1024

    def miss(self, server: Server) -> None:
        """Send this server's own never-seen names once each, for miss_seconds."""
        result = self.perf(server, "miss", self.workdir / f"miss-{server.name}.txt",
                           self.load(passes=1, seconds=self.plan.miss_seconds))
        server.results["miss_qps"] = result.qps
        server.results["miss_avg_ms"] = result.avg_latency * 1000
        server.results["miss_lost_pct"] = result.lost_fraction * 100
        if result.sent >= self.plan.sizes.miss_names:
            self.notes.append(f"{server.name} miss: ran out of unique names before the time limit")
        server.results["rss_miss_mib"] = rss_kib(server.process.pid) / 1024

    def run(self) -> None:
        """Set up, then run each selected scenario against each live server."""
        busy = cpu_busy_fraction()
        if busy > 0.10:
            self.notes.append(f"the machine was busy before the run: {busy:.0%} of all CPU time "
                              "used by other processes; numbers are noisy")
        self.prepare_files()
        self.start_nsd()
        self.start_servers()
        for scenario in SCENARIOS:
            if scenario not in self.args.scenario:
                continue
            say(f"== {scenario}")
            for server in list(self.live):
                getattr(self, scenario)(server)
                if not server.process.alive():
                    self.fail(server.name, f"died during {scenario}:\n    "
                              + server.process.log_tail().replace("\n", "\n    "))
                    self.live.remove(server)

    # -------------------------------------------------------------- report

    def write_report(self) -> str:
        """Print and save the table, the notes and the raw numbers."""
        names = [kind.name for kind in self.kinds]
        text = [f"# dnsgo benchmark {self.outdir.name}{' (quick)' if self.args.quick else ''}", "",
                report.table(self.results, names, self.args.latency_qps), ""]
        if self.notes:
            text += ["Notes:", ""] + [f"- {note}" for note in self.notes] + [""]
        text += ["Setup:", ""] + [f"- {line}" for line in environment(self)] + [""]
        markdown = "\n".join(text)
        (self.outdir / "results.md").write_text(markdown)
        (self.outdir / "results.json").write_text(json.dumps({
            "results": self.results, "notes": self.notes, "plan": asdict(self.plan),
            "args": vars(self.args)}, indent=2, default=str))
        return markdown


def first_line(argv: list[str]) -> str:
    """The first non-empty line ``argv`` prints (a version string), or '?'."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return next((line for line in (out.stdout + out.stderr).splitlines() if line.strip()), "?")
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or '?'."""
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return "?"


def environment(bench: Bench) -> list[str]:
    """Lines describing the machine, the versions and the load."""
    model = cpu_model()
    sizes, args = bench.plan.sizes, bench.args
    return [
        f"{os.cpu_count()} CPUs ({model}), {platform.platform()}",
        f"servers on CPU {args.server_cpu}, dnsperf on CPU {args.client_cpu}, nsd on CPU {args.nsd_cpu}",
        f"{first_line(['/usr/sbin/nsd', '-v'])}; {first_line(['/usr/sbin/unbound', '-V'])}; "
        f"dnsperf {first_line(['sh', '-c', 'dnsperf -h 2>&1 | grep Version'])}; "
        f"Python {platform.python_version()}; twisted {twisted_version()}",
        f"dnsperf -T 1 -c {args.clients} -q {args.outstanding} -t 2; "
        f"hit {bench.plan.hit_seconds} s over {sizes.hit_names:,} A + "
        f"{len(bench.layout.cname_indexes):,} CNAME names; latency -Q {args.latency_qps} "
        f"for {bench.plan.latency_seconds} s; zipf {sizes.zipf_queries:,} queries over "
        f"{sizes.zipf_names:,} names, s={sizes.zipf_exponent}; miss {bench.plan.miss_seconds} s "
        f"over up to {sizes.miss_names:,} unique names per server",
    ]


def cpu_busy_fraction(seconds: float = 1.0) -> float:
    """The fraction of all CPU time that was not idle over ``seconds``."""
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # idle + iowait
    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def twisted_version() -> str:
    """The installed Twisted version, or '?'."""
    try:
        import twisted
        return twisted.__version__
    except ImportError:
        return "?"


def say(message: str) -> None:
    """Print a progress line at once."""
    print(message, flush=True)


def parse_args(argv=None):
    """The command line."""
    names = [kind.name for kind in servers.SERVERS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; the whole run takes < 2 minutes")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS,
                        help="run only this scenario (repeatable); default: all")
    parser.add_argument("--server", dest="servers", action="append", choices=names,
                        help="benchmark only this server (repeatable); default: all")
    parser.add_argument("--clients", type=int, default=10, help="dnsperf -c (default 10)")
    parser.add_argument("--outstanding", type=int, default=100, help="dnsperf -q (default 100)")
    parser.add_argument("--latency-qps", type=int, default=2000,
                        help="fixed rate of the hit latency run (default 2000)")
    parser.add_argument("--server-cpu", type=int, default=1, help="CPU of the servers under test")
    parser.add_argument("--client-cpu", type=int, default=0, help="CPU of dnsperf")
    parser.add_argument("--nsd-cpu", type=int, default=0, help="CPU of nsd (default 0, with dnsperf)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the temporary directory")
    parser.add_argument("--dnsgo-upstream", action="append", default=[], metavar="YAML",
                        help="a line for dnsgo's upstream section, e.g. 'socket_pool: {sockets: 16}' (repeatable)")
    parser.add_argument("--nsd-rrl", type=int, default=0, metavar="QPS",
                        help="NSD's rrl-ratelimit (Debian's default is 200; 0, the default here, turns RRL off)")
    parser.add_argument("--zipf-nx", type=float, default=0.0, metavar="PCT",
                        help="percent of the Zipf trace asked for names that do not exist (each once)")
    parser.add_argument("--zipf-scan", type=int, default=0, metavar="N",
                        help="insert N one-hit wonders (existing names, each asked once) as one block "
                             "in the middle of the Zipf trace")
    parser.add_argument("--zipf-limit", type=float, default=None, metavar="SECONDS",
                        help="time limit of the one Zipf pass (default 120, or 30 with --quick)")
    parser.add_argument("--dnsgo-eviction", choices=("s3fifo", "lru"), default="s3fifo",
                        help="dnsgo's eviction policy for both caches (default s3fifo)")
    parser.add_argument("--cache-mb", default="64,128", metavar="MSG,RRSET",
                        help="message and RRset cache sizes in MiB, for dnsgo and Unbound alike (default 64,128)")
    parser.add_argument("--profile", action="store_true",
                        help="record dnsgo with py-spy during each scenario and print where its time goes")
    args = parser.parse_args(argv)
    args.scenario = args.scenario or list(SCENARIOS)
    args.servers = args.servers or names
    return args


def main(argv=None) -> int:
    """Run the benchmark; return the exit status."""
    args = parse_args(argv)
    servers.DNSGO_UPSTREAM_EXTRA[:] = args.dnsgo_upstream
    servers.DNSGO_EVICTION[:] = [args.dnsgo_eviction]
    try:
        servers.CACHE_MB[:] = [int(part) for part in args.cache_mb.split(",")]
        if len(servers.CACHE_MB) != 2 or min(servers.CACHE_MB) < 1:
            raise ValueError
    except ValueError:
        raise SystemExit(f"--cache-mb: give two whole numbers of MiB, such as 1,2; not {args.cache_mb!r}")
    servers.NSD_RRL[0] = args.nsd_rrl
    for program in ("nsd", "nsd-control", "unbound", "dnsperf", "taskset"):
        if not shutil.which(program) and not Path("/usr/sbin", program).exists():
            print(f"{program} is missing: apt-get install nsd unbound dnsperf", file=sys.stderr)
            return 2
    return execute(lambda workdir, outdir, procs: Bench(args, QUICK if args.quick else FULL, workdir, outdir, procs),
                   args, "", "dnsgo-bench-")


def execute(make_bench, args, results_suffix: str, workdir_prefix: str) -> int:
    """
    Run a benchmark made by ``make_bench(workdir, outdir, procs)``: every
    process it starts is stopped at the end whatever happens, its logs are
    kept in the results folder, and its report is printed.  Returns the exit
    status (0, 1 after an error, 130 when interrupted).
    """
    outdir = BENCH_DIR / "results" / (time.strftime("%Y%m%d-%H%M%S") + results_suffix)
    outdir.mkdir(parents=True)
    workdir = Path(tempfile.mkdtemp(prefix=workdir_prefix))
    say(f"results in {outdir}; work files in {workdir}")
    started = time.monotonic()
    status = 0
    try:
        with Processes() as procs:
            bench = make_bench(workdir, outdir, procs)
            try:
                bench.run()
            except Exception:
                status = 1
                traceback.print_exc()
                bench.notes.append("the run stopped early: " + traceback.format_exc().splitlines()[-1])
            except (KeyboardInterrupt, SystemExit) as stop:
                status = 130
                bench.notes.append(f"the run was interrupted ({type(stop).__name__}: {stop})")
    finally:
        keep_logs(workdir, outdir)
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    say("")
    say(bench.write_report())
    say(f"(took {time.monotonic() - started:.0f} s; saved in {outdir})")
    return status


def keep_logs(workdir: Path, outdir: Path) -> None:
    """Copy the configurations and logs (not the big zone and query files)."""
    target = outdir / "logs"
    for path in workdir.rglob("*"):
        if path.is_file() and path.suffix in (".conf", ".yaml", ".tac", ".log", ".out"):
            destination = target / path.relative_to(workdir)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, destination)


if __name__ == "__main__":
    sys.exit(main())
