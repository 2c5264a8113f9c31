"""
dnsgo hybrid-mode benchmark: the shared L2 cache in Redis against the
local-only mode, on 127.0.0.1, with NSD as the upstream and dnsperf as the
load.

    .venv/bin/python bench/redis_bench.py [--quick]

It measures (1) the latency of queries that a fresh worker answers from
Redis, (2) the throughput of that path, (3) a new worker's hit rate in its
first 10 s when another worker has already warmed Redis, and (4) what a
dead Redis costs a hybrid worker.  It prints Markdown tables and writes
them to bench/results/<timestamp>-redis/, together with the raw dnsperf
outputs, the workers' /metrics, the configurations and the logs.  See
bench/README.md.
"""
import argparse
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import dnsperf
import probe
import servers
import workload
from procs import Process, Processes, cpu_ticks, free_port, pin
from run import cpu_busy_fraction, cpu_model, execute, first_line, say, twisted_version

BENCH_DIR = Path(__file__).resolve().parent
HOST = servers.HOST
HYBRID, LOCAL = "hybrid", "local-only"


@dataclass(frozen=True)
class Plan:
    """The sizes and time bounds of a run (full or --quick)."""

    latency_names: int        # (1) distinct names of each latency run
    throughput_names: int     # (2) names available to each max-load run
    throughput_seconds: float
    fill_limit: float         # bound on worker A's fill runs
    fill_qps: int             # worker A's rate (the Zipf warm-up: 4x)
    zipf_names: int           # (3) the Zipf population
    zipf_warm_queries: int    # (3) worker A's trace
    zipf_queries: int         # (3) the measured trace (more than 10 s can use)
    zipf_seconds: float
    hit_names: int            # (4) hit working set
    hit_seconds: float
    latency_seconds: float    # (4) fixed-rate hit latency run
    miss_names: int           # (4) unique names of the max-load miss run
    miss_seconds: float
    miss_latency_names: int   # (4) unique names of the fixed-rate miss run

    def block(self, rounds: int) -> int:
        """The size of one block of unique names in the zone for ``rounds`` rounds."""
        return max(self.latency_names, self.throughput_names,
                   self.miss_names * rounds, self.miss_latency_names * rounds)


FULL = Plan(latency_names=3_000, throughput_names=30_000, throughput_seconds=10, fill_limit=180, fill_qps=400,
            zipf_names=100_000, zipf_warm_queries=100_000, zipf_queries=600_000, zipf_seconds=10,
            hit_names=10_000, hit_seconds=10, latency_seconds=5, miss_names=20_000, miss_seconds=10,
            miss_latency_names=3_000)
QUICK = Plan(latency_names=600, throughput_names=4_000, throughput_seconds=2, fill_limit=40, fill_qps=800,
             zipf_names=10_000, zipf_warm_queries=20_000, zipf_queries=600_000, zipf_seconds=10,
             hit_names=1_000, hit_seconds=2, latency_seconds=1.5, miss_names=4_000, miss_seconds=2,
             miss_latency_names=450)

# Blocks of unique names (workload.Layout's miss blocks), one per purpose.
LATENCY_BLOCK, THROUGHPUT_BLOCK, MISS_BLOCK, MISS_LATENCY_BLOCK = range(4)


# --------------------------------------------------------------------------
# Redis


