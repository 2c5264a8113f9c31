"""
dnsgo warm-start benchmark (issue #13): the hit rate of a new server's first
seconds when it starts with another server's L2, loaded through
``POST /api/cache/load`` or from ``cache.persist_path`` at a restart, against
a cold start.  NSD is the upstream and dnsperf the load, on 127.0.0.1.

    .venv/bin/python bench/warm_start.py [--qps 5000] [--warm-seconds 20]

Prints a Markdown table and writes it to bench/results/<timestamp>-warm/,
with the raw dnsperf outputs, the configurations and the logs.  See
bench/README.md.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import dnsperf
import probe
import servers
import workload
from procs import Process, Processes, free_port, pin
from run import cpu_busy_fraction, cpu_model, execute, first_line, say, twisted_version

HOST = servers.HOST
PHASES = ("1 cold (A)", "2 persist restart (A again)", "3 API load (fresh B)", "4 cold again (fresh C)")


# --------------------------------------------------------------------------
# dnsgo with a persist file and the API


def dnsgo_config(home: Path, port: int, upstream_port: int, api_port: int, persist: Path) -> Path:
    """Write the YAML of one dnsgo (caches sized like bench/run.py's, ``persist``
    as cache.persist_path, the API on ``api_port`` with the token in
    ``home/api-token``) and return it."""
    conf = home / "dnsgo.yaml"
    conf.write_text(f"""\
server:
  listen_address: "{HOST}:{port}"
upstreams: ["{HOST}:{upstream_port}"]
cache:
  persist_path: "{persist}"
  message_cache: {{max_size_mb: 64}}
  rrset_cache: {{max_size_mb: 128}}
api:
  listen_address: "{HOST}:{api_port}"
  auth_token_file: "{home / 'api-token'}"
""")
    return conf


@dataclass
class Dnsgo:
    """A running dnsgo process: its ports, API token, persist file and process."""

    name: str
    home: Path
    port: int
    api_port: int
    token: str
    persist: Path
    process: Process
    startup_seconds: float
    worker_id: str = ""

    def api(self, method: str, path: str, body: bytes | None = None, timeout: float = 120.0):
        """An authenticated request to the API; returns the open response (a context manager)."""
        request = urllib.request.Request(
            f"http://{HOST}:{self.api_port}{path}", data=body, method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/x-ndjson"})
        return urllib.request.urlopen(request, timeout=timeout)

    def cache_counters(self) -> dict[str, int]:
        """L1 (message cache) and L2 (RRset cache) hits and misses from
        ``GET /api/cache/distributed``, and the worker id."""
        with self.api("GET", "/api/cache/distributed", timeout=30) as response:
            worker = json.load(response)["workers"][0]
        self.worker_id = worker["workerId"]
        return {"l1_hits": worker["messageCache"]["hits"], "l1_misses": worker["messageCache"]["misses"],
                "l2_hits": worker["rrsetCache"]["hits"], "l2_misses": worker["rrsetCache"]["misses"]}


# --------------------------------------------------------------------------
# Dump files


def dump_names(path: Path) -> tuple[set[str], int | None]:
    """The names (lowercase, no final dot) of the entries of the cache dump at
    ``path``, and the count its end line gives (None without an end line)."""
    names, end = set(), None
    with open(path, encoding="ascii", errors="replace") as lines:
        for line in lines:
            if not line.strip():
                continue
            record = json.loads(line)
            if record.get("end") is True:
                end = record.get("entries")
            elif "name" in record:
                names.add(record["name"].rstrip(".").lower())
    return names, end


def ideal_hit_rate(window: list[str], known: set[str]) -> float:
    """The hit rate of an infinite cache that starts holding ``known`` on
    ``window``: only first sightings of names it does not hold miss."""
    seen, misses = set(known), 0
    for name in window:
        key = name.lower()
        if key not in seen:
            misses += 1
            seen.add(key)
    return 1.0 - misses / len(window) if window else 0.0


_LOADED = re.compile(r"loaded (\d+) entries, skipped (\d+) expired")
_WROTE = re.compile(r"wrote (\d+) entries")


def log_number(process: Process, pattern: re.Pattern) -> tuple[int, ...] | None:
    """The numbers of the last line of ``process``'s log that ``pattern`` matches, or None."""
    try:
        found = pattern.findall(process.log.read_text(errors="replace"))
    except OSError:
        return None
    if not found:
        return None
    last = found[-1]
    return tuple(int(x) for x in (last if isinstance(last, tuple) else (last,)))


# --------------------------------------------------------------------------
# The benchmark


@dataclass
class Row:
    """What one phase measured."""

    phase: str
    offset: int
    loaded: int | None = None
    expired: int | None = None
    sent: int = 0
    completed: int = 0
    qps: float = 0.0
    upstream: int = 0
    lost: int = 0
    counters: dict = field(default_factory=dict)
    ideal: float | None = None
    startup_seconds: float | None = None

    @property
    def hit_rate(self) -> float | None:
        """1 - NSD queries ÷ replies completed, during the phase."""
        return 1 - self.upstream / self.completed if self.completed else None

    def layer_rate(self, layer: str) -> float | None:
        """The hits ÷ lookups of ``layer`` (l1 or l2) during the phase."""
        hits, misses = self.counters.get(f"{layer}_hits"), self.counters.get(f"{layer}_misses")
        if hits is None or misses is None or hits + misses == 0:
            return None
        return hits / (hits + misses)


class WarmBench:
    """One run of the four phases: files, NSD, the dnsgo processes, the report."""

    def __init__(self, args, workdir: Path, outdir: Path, procs: Processes):
        self.args, self.workdir, self.outdir, self.procs = args, workdir, outdir, procs
        sizes = workload.Sizes(hit_names=0, cname_every=20, zipf_names=args.names,
                               zipf_queries=args.queries, zipf_exponent=args.exponent, miss_names=0)
        self.layout = workload.Layout(sizes, 0)
        self.rows: list[Row] = []
        self.facts: dict[str, object] = {}
        self.notes: list[str] = []
        self.started = 0

    # ---------------------------------------------------------------- setup

    def prepare_files(self) -> None:
        """Write the zone and three query files, each the trace from an offset:
        phase 1's (0), the warm-up's (where phase 1 ends) and phases 2-4's
        (``--offset``: by default where the warm-up ends)."""
        workload.write_zone(self.workdir / "bench.zone", self.layout)
        self.trace = workload.zipf_trace(self.layout)
        args = self.args
        self.warm_from = args.qps * args.seconds
        self.later_from = args.offset
        for name, start in (("first.txt", 0), ("warm.txt", self.warm_from), ("later.txt", self.later_from)):
            workload.write_queries(self.workdir / name, self.trace[start:])
        say(f"zone: {self.layout.a_records:,} A names; trace {len(self.trace):,} queries "
            f"(s = {args.exponent}); phase 1 from query 0, warm-up from {self.warm_from:,}, "
            f"phases 2-4 from {self.later_from:,}")

    def start_nsd(self) -> None:
        """Start NSD on a free port and wait until it serves the zone."""
        self.nsd_port, self.nsd_conf, nsd = servers.start_nsd(
            self.procs, self.workdir, self.workdir / "bench.zone", self.args.nsd_cpu, 120)
        say(f"nsd answering on {HOST}:{self.nsd_port}")

    def start_dnsgo(self, label: str, persist: Path, home: Path | None = None) -> Dnsgo:
        """Start a one-process dnsgo pinned to the server CPU with ``persist`` as
        its persist_path; wait until it answers DNS and its API answers."""
        self.started += 1
        name = f"{self.started}-{label}"
        home = home or self.workdir / name
        home.mkdir(exist_ok=True)
        port, api_port = free_port(), free_port()
        token = os.urandom(16).hex()
        (home / "api-token").write_text(token + "\n")
        conf = dnsgo_config(home, port, self.nsd_port, api_port, persist)
        command = [servers.venv_bin("twistd"), "-n", "--pidfile=", "dnsgo", "--config", str(conf)]
        began = time.monotonic()
        process = self.procs.start(name, command, home / f"{name}.log", cpu=self.args.server_cpu, cwd=home)
        if not probe.wait_until_answering(port, workload.READY_NAME, 60, process.alive):
            process.stop()
            raise SystemExit(f"dnsgo {name} did not answer; end of its log:\n{process.log_tail()}")
        startup = time.monotonic() - began
        pin(process.pid, self.args.server_cpu)
        server = Dnsgo(name, home, port, api_port, token, persist, process, startup)
        deadline = time.monotonic() + 30
        while True:
            try:
                server.cache_counters()
                break
            except (OSError, ValueError, KeyError):
                if time.monotonic() > deadline or not process.alive():
                    raise SystemExit(f"dnsgo {name}: the API did not answer; end of its log:\n"
                                     f"{process.log_tail()}")
                time.sleep(0.1)
        say(f"{name} answering on {HOST}:{port} after {startup:.2f} s (API {api_port}, "
            f"worker {server.worker_id})")
        return server

    # ------------------------------------------------------------ measuring

    def load(self, **overrides) -> dnsperf.Load:
        """The fixed-rate dnsperf load with the command line's concurrency and ``overrides``."""
        return dnsperf.Load(clients=self.args.clients, outstanding=self.args.outstanding,
                            max_qps=self.args.qps, **overrides)

    def measure(self, server: Dnsgo, row: Row) -> Row:
        """Send the trace from ``row.offset`` for ``--seconds`` at ``--qps``;
        count NSD's queries and dnsgo's cache counters around it."""
        queries = self.workdir / ("first.txt" if row.offset == 0 else "later.txt")
        nsd_before, counters_before = servers.nsd_queries(self.nsd_conf), server.cache_counters()
        result = dnsperf.run(server.port, queries, self.load(seconds=self.args.seconds),
                             self.outdir / f"{server.name}.txt", self.args.client_cpu, self.args.seconds + 30)
        row.upstream = servers.nsd_queries(self.nsd_conf) - nsd_before
        counters_after = server.cache_counters()
        row.counters = {key: counters_after[key] - counters_before[key] for key in counters_before}
        row.sent, row.completed, row.qps, row.lost = result.sent, result.completed, result.qps, result.lost
        row.startup_seconds = server.startup_seconds
        if not result.ok:
            self.notes.append(f"{row.phase}: dnsperf printed no statistics")
        if result.sent < self.args.qps * self.args.seconds * 0.95:
            self.notes.append(f"{row.phase}: dnsperf sent {result.sent:,} queries, short of "
                              f"{self.args.qps:,} q/s × {self.args.seconds} s: the server fell behind")
        hit = row.hit_rate
        say(f"  {row.phase}: {result.completed:,}/{result.sent:,} replies, {result.qps:,.0f} q/s, "
            f"upstream {row.upstream:,}, hit rate {'–' if hit is None else f'{hit:.1%}'}, "
            f"L1 {_pct(row.layer_rate('l1'))} %, L2 {_pct(row.layer_rate('l2'))} %")
        self.rows.append(row)
        return row

    def window(self, row: Row) -> list[str]:
        """The part of the trace a phase sent."""
        return self.trace[row.offset:row.offset + row.sent]

    def dump(self, server: Dnsgo, path: Path) -> int | None:
        """``POST /api/cache/dump`` of ``server``'s worker into ``path``; return the end line's count."""
        began = time.monotonic()
        with server.api("POST", f"/api/cache/dump?worker={server.worker_id}") as response, \
                open(path, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 16)
        seconds = time.monotonic() - began
        names, entries = dump_names(path)
        self.facts["api_dump"] = {"entries": entries, "bytes": path.stat().st_size, "seconds": seconds,
                                  "names": len(names)}
        say(f"  API dump: {entries} entries, {path.stat().st_size / 2**20:.1f} MiB in {seconds:.2f} s")
        if entries is None:
            self.notes.append("the API dump had no end line")
        return entries

    def load_dump(self, server: Dnsgo, path: Path) -> dict:
        """``POST /api/cache/load`` of the dump at ``path`` into ``server``'s worker; return the answer."""
        began = time.monotonic()
        try:
            with server.api("POST", f"/api/cache/load?worker={server.worker_id}", path.read_bytes()) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as error:
            raise SystemExit(f"POST /api/cache/load refused: {error.code} {error.read()[:300]!r}") from None
        seconds = time.monotonic() - began
        self.facts["api_load"] = {"answer": answer, "seconds": seconds}
        say(f"  API load: {json.dumps(answer)} in {seconds:.2f} s")
        return answer

    def stop_cleanly(self, server: Dnsgo) -> None:
        """SIGTERM the server (a clean stop: it writes its persist file) and wait for it."""
        began = time.monotonic()
        server.process.popen.send_signal(signal.SIGTERM)
        try:
            status = server.process.popen.wait(timeout=120)
        except subprocess.TimeoutExpired:
            status = None
            self.notes.append(f"{server.name} did not stop within 120 s of SIGTERM")
        seconds = time.monotonic() - began
        server.process.stop()
        wrote = log_number(server.process, _WROTE)
        size = server.persist.stat().st_size if server.persist.exists() else None
        self.facts["persist_write"] = {"status": status, "seconds": seconds,
                                       "entries": wrote[0] if wrote else None, "bytes": size}
        say(f"  SIGTERM: exit status {status} after {seconds:.2f} s; persist file "
            f"{'missing' if size is None else f'{size / 2**20:.1f} MiB'}, log says wrote "
            f"{wrote[0] if wrote else '?'} entries")
        if size is None:
            raise SystemExit(f"{server.name} wrote no persist file; end of its log:\n{server.process.log_tail()}")

    def phase_cold(self, label: str, phase: str, offset: int) -> tuple[Dnsgo, Row]:
        """A fresh dnsgo with no persist file, measured from ``offset``."""
        server = self.start_dnsgo(label, self.workdir / f"{label}.persist")
        row = self.measure(server, Row(phase, offset))
        row.ideal = workload.ideal_hit_rate(self.window(row))
        return server, row

    def run(self) -> None:
        """The four phases, in order."""
        busy = cpu_busy_fraction()
        self.facts["busy_before"] = busy
        self.facts["loadavg_before"] = os.getloadavg()
        if busy > 0.10:
            self.notes.append(f"the machine was busy before the run: {busy:.0%} of all CPU time "
                              "used by other processes; numbers are noisy")
        self.prepare_files()
        self.start_nsd()

        say(f"== {PHASES[0]}")
        a, _ = self.phase_cold("A", PHASES[0], 0)
        if self.args.warm_seconds:
            say(f"  warming for {self.args.warm_seconds} s over the rest of the trace")
            warm = dnsperf.run(a.port, self.workdir / "warm.txt", self.load(seconds=self.args.warm_seconds),
                               self.outdir / f"{a.name}-warm.txt", self.args.client_cpu,
                               self.args.warm_seconds + 30)
            self.facts["warm"] = {"sent": warm.sent, "completed": warm.completed, "qps": warm.qps}
        dump = self.workdir / "A.dump"
        self.dump(a, dump)
        self.stop_cleanly(a)

        say(f"== {PHASES[1]}")
        known, _ = dump_names(a.persist)
        restarted = self.start_dnsgo("A-restart", a.persist, home=a.home)
        loaded = log_number(restarted.process, _LOADED)
        row = Row(PHASES[1], self.later_from, loaded=loaded[0] if loaded else None, expired=loaded[1] if loaded else None)
        if loaded is None:
            self.notes.append(f"{PHASES[1]}: no 'loaded N entries' line in its log")
        self.measure(restarted, row)
        row.ideal = ideal_hit_rate(self.window(row), known)
        restarted.process.stop()

        say(f"== {PHASES[2]}")
        b = self.start_dnsgo("B", self.workdir / "B.persist")
        answer = self.load_dump(b, dump)
        result = (answer.get("results") or [{}])[0]
        row = Row(PHASES[2], self.later_from, loaded=result.get("loaded"), expired=result.get("expired"))
        if not result.get("success"):
            self.notes.append(f"{PHASES[2]}: the load did not succeed: {json.dumps(answer)}")
        self.measure(b, row)
        row.ideal = ideal_hit_rate(self.window(row), dump_names(dump)[0])
        b.process.stop()

        say(f"== {PHASES[3]}")
        c, _ = self.phase_cold("C", PHASES[3], self.later_from)
        c.process.stop()
        self.facts["loadavg_after"] = os.getloadavg()

    # -------------------------------------------------------------- report

    def table(self) -> list[str]:
        """The Markdown table of the phases measured."""
        lines = ["| phase | trace from | entries loaded | hit rate (upstream) | ideal | L1 hit % | L2 hit % "
                 "| q/s completed | replies | upstream queries | start to answering (s) |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in self.rows:
            loaded = "–" if row.loaded is None else f"{row.loaded:,}"
            if row.expired:
                loaded += f" ({row.expired:,} expired)"
            lines.append(
                f"| {row.phase} | {row.offset:,} | {loaded} | {_pct(row.hit_rate)} % | {_pct(row.ideal)} % "
                f"| {_pct(row.layer_rate('l1'))} | {_pct(row.layer_rate('l2'))} | {row.qps:,.0f} "
                f"| {row.completed:,} | {row.upstream:,} | {row.startup_seconds:.2f} |")
        return lines + [""]

    def write_report(self) -> str:
        """Print and save the table, the notes and the raw numbers."""
        args = self.args
        text = [f"# dnsgo warm start (issue #13) {self.outdir.name}", ""] + self.table()
        text += [f"Each phase: dnsperf -Q {args.qps} for {args.seconds} s over the same Zipf trace, from "
                 "query 0 (phase 1) or from the offset `trace from`. Hit rate = 1 − NSD queries ÷ replies completed. Ideal = an infinite cache that "
                 "starts with what was loaded. L1 / L2 hit % = hits ÷ lookups of dnsgo's message / RRset "
                 "cache during the phase (GET /api/cache/distributed).", ""]
        facts = []
        if "warm" in self.facts:
            w = self.facts["warm"]
            facts.append(f"A's warm-up after phase 1: {w['completed']:,} replies over {args.warm_seconds} s "
                         f"({w['qps']:,.0f} q/s), the trace's continuation")
        if "api_dump" in self.facts:
            d = self.facts["api_dump"]
            facts.append(f"API dump of A: {d['entries']} entries ({d['names']:,} names), "
                         f"{d['bytes'] / 2**20:.1f} MiB in {d['seconds']:.2f} s")
        if "persist_write" in self.facts:
            p = self.facts["persist_write"]
            facts.append(f"A's SIGTERM: exit status {p['status']} (twistd re-raises the signal it stopped "
                         f"on) after {p['seconds']:.2f} s; persist file "
                         f"{p['entries']} entries, {(p['bytes'] or 0) / 2**20:.1f} MiB")
        if "api_load" in self.facts:
            facts.append(f"API load into B: {self.facts['api_load']['seconds']:.2f} s")
        if facts:
            text += ["Facts:", ""] + [f"- {fact}" for fact in facts] + [""]
        if self.notes:
            text += ["Notes:", ""] + [f"- {note}" for note in self.notes] + [""]
        text += ["Setup:", ""] + [f"- {line}" for line in environment(self)] + [""]
        markdown = "\n".join(text)
        (self.outdir / "results.md").write_text(markdown)
        (self.outdir / "results.json").write_text(json.dumps({
            "rows": [dict(vars(row), hit_rate=row.hit_rate, l1_rate=row.layer_rate("l1"),
                          l2_rate=row.layer_rate("l2")) for row in self.rows],
            "facts": self.facts, "notes": self.notes, "args": vars(args)}, indent=2, default=str))
        return markdown


def _pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal, or a dash."""
    return "–" if value is None else f"{value * 100:.1f}"


def environment(bench: WarmBench) -> list[str]:
    """Lines describing the machine, the versions, the pinning and the load."""
    args, facts = bench.args, bench.facts
    before, after = facts.get("loadavg_before"), facts.get("loadavg_after")
    return [
        f"{os.cpu_count()} CPUs ({cpu_model()})",
        f"dnsgo (one process, twistd -n dnsgo, L1 64 MiB, L2 128 MiB) on CPU {args.server_cpu}; "
        f"dnsperf on CPU {args.client_cpu}; nsd on CPU {args.nsd_cpu} (RRL off)",
        f"{first_line(['/usr/sbin/nsd', '-v'])}; dnsperf "
        f"{first_line(['sh', '-c', 'dnsperf -h 2>&1 | grep Version'])}; "
        f"Python {sys.version.split()[0]}; twisted {twisted_version()}",
        f"zone {bench.layout.a_records:,} A names; Zipf trace {args.queries:,} queries, s = {args.exponent}; "
        f"dnsperf -T 1 -c {args.clients} -q {args.outstanding} -t 2 -Q {args.qps} -l {args.seconds}",
        "load average (1, 5, 15 min) before: "
        + (", ".join(f"{x:.2f}" for x in before) if before else "?")
        + "; after: " + (", ".join(f"{x:.2f}" for x in after) if after else "?"),
    ]


def parse_args(argv=None):
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qps", type=int, default=5000, help="dnsperf -Q of every phase (default 5000)")
    parser.add_argument("--seconds", type=int, default=10, help="length of each measured phase (default 10)")
    parser.add_argument("--warm-seconds", type=int, default=20,
                        help="how long A keeps getting the trace's continuation before the dump (default 20)")
    parser.add_argument("--names", type=int, default=50_000, help="Zipf population (default 50,000)")
    parser.add_argument("--queries", type=int, default=200_000, help="trace length (default 200,000)")
    parser.add_argument("--exponent", type=float, default=1.0, help="Zipf exponent s (default 1.0)")
    parser.add_argument("--offset", type=int, default=None,
                        help="where in the trace phases 2-4 start (default: where A's warm-up ends, "
                             "qps × (seconds + warm-seconds); 0 replays phase 1's queries)")
    parser.add_argument("--clients", type=int, default=10, help="dnsperf -c (default 10)")
    parser.add_argument("--outstanding", type=int, default=100, help="dnsperf -q (default 100)")
    parser.add_argument("--server-cpu", type=int, default=1, help="CPU of dnsgo")
    parser.add_argument("--client-cpu", type=int, default=0, help="CPU of dnsperf")
    parser.add_argument("--nsd-cpu", type=int, default=0, help="CPU of nsd")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    for option in ("qps", "seconds", "names", "queries", "clients", "outstanding"):
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be at least 1")
    if args.warm_seconds < 0:
        parser.error("--warm-seconds may not be negative")
    if args.offset is None:
        args.offset = args.qps * (args.seconds + args.warm_seconds)
    if args.offset < 0:
        parser.error("--offset may not be negative")
    needed = max(args.qps * (args.seconds + args.warm_seconds), args.offset + args.qps * args.seconds)
    if args.queries < needed:
        parser.error(f"--queries {args.queries:,} is too short: this run sends up to {needed:,} "
                     "(phase 1, the warm-up, then phases 2-4 from --offset)")
    return args


def main(argv=None) -> int:
    """Run the phases; return the exit status."""
    args = parse_args(argv)
    for program in ("nsd", "nsd-control", "dnsperf", "taskset"):
        if not shutil.which(program) and not Path("/usr/sbin", program).exists():
            print(f"{program} is missing: apt-get install nsd dnsperf", file=sys.stderr)
            return 2
    return execute(lambda workdir, outdir, procs: WarmBench(args, workdir, outdir, procs),
                   args, "-warm", "dnsgo-warm-bench-")


if __name__ == "__main__":
    sys.exit(main())