def redis_cli(port: int, *args: str, timeout: float = 10.0) -> str:
    """Run ``redis-cli -h HOST -p port args``; return its stdout, stripped ('' on failure)."""
    try:
        out = subprocess.run(["redis-cli", "-h", HOST, "-p", str(port), *args],
                             capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def redis_config(home: Path, port: int) -> Path:
    """Write a redis.conf for a throwaway server on HOST:port (no persistence) and return it."""
    conf = home / "redis.conf"
    conf.write_text("\n".join([
        f"port {port}", f"bind {HOST}", f"dir {home}", 'save ""', "appendonly no",
        "protected-mode no", f"logfile {home}/redis.log", "daemonize no",
    ]) + "\n")
    return conf


@dataclass
class Redis:
    """A redis-server this run started."""

    port: int
    process: Process

    def keys(self) -> int:
        """DBSIZE, or -1 when Redis does not answer."""
        answer = redis_cli(self.port, "DBSIZE")
        return int(answer) if answer.isdigit() else -1

    def kill(self) -> None:
        """SIGKILL the server (a crash, not a shutdown) and reap it."""
        self.process.popen.send_signal(signal.SIGKILL)
        self.process.popen.wait(10)


# --------------------------------------------------------------------------
# dnsgo workers


def dnsgo_config(home: Path, port: int, upstream_port: int, api_port: int, mode: str,
                 redis_port: int | None) -> Path:
    """Write the dnsgo YAML of one worker (caches sized like bench/run.py's,
    the API on ``api_port`` with the token in ``home/api-token``) and return it."""
    shared = ""
    if mode == HYBRID:
        shared = f"""\
  shared_cache:
    enabled: true
    type: redis
    address: "{HOST}:{redis_port}"
"""
    conf = home / "dnsgo.yaml"
    conf.write_text(f"""\
server:
  listen_address: "{HOST}:{port}"
upstreams: ["{HOST}:{upstream_port}"]
cache:
  mode: {mode}
  message_cache: {{max_size_mb: 64}}
  rrset_cache: {{max_size_mb: 128}}
{shared}api:
  listen_address: "{HOST}:{api_port}"
  auth_token_file: "{home / 'api-token'}"
""")
    return conf


@dataclass
class Worker:
    """A running dnsgo process under test."""

    name: str
    mode: str
    port: int
    api_port: int
    token: str
    process: Process


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric(text: str, name: str, **labels: str) -> float | None:
    """The sum of the samples of ``name`` (or ``name_total``) in Prometheus
    ``text`` whose labels include ``labels``; None when there is none."""
    total, found = 0.0, False
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match.group(1) not in (name, name + "_total"):
            continue
        have = dict(_LABEL.findall(match.group(2) or ""))
        if all(have.get(key) == value for key, value in labels.items()):
            total += float(match.group(3))
            found = True
    return total if found else None


def redis_counters(text: str) -> dict[str, float | None]:
    """A hybrid worker's Redis counters from its /metrics ``text``."""
    counters = {key: metric(text, f"dnsgo_redis_{key}")
                for key in ("writes", "dropped_writes", "errors", "breaker_trips", "connected")}
    counters["shared_hits"] = metric(text, "dnsgo_cache_hits", layer="shared")
    return counters


def describe_counters(counters: dict) -> str:
    """The counters of ``redis_counters`` as a phrase for the report."""
    return (f"shared hits {_n(counters.get('shared_hits'))}, writes {_n(counters.get('writes'))}, "
            f"dropped writes {_n(counters.get('dropped_writes'))}, Redis errors {_n(counters.get('errors'))}, "
            f"breaker trips {_n(counters.get('breaker_trips'))}")


# --------------------------------------------------------------------------
# CPU accounting, to tell how much other work shared the machine


@dataclass(frozen=True)
class CpuSample:
    """Machine-wide and own CPU time at one moment, in clock ticks."""

    total: int
    busy: int
    ours: int


def cpu_sample(procs: Processes) -> CpuSample:
    """Now: all CPU time, the non-idle part, and the part used by this run
    (this script, the dnsperf runs it waited for, and every started process tree)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    times = os.times()
    ours = round((times.user + times.system + times.children_user + times.children_system)
                 * os.sysconf("SC_CLK_TCK"))
    for process in procs.started:
        if process.alive():
            ours += tree_jiffies(process.pid)
    return CpuSample(sum(fields), sum(fields) - fields[3] - fields[4], ours)


def tree_jiffies(pid: int) -> int:
    """utime + stime of ``pid`` and its descendants, in clock ticks."""
    return sum(cpu_ticks(pid))


def other_load(before: CpuSample, after: CpuSample) -> float:
    """The fraction of all CPU time between two samples used by processes outside this run."""
    total = max(1, after.total - before.total)
    return max(0.0, ((after.busy - before.busy) - (after.ours - before.ours)) / total)


# --------------------------------------------------------------------------
# The benchmark


@dataclass
class Run:
    """One dnsperf run: its result, what reached NSD, and the other load meanwhile."""

    label: str
    result: dnsperf.Result
    upstream: int
    other_load: float
    server_cpu: float  # the worker's CPU time over the run's wall time (1.0 = one core)

    def summary(self) -> dict:
        """The numbers kept in results.json."""
        r = self.result
        p50, p99 = r.percentile(50), r.percentile(99)
        return {"sent": r.sent, "completed": r.completed, "lost": r.lost, "qps": r.qps,
                "run_time": r.run_time, "avg_ms": r.avg_latency * 1000, "rcodes": r.rcodes,
                "p50_ms": None if p50 is None else p50 * 1000,
                "p99_ms": None if p99 is None else p99 * 1000,
                "samples": len(r.latencies), "upstream": self.upstream,
                "other_load_pct": self.other_load * 100, "server_cpu_pct": self.server_cpu * 100}


class RedisBench:
    """One run of the hybrid-mode measurements: files, processes, scenarios."""

    def __init__(self, args, plan: Plan, workdir: Path, outdir: Path, procs: Processes):
        self.args, self.plan, self.workdir, self.outdir, self.procs = args, plan, workdir, outdir, procs
        sizes = workload.Sizes(hit_names=plan.hit_names, cname_every=20, zipf_names=plan.zipf_names,
                               zipf_queries=plan.zipf_queries, zipf_exponent=1.0,
                               miss_names=plan.block(args.rounds))
        self.layout = workload.Layout(sizes, 4)
        self.runs: dict[str, dict] = {}
        self.facts: dict[str, object] = {}
        self.notes: list[str] = []
        self.workers = 0

    # ---------------------------------------------------------------- setup

    def prepare_files(self) -> None:
        """Write the zone and the query files."""
        plan, layout = self.plan, self.layout
        workload.write_zone(self.workdir / "bench.zone", layout)
        self.latency_names = workload.miss_names(layout, LATENCY_BLOCK)[:plan.latency_names]
        self.throughput_names = workload.miss_names(layout, THROUGHPUT_BLOCK)[:plan.throughput_names]
        self.query_file("latency.txt", self.latency_names)
        self.query_file("throughput.txt", self.throughput_names)
        ranked = [workload.a_name(i) for i in layout.zipf_range]
        random.Random(layout.sizes.seed + 2000).shuffle(ranked)
        self.zipf_warm = workload.zipf_sample(ranked, 1.0, plan.zipf_warm_queries, layout.sizes.seed + 2001)
        self.zipf_trace = workload.zipf_sample(ranked, 1.0, plan.zipf_queries, layout.sizes.seed + 2002)
        self.query_file("zipf-warm.txt", self.zipf_warm)
        self.query_file("zipf.txt", self.zipf_trace)
        self.query_file("hit.txt", workload.hit_names(layout))
        self.miss_names = workload.miss_names(layout, MISS_BLOCK)
        self.miss_latency_names = workload.miss_names(layout, MISS_LATENCY_BLOCK)
        say(f"zone: {layout.a_records:,} A names + {len(layout.cname_indexes):,} CNAMEs")

    def query_file(self, name: str, names) -> Path:
        """Write a dnsperf query file into the work directory."""
        path = self.workdir / name
        workload.write_queries(path, names)
        return path

    def start_nsd(self) -> None:
        """Start NSD on a free port and wait until it serves the zone."""
        self.nsd_port, self.nsd_conf, nsd = servers.start_nsd(
            self.procs, self.workdir, self.workdir / "bench.zone", self.args.nsd_cpu)
        say(f"nsd answering on {HOST}:{self.nsd_port}")

    def start_redis(self, name: str) -> Redis:
        """Start a redis-server on a free port, pinned to the Redis CPU, and wait for PONG."""
        home = self.workdir / name
        home.mkdir()
        port = free_port()
        process = self.procs.start(name, ["redis-server", str(redis_config(home, port))],
                                   home / "redis.out", cpu=self.args.redis_cpu, cwd=home)
        deadline = time.monotonic() + 10
        while redis_cli(port, "PING") != "PONG":
            if time.monotonic() > deadline or not process.alive():
                raise SystemExit(f"redis-server did not start:\n{process.log_tail()}")
            time.sleep(0.05)
        pin(process.pid, self.args.redis_cpu)
        say(f"{name} answering on {HOST}:{port}")
        return Redis(port, process)

    def start_worker(self, label: str, mode: str, redis: Redis | None = None) -> Worker:
        """Start a fresh one-process dnsgo in ``mode`` pinned to the server CPU;
        a hybrid one is waited for until its Redis connection is up."""
        self.workers += 1
        name = f"{self.workers}-{label}"
        home = self.workdir / name
        home.mkdir()
        port, api_port = free_port(), free_port()
        token = os.urandom(16).hex()
        (home / "api-token").write_text(token + "\n")
        conf = dnsgo_config(home, port, self.nsd_port, api_port, mode,
                            redis.port if redis is not None else None)
        command = [servers.venv_bin("twistd"), "-n", "--pidfile=", "dnsgo", "--config", str(conf)]
        process = self.procs.start(name, command, home / "server.log", cpu=self.args.server_cpu, cwd=home)
        if not probe.wait_until_answering(port, workload.READY_NAME, 60, process.alive):
            process.stop()
            raise SystemExit(f"dnsgo {name} did not answer; end of its log:\n{process.log_tail()}")
        pin(process.pid, self.args.server_cpu)
        worker = Worker(name, mode, port, api_port, token, process)
        if mode == HYBRID:
            deadline = time.monotonic() + 10
            while metric(self.scrape(worker), "dnsgo_redis_connected") != 1:
                if time.monotonic() > deadline:
                    self.notes.append(f"{name}: Redis not reported connected after 10 s")
                    break
                time.sleep(0.1)
        say(f"{name} ({mode}) answering on {HOST}:{port}")
        return worker

    def scrape(self, worker: Worker, label: str | None = None) -> str:
        """The worker's /metrics text ('' if unavailable), saved as
        ``<worker>-<label>.metrics.txt`` when ``label`` is given."""
        request = urllib.request.Request(f"http://{HOST}:{worker.api_port}/metrics",
                                         headers={"Authorization": f"Bearer {worker.token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                text = response.read().decode("utf-8", "replace")
        except OSError:
            text = ""
        if label is not None:
            (self.outdir / f"{worker.name}-{label}.metrics.txt").write_text(text)
        return text

    def stop(self, worker: Worker) -> None:
        """Stop a worker, saying so if it had died."""
        if not worker.process.alive():
            self.notes.append(f"{worker.name} had died; end of its log: {worker.process.log_tail(5)}")
        worker.process.stop()

    # ------------------------------------------------------------ measuring

    def load(self, **overrides) -> dnsperf.Load:
        """The standard dnsperf load with the command line's concurrency and ``overrides``."""
        return dnsperf.Load(clients=self.args.clients, outstanding=self.args.outstanding, **overrides)

    def rate_load(self, seconds: float | None = None) -> dnsperf.Load:
        """Fixed-rate -v load: each name of the file once, or loop for ``seconds``."""
        if seconds is None:
            return self.load(passes=1, seconds=self.args.fill_bound, max_qps=self.args.latency_qps,
                             verbose=True)
        return self.load(seconds=seconds, max_qps=self.args.latency_qps, verbose=True)

    def measure(self, worker: Worker, label: str, queries: str, load: dnsperf.Load) -> Run:
        """Run dnsperf against ``worker``, counting NSD's queries and the other
        load meanwhile; keep the output as ``<worker>-<label>.txt``."""
        nsd_before, cpu_before = servers.nsd_queries(self.nsd_conf), cpu_sample(self.procs)
        worker_before, started = tree_jiffies(worker.process.pid), time.monotonic()
        result = dnsperf.run(worker.port, self.workdir / queries, load,
                             self.outdir / f"{worker.name}-{label}.txt", self.args.client_cpu,
                             (load.seconds or 60) + 30)
        elapsed = time.monotonic() - started
        worker_cpu = (tree_jiffies(worker.process.pid) - worker_before) / os.sysconf("SC_CLK_TCK")
        cpu_after = cpu_sample(self.procs)
        run = Run(label, result, servers.nsd_queries(self.nsd_conf) - nsd_before,
                  other_load(cpu_before, cpu_after), worker_cpu / max(elapsed, 1e-3))
        self.runs[f"{worker.name}/{label}"] = run.summary()
        p99 = result.percentile(99)
        say(f"  {worker.name:22} {label:16} {result.qps:>9,.0f} q/s  {result.completed:,}/{result.sent:,}"
            f"  upstream {run.upstream:,}" + (f"  p99 {p99 * 1000:.2f} ms" if p99 is not None else "")
            + f"  worker CPU {run.server_cpu:.0%}  other load {run.other_load:.0%}")
        if not result.ok:
            self.notes.append(f"{worker.name} {label}: dnsperf printed no statistics")
        return run

    def settle_writes(self, redis: Redis, limit: float = 30.0) -> int:
        """Wait until Redis's key count stops growing for a second (at most
        ``limit`` s): the workers' writes are fire-and-forget.  Return the count."""
        deadline, last, since = time.monotonic() + limit, -1, time.monotonic()
        while time.monotonic() < deadline:
            keys = redis.keys()
            if keys != last:
                last, since = keys, time.monotonic()
            elif time.monotonic() - since >= 1.0:
                break
            time.sleep(0.2)
        return last

    # ------------------------------------------------------------ scenarios

    def fill(self) -> None:
        """Worker A (hybrid) asks every latency and throughput name once and
        sends the Zipf warm-up trace, at a fixed rate.  Names whose key is
        still missing from Redis afterwards (dropped or failed writes) are
        asked again through fresh hybrid workers, up to three times."""
        plan, rate = self.plan, self.args.fill_qps or self.plan.fill_qps
        self.redis = self.start_redis("redis")
        filler = self.start_worker("A-filler", HYBRID, self.redis)
        names = self.latency_names + self.throughput_names
        self.query_file("fill.txt", names)
        fill = self.measure(filler, "fill", "fill.txt", self.load(passes=1, seconds=plan.fill_limit, max_qps=rate))
        warm = self.measure(filler, "zipf-warm", "zipf-warm.txt",
                            self.load(passes=1, seconds=plan.fill_limit, max_qps=4 * rate))
        self.zipf_warm_sent = self.zipf_warm[:warm.result.sent]
        self.settle_writes(self.redis)
        text = self.scrape(filler, "end")
        self.stop(filler)
        self.facts["filler"] = redis_counters(text)
        wanted = list(dict.fromkeys(names[:fill.result.sent] + self.zipf_warm_sent))
        missing = self.missing(wanted)
        first_missing = len(missing)
        repairs = 0
        while missing and repairs < 3:
            repairs += 1
            say(f"  {len(missing):,} of {len(wanted):,} names missing from Redis; asking them again")
            self.query_file(f"repair-{repairs}.txt", missing)
            filler = self.start_worker(f"A{repairs}-repair", HYBRID, self.redis)
            self.measure(filler, "repair", f"repair-{repairs}.txt",
                         self.load(passes=1, seconds=plan.fill_limit, max_qps=max(1, rate // 2)))
            self.settle_writes(self.redis)
            self.scrape(filler, "end")
            self.stop(filler)
            missing = self.missing(missing)
        self.facts.update(fill_wanted=len(wanted), fill_first_missing=first_missing,
                          fill_missing=len(missing), fill_repairs=repairs, redis_keys=self.redis.keys())
        say(f"  Redis holds {len(wanted) - len(missing):,} of the {len(wanted):,} names "
            f"({self.facts['redis_keys']:,} keys)")
        if missing:
            self.notes.append(f"{len(missing):,} of {len(wanted):,} names were still missing from Redis "
                              "after the fill; queries for them go upstream in scenarios 1 and 2")
        for run, total in ((fill, len(names)), (warm, len(self.zipf_warm))):
            if run.result.sent < total:
                self.notes.append(f"worker A's {run.label} hit its time limit after {run.result.sent:,} "
                                  f"of {total:,} queries")

    def missing(self, names: list[str]) -> list[str]:
        """The ``names`` whose A RRset key is not in Redis (one EXISTS each, through redis-cli's stdin)."""
        if not names:
            return []
        commands = "".join(f"EXISTS dns:rr:{{{name.lower().rstrip('.')}}}:1:1\n" for name in names)
        out = subprocess.run(["redis-cli", "-h", HOST, "-p", str(self.redis.port)], input=commands,
                             capture_output=True, text=True, timeout=120)
        answers = out.stdout.split()
        if len(answers) != len(names):
            raise RuntimeError(f"redis-cli answered {len(answers)} of {len(names)} EXISTS: {out.stderr[:200]}")
        return [name for name, answer in zip(names, answers) if answer != "1"]

    def fresh_pairs(self, round_: int, label: str):
        """The (key, label, mode) of a hybrid and a local-only worker, the
        order swapped every other round so neither always goes first."""
        pairs = [("redis", f"B-{label}", HYBRID), ("upstream", f"C-{label}", LOCAL)]
        return pairs if round_ % 2 == 0 else pairs[::-1]

    def latency(self) -> None:
        """(1) Fixed-rate latency over names only Redis holds (fresh hybrid
        worker), then the same names again from its L1, and the same names
        from the upstream (fresh local-only worker); ``rounds`` times."""
        runs = self.facts["latency"] = {"redis": [], "l1": [], "upstream": []}
        shared_hits = self.facts["latency_shared_hits"] = []
        for round_ in range(self.args.rounds):
            for key, label, mode in self.fresh_pairs(round_, "latency"):
                worker = self.start_worker(label, mode, self.redis if mode == HYBRID else None)
                runs[key].append(self.measure(worker, f"latency-{key}", "latency.txt", self.rate_load()))
                if mode == HYBRID:
                    runs["l1"].append(self.measure(worker, "latency-l1", "latency.txt", self.rate_load()))
                    text = self.scrape(worker, "end")
                    shared_hits.append(metric(text, "dnsgo_cache_hits", layer="shared"))
                self.stop(worker)

    def throughput(self) -> None:
        """(2) Max load over names only Redis holds, each once, on a fresh
        hybrid worker; the same names from the upstream on a fresh
        local-only one; ``rounds`` times."""
        load = self.load(passes=1, seconds=self.plan.throughput_seconds)
        runs = self.facts["throughput"] = {"redis": [], "upstream": []}
        for round_ in range(self.args.rounds):
            for key, label, mode in self.fresh_pairs(round_, "throughput"):
                worker = self.start_worker(label, mode, self.redis if mode == HYBRID else None)
                run = self.measure(worker, f"throughput-{key}", "throughput.txt", load)
                runs[key].append(run)
                text = self.scrape(worker, "end")
                if mode == HYBRID:
                    self.facts.setdefault("throughput_redis_counters", []).append(redis_counters(text))
                self.stop(worker)
                if run.result.sent >= len(self.throughput_names):
                    self.notes.append(f"{worker.name}: used up all {len(self.throughput_names):,} names "
                                      "before the time limit; its q/s covers the time it ran")

    def hit_rate(self) -> None:
        """(3) A fresh worker's first zipf_seconds over the measured trace:
        hybrid with Redis warmed by worker A, and local-only from cold.  Run
        once: the hybrid worker's own writes warm Redis further."""
        load = self.load(passes=1, seconds=self.plan.zipf_seconds)
        runs = self.facts["zipf"] = {}
        for key, label, mode in (("hybrid", "D-zipf", HYBRID), ("local", "E-zipf", LOCAL)):
            worker = self.start_worker(label, mode, self.redis if mode == HYBRID else None)
            run = runs[key] = self.measure(worker, f"zipf-{key}", "zipf.txt", load)
            text = self.scrape(worker, "end")
            if mode == HYBRID:
                self.facts["zipf_redis"] = redis_counters(text)
                self.facts["zipf_shared_hits"] = self.facts["zipf_redis"]["shared_hits"]
            self.stop(worker)
            if run.result.sent >= len(self.zipf_trace):
                self.notes.append(f"{worker.name}: sent the whole Zipf trace before the time limit")

    def redis_down(self) -> None:
        """(4) The same hit and miss workload on a hybrid worker whose Redis
        was killed after it connected, a local-only worker and a hybrid
        worker with Redis up, all running, each step run on one after the
        other (the order rotating every round), ``rounds`` times."""
        plan = self.plan
        redis = self.start_redis("redis-down")
        down = self.start_worker("F-redis-down", HYBRID, redis)
        redis.kill()
        say(f"  killed redis-down (pid {redis.process.pid})")
        local = self.start_worker("G-local", LOCAL)
        up = self.start_worker("H-redis-up", HYBRID, self.redis)
        pairs = [("hybrid", down), ("local", local), ("up", up)]
        runs = self.facts["down"] = {key: {"hit": [], "hit_latency": [], "miss": [], "miss_latency": []}
                                     for key, _ in pairs}
        warm = self.facts["down_warm"] = {}
        for key, worker in pairs:
            warm[key] = self.measure(worker, "hit-warm", "hit.txt", self.load(passes=1, seconds=plan.fill_limit))
        self.settle_writes(self.redis)
        for round_ in range(self.args.rounds):
            n = round_ + 1
            self.query_file(f"miss-{n}.txt", self.miss_names[round_ * plan.miss_names:n * plan.miss_names])
            self.query_file(f"miss-latency-{n}.txt", self.miss_latency_names[
                round_ * plan.miss_latency_names:n * plan.miss_latency_names])
            steps = (("hit", "hit.txt", self.load(seconds=plan.hit_seconds)),
                     ("hit_latency", "hit.txt", self.rate_load(plan.latency_seconds)),
                     ("miss", f"miss-{n}.txt", self.load(passes=1, seconds=plan.miss_seconds)),
                     ("miss_latency", f"miss-latency-{n}.txt", self.rate_load()))
            for step, queries, load in steps:
                for key, worker in pairs[round_ % 3:] + pairs[:round_ % 3]:
                    label = f"{step.replace('_', '-')}-{n}"
                    runs[key][step].append(self.measure(worker, label, queries, load))
                    if step == "miss" and key == "up":
                        self.settle_writes(self.redis)  # H's write backlog drains before the next run
        for key, worker in (("down_redis", down), ("up_redis", up)):
            self.facts[key] = redis_counters(self.scrape(worker, "end"))
        for _, worker in pairs:
            self.stop(worker)

    def run(self) -> None:
        """Everything, in order."""
        busy = cpu_busy_fraction()
        self.facts["busy_before"] = busy
        self.facts["loadavg_before"] = os.getloadavg()
        if busy > 0.10:
            self.notes.append(f"the machine was busy before the run: {busy:.0%} of all CPU time "
                              "used by other processes")
        self.prepare_files()
        self.start_nsd()
        for step in (self.fill, self.latency, self.throughput, self.hit_rate, self.redis_down):
            say(f"== {step.__name__}")
            step()
        self.facts["loadavg_after"] = os.getloadavg()

    # -------------------------------------------------------------- report

    def write_report(self) -> str:
        """Print and save the tables, the notes and the raw numbers."""
        loads = [run["other_load_pct"] for run in self.runs.values()]
        text = [f"# dnsgo hybrid-mode (Redis) benchmark {self.outdir.name}"
                f"{' (quick)' if self.args.quick else ''}", ""]
        text += tables(self)
        if loads:
            text += [f"Other processes used {min(loads):.0f}-{max(loads):.0f} % (mean "
                     f"{sum(loads) / len(loads):.0f} %) of the machine's CPU time during the dnsperf "
                     "runs (per run in results.json).", ""]
        if self.notes:
            text += ["Notes:", ""] + [f"- {note}" for note in self.notes] + [""]
        text += ["Setup:", ""] + [f"- {line}" for line in environment(self)] + [""]
        markdown = "\n".join(text)
        (self.outdir / "results.md").write_text(markdown)
        (self.outdir / "results.json").write_text(json.dumps({
            "facts": plain(self.facts), "runs": self.runs, "notes": self.notes, "plan": asdict(self.plan),
            "args": vars(self.args)}, indent=2, default=str))
        return markdown


# --------------------------------------------------------------------------
# Tables


def plain(value):
    """``value`` with every Run replaced by its summary, for JSON."""
    if isinstance(value, Run):
        return value.summary()
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def percentile(values, p: float) -> float | None:
    """The nearest-rank ``p``-th percentile (0-100) of ``values``, or None."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered), max(1, math.ceil(p / 100.0 * len(ordered)))) - 1]


def pooled(runs: list[Run], p: float) -> float | None:
    """The ``p``-th percentile of the -v latencies of all ``runs`` together, in seconds."""
    return percentile([x for run in runs for x in run.result.latencies], p)


def median(values: list[float | None]) -> float | None:
    """The median of the values that are not None, or None."""
    values = [value for value in values if value is not None]
    return statistics.median(values) if values else None


def _ms(value: float | None) -> str:
    """Seconds as milliseconds with three decimals, or a dash."""
    return "–" if value is None else f"{value * 1000:,.3f}"


def _n(value, digits: int = 0) -> str:
    """A number with thousands separators, or a dash."""
    return "–" if value is None else f"{value:,.{digits}f}"


def _spread(values: list[float], cell=_n) -> str:
    """The median of ``values`` formatted by ``cell``, with the range when there are several."""
    middle = cell(median(values))
    if len(values) < 2:
        return middle
    return f"{middle} ({cell(min(values))}–{cell(max(values))})"


def _ratio(top: float | None, bottom: float | None) -> str:
    """top ÷ bottom to two decimals, or a dash."""
    return "–" if not top or not bottom else f"{top / bottom:.2f}"


def _load(runs: list[Run]) -> str:
    """The mean share of CPU time other processes used during ``runs``, in %."""
    return f"{sum(run.other_load for run in runs) / len(runs) * 100:.0f}" if runs else "–"


def _cpu(runs: list[Run]) -> str:
    """The mean CPU use of the worker during ``runs``, in % of one core."""
    return f"{sum(run.server_cpu for run in runs) / len(runs) * 100:.0f}" if runs else "–"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table, first column left-aligned."""
    return (["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
            + ["| " + " | ".join(row) + " |" for row in rows] + [""])


def tables(bench: RedisBench) -> list[str]:
    """The four tables of the report, for whatever scenarios completed."""
    facts, plan, args, out = bench.facts, bench.plan, bench.args, []
    rounds = f"{args.rounds} rounds, " if args.rounds > 1 else ""
    if facts.get("latency", {}).get("upstream"):
        runs = facts["latency"]
        rows = []
        for what, key in (("fresh hybrid worker: L1 and local L2 miss, answered from Redis", "redis"),
                          ("the same worker, the same names again: L1 hit", "l1"),
                          ("fresh local-only worker: answered by the upstream (NSD)", "upstream")):
            each = runs[key]
            rows.append([what, _ms(pooled(each, 50)), _ms(pooled(each, 99)),
                         _spread([pooled([run], 99) for run in each], _ms),
                         f"{sum(len(run.result.latencies) for run in each):,}",
                         f"{sum(run.result.lost for run in each):,}",
                         f"{sum(run.upstream for run in each):,}", _load(each)])
        p99 = pooled(runs["redis"], 99)
        verdict = ("–" if p99 is None else
                   f"{'met' if p99 < 0.005 else 'NOT met'} (p99 {p99 * 1000:.2f} ms)")
        out += [f"### 1. Latency of a Redis L2 hit ({rounds}{len(bench.latency_names):,} distinct "
                f"names each, each name once, at {args.latency_qps} q/s)", ""]
        out += _table(["path", "p50 (ms)", "p99 (ms)", "p99 per round (ms)", "answers", "lost",
                       "upstream queries", "other load (%)"], rows)
        out += [f"Seed target, Redis L2 hit < 5 ms: {verdict}. Shared (Redis) hits counted by the "
                f"hybrid workers: {', '.join(_n(x) for x in facts.get('latency_shared_hits', []))}.", ""]
    if facts.get("throughput", {}).get("upstream"):
        runs = facts["throughput"]
        rows = []
        for what, key in (("fresh hybrid worker, names only in Redis", "redis"),
                          ("fresh local-only worker, the same names from the upstream", "upstream")):
            each = runs[key]
            rows.append([what, _spread([run.result.qps for run in each]),
                         _spread([run.result.avg_latency for run in each], _ms),
                         f"{sum(run.result.sent for run in each):,}", f"{sum(run.result.lost for run in each):,}",
                         f"{sum(run.upstream for run in each):,}", _cpu(each), _load(each)])
        out += [f"### 2. Throughput of the L2-from-Redis path ({rounds}max load, each name once, "
                f"at most {plan.throughput_seconds:g} s per run)", ""]
        out += _table(["path", "q/s", "mean latency (ms)", "sent", "lost", "upstream queries",
                       "worker CPU (%)", "other load (%)"], rows)
        out += ["Hybrid workers, per round: " + "; ".join(
            describe_counters(c) for c in facts.get("throughput_redis_counters", [])) + ".", ""]
    if "local" in facts.get("zipf", {}):
        warm = set(bench.zipf_warm_sent)
        rows = []
        for what, key, known in (("hybrid, Redis warmed by worker A", "hybrid", warm),
                                 ("local-only, cold", "local", set())):
            run = facts["zipf"][key]
            r = run.result
            sent = bench.zipf_trace[:r.sent]
            hit = (1 - run.upstream / r.sent) * 100 if r.sent else None
            ideal = (1 - len(set(sent) - known) / len(sent)) * 100 if sent else None
            rows.append([what, _n(hit, 2), _n(ideal, 2), f"{r.sent:,}", _n(r.qps), _ms(r.avg_latency),
                         f"{run.upstream:,}", _n(facts.get("zipf_shared_hits")) if known else "–",
                         _cpu([run]), _load([run])])
        out += [f"### 3. A new worker's hit rate in its first {plan.zipf_seconds:g} s (Zipf s=1.0 over "
                f"{plan.zipf_names:,} names; worker A sent an independent draw of "
                f"{len(bench.zipf_warm_sent):,} queries, {len(warm):,} distinct names)", ""]
        out += _table(["worker", "hit rate (%)", "ideal (%)", "queries sent", "q/s", "mean latency (ms)",
                       "upstream queries", "answered from Redis", "worker CPU (%)", "other load (%)"], rows)
    if facts.get("down", {}).get("up", {}).get("miss_latency"):
        down, local, up = facts["down"]["hybrid"], facts["down"]["local"], facts["down"]["up"]
        rows = []
        for what, key, kind in (
                ("miss: q/s, each name once", "miss", "qps"),
                ("miss: mean latency at max load (ms)", "miss", "avg"),
                (f"miss: p50 at {args.latency_qps} q/s (ms)", "miss_latency", 50),
                (f"miss: p99 at {args.latency_qps} q/s (ms)", "miss_latency", 99),
                ("hit: q/s", "hit", "qps"),
                ("hit: mean latency at max load (ms)", "hit", "avg"),
                (f"hit: p50 at {args.latency_qps} q/s (ms)", "hit_latency", 50),
                (f"hit: p99 at {args.latency_qps} q/s (ms)", "hit_latency", 99),
        ):
            sides = (down, local, up)
            if kind == "qps":
                a, b, c = (median([run.result.qps for run in side[key]]) for side in sides)
                cells = [_spread([run.result.qps for run in side[key]]) for side in sides]
            elif kind == "avg":
                a, b, c = (median([run.result.avg_latency for run in side[key]]) for side in sides)
                cells = [_spread([run.result.avg_latency for run in side[key]], _ms) for side in sides]
            else:
                a, b, c = (pooled(side[key], kind) for side in sides)
                cells = [_ms(a), _ms(b), _ms(c)]
            rows.append([what, *cells, _ratio(a, b), _ratio(c, b)])
        warm = [facts["down_warm"][key].result for key in ("hybrid", "local", "up")]
        for what, get, cell in (("first pass over the hit set, all misses (down: right after the kill): q/s",
                                 lambda r: r.qps, _n),
                                ("first pass: mean latency at max load (ms)", lambda r: r.avg_latency, _ms)):
            values = [get(r) for r in warm]
            rows.append([what, *(cell(v) for v in values), _ratio(values[0], values[1]),
                         _ratio(values[2], values[1])])
        every = [[run for runs in side.values() for run in runs] for side in (down, local, up)]
        rows.append(["lost queries (all runs)", *(f"{sum(run.result.lost for run in runs):,}" for runs in every),
                     "–", "–"])
        rows.append(["worker CPU during the max-load miss runs (%)",
                     *(_cpu(side["miss"]) for side in (down, local, up)), "–", "–"])
        rows.append(["other load during the runs (%)", *(_load(runs) for runs in every), "–", "–"])
        out += [f"### 4. Added cost while Redis is down ({rounds}Redis killed after the hybrid worker "
                "connected)", ""]
        out += _table(["workload", "hybrid, Redis down", "local-only", "hybrid, Redis up",
                       "down ÷ local-only", "up ÷ local-only"], rows)
        out += [f"Redis down (F), at the end: {describe_counters(facts.get('down_redis', {}))}, connected "
                f"{_n(facts.get('down_redis', {}).get('connected'))}. Redis up (H): "
                f"{describe_counters(facts.get('up_redis', {}))}.", ""]
    if "fill_wanted" in facts:
        filler = facts.get("filler", {})
        rate = args.fill_qps or plan.fill_qps
        out += [f"Fill: worker A asked {facts['fill_wanted']:,} distinct names at up to {rate} q/s "
                f"(the Zipf warm-up at up to {4 * rate}); {facts['fill_first_missing']:,} were missing "
                f"from Redis afterwards, {facts['fill_missing']:,} after {facts['fill_repairs']} repair "
                f"pass(es). Worker A: writes {_n(filler.get('writes'))}, dropped "
                f"{_n(filler.get('dropped_writes'))}, Redis errors {_n(filler.get('errors'))}, breaker trips "
                f"{_n(filler.get('breaker_trips'))}.", ""]
    if args.rounds > 1:
        out += ["q/s and mean latency: median (min–max) over the rounds; percentiles: over the "
                "answers of all rounds together.", ""]
    return out


def environment(bench: RedisBench) -> list[str]:
    """Lines describing the machine, the versions, the pinning and the load."""
    model = cpu_model()
    args, facts = bench.args, bench.facts
    before, after = facts.get("loadavg_before"), facts.get("loadavg_after")
    return [
        f"{os.cpu_count()} CPUs ({model}), {platform.platform()}",
        f"dnsgo workers (one process each, twistd -n dnsgo) on CPU {args.server_cpu}; dnsperf on CPU "
        f"{args.client_cpu}; nsd on CPU {args.nsd_cpu}; redis-server on CPU {args.redis_cpu}",
        f"{first_line(['redis-server', '--version'])}; {first_line(['/usr/sbin/nsd', '-v'])}; "
        f"dnsperf {first_line(['sh', '-c', 'dnsperf -h 2>&1 | grep Version'])}; "
        f"Python {platform.python_version()}; twisted {twisted_version()}",
        f"dnsperf -T 1 -c {args.clients} -q {args.outstanding} -t 2; fixed-rate runs -Q {args.latency_qps} -v",
        "load average (1, 5, 15 min) before: "
        + (", ".join(f"{x:.2f}" for x in before) if before else "?")
        + "; after: " + (", ".join(f"{x:.2f}" for x in after) if after else "?"),
    ]


def parse_args(argv=None):
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; the whole run takes < 2 minutes")
    parser.add_argument("--clients", type=int, default=10, help="dnsperf -c (default 10)")
    parser.add_argument("--outstanding", type=int, default=100, help="dnsperf -q (default 100)")
    parser.add_argument("--latency-qps", type=int, default=300,
                        help="rate of the fixed-rate latency runs (default 300)")
    parser.add_argument("--fill-qps", type=int, default=None,
                        help="rate at which worker A fills Redis (default 400, 800 quick; the Zipf warm-up 4x)")
    parser.add_argument("--server-cpu", type=int, default=1, help="CPU of the dnsgo workers")
    parser.add_argument("--client-cpu", type=int, default=0, help="CPU of dnsperf")
    parser.add_argument("--nsd-cpu", type=int, default=0, help="CPU of nsd")
    parser.add_argument("--redis-cpu", type=int, default=0, help="CPU of redis-server")
    parser.add_argument("--rounds", type=int, default=None,
                        help="repeat scenarios 1, 2 and 4 this many times (default 1 quick, 3 full)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    args.fill_bound = 60 if args.quick else 180
    args.rounds = args.rounds or (1 if args.quick else 3)
    return args


def main(argv=None) -> int:
    """Run the measurements; return the exit status."""
    args = parse_args(argv)
    for program in ("nsd", "nsd-control", "dnsperf", "taskset", "redis-server", "redis-cli"):
        if not shutil.which(program) and not Path("/usr/sbin", program).exists():
            print(f"{program} is missing: apt-get install nsd dnsperf redis-server", file=sys.stderr)
            return 2
    plan = QUICK if args.quick else FULL
    return execute(lambda workdir, outdir, procs: RedisBench(args, plan, workdir, outdir, procs),
                   args, "-redis", "dnsgo-redis-bench-")


if __name__ == "__main__":
    sys.exit(main())
