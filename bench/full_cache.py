"""
dnsgo full-cache memory benchmark (issue #10): RSS measured with both caches
full, next to the bytes the caches account for and their configured bounds,
and whether RSS stays flat while eviction runs.  Unbound, with the same
msg-cache-size and rrset-cache-size, gets the same queries at the same time.

    .venv/bin/python bench/full_cache.py [--cache-mb 64,128] [--evict-minutes 10]

Phase 1 sends names never asked before, each once, at a rate dnsgo sustains,
until its message cache (L1) and RRset cache (L2) are both within
``--full-pct`` of their bounds and both have evicted.  Phase 2 keeps sending
new names for ``--evict-minutes``.  Every ``--sample-seconds`` the RSS of
both servers and their caches' counters are sampled.

Prints a Markdown table and summary and writes them to
bench/results/<timestamp>-fullcache/, with the samples as JSON, the raw
dnsperf outputs, the configurations and the logs.  See bench/README.md.
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dnsperf
import probe
import servers
import workload
from procs import Process, Processes, free_port, pin, rss_kib
from run import cpu_busy_fraction, cpu_model, execute, first_line, say, twisted_version

HOST = servers.HOST
MIB = 1 << 20
#: The address every name the zone does not hold explicitly gets from ``*.bench.test``.
WILDCARD_ADDRESS = "10.255.255.254"


# --------------------------------------------------------------------------
# The zone and the query files


def write_zone(path: Path, names: int) -> None:
    """Write ``bench.test.`` with SOA, NS, the ready name, ``names`` A names
    ``workload.a_name(1..names)`` and a wildcard ``*`` A record that answers
    the names past them with the same shape of reply."""
    with open(path, "w") as out:
        out.write(f"$ORIGIN {workload.ZONE}.\n$TTL {workload.TTL}\n"
                  f"@ IN SOA ns1 hostmaster 1 3600 900 604800 {workload.TTL}\n"
                  "@ IN NS ns1\nns1 IN A 127.0.0.1\nready IN A 127.0.0.1\n"
                  f"* IN A {WILDCARD_ADDRESS}\n")
        block = 20_000
        for start in range(1, names + 1, block):
            out.write("".join(
                f"h{i:07d} IN A 10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}\n"
                for i in range(start, min(names + 1, start + block))))


def write_names(path: Path, first: int, count: int) -> None:
    """Write a dnsperf file asking A for ``workload.a_name(first .. first+count-1)``."""
    with open(path, "w") as out:
        out.write("".join(f"h{i:07d}.{workload.ZONE} A\n" for i in range(first, first + count)))


# --------------------------------------------------------------------------
# The servers and what they report


@dataclass
class Dnsgo:
    """The dnsgo under test: its DNS and API ports, API token and process."""

    port: int
    api_port: int
    token: str
    process: Process

    def get(self, path: str, timeout: float = 30.0) -> bytes:
        """The body of an authenticated ``GET path`` on the API."""
        request = urllib.request.Request(f"http://{HOST}:{self.api_port}{path}",
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()

    def caches(self) -> dict[str, dict]:
        """L1 and L2's size_bytes, max_size_bytes and evicts (``GET
        /api/cache/distributed``) and entries (``dnsgo_cache_entries`` of
        ``GET /metrics``; the API's body does not list entries)."""
        worker = json.loads(self.get("/api/cache/distributed"))["workers"][0]
        entries = {layer: int(float(count)) for layer, count in re.findall(
            r'^dnsgo_cache_entries\{[^}]*layer="(\w+)"[^}]*\}\s+(\S+)',
            self.get("/metrics").decode(), re.M)}
        found = {}
        for key, body, layer in (("l1", "messageCache", "message"), ("l2", "rrsetCache", "rrset")):
            stats = worker[body]
            found[key] = {"size": stats["size_bytes"], "bound": stats["max_size_bytes"],
                          "evicts": stats["evicts"], "entries": entries.get(layer)}
        return found


def dnsgo_config(home: Path, port: int, upstream_port: int, api_port: int, cache_mb: tuple[int, int]) -> Path:
    """Write the YAML of the dnsgo under test (``servers.dnsgo_command``'s,
    plus the API on ``api_port`` with its token in ``home/api-token``)."""
    conf = home / "dnsgo.yaml"
    conf.write_text(f"""\
server:
  listen_address: "{HOST}:{port}"
upstreams: ["{HOST}:{upstream_port}"]
cache:
  message_cache: {{max_size_mb: {cache_mb[0]}}}
  rrset_cache: {{max_size_mb: {cache_mb[1]}}}
api:
  listen_address: "{HOST}:{api_port}"
  auth_token_file: "{home / 'api-token'}"
""")
    return conf


def unbound_command(home: Path, port: int, upstream_port: int) -> tuple[list[str], Path]:
    """``servers.unbound_command``'s configuration (caches sized by
    ``servers.CACHE_MB``) plus extended statistics and remote control on a
    unix socket, so that ``unbound-control stats_noreset`` reports its
    caches' memory; returns
    the argv and the configuration's path."""
    argv = servers.unbound_command(home, port, upstream_port)
    conf = home / "unbound.conf"
    with open(conf, "a") as out:
        out.write(f'server:\n  extended-statistics: yes\n'
                  f'remote-control:\n  control-enable: yes\n  control-interface: "{home / "unbound.sock"}"\n')
    subprocess.run(["unbound-checkconf", str(conf)], check=True, timeout=30, stdout=subprocess.DEVNULL)
    return argv, conf


def unbound_caches(conf: Path) -> dict[str, int]:
    """Unbound's ``mem.cache.message``/``mem.cache.rrset`` (bytes) and, where
    this version has them, ``msg.cache.count``/``rrset.cache.count``."""
    output = subprocess.run(["unbound-control", "-c", str(conf), "stats_noreset"], check=True,
                            capture_output=True, text=True, timeout=30).stdout
    stats = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    found = {"msg": int(stats["mem.cache.message"]), "rrset": int(stats["mem.cache.rrset"])}
    for key, name in (("msg_count", "msg.cache.count"), ("rrset_count", "rrset.cache.count")):
        if name in stats:
            found[key] = int(stats[name])
    return found


# --------------------------------------------------------------------------
# The benchmark


@dataclass
class Sample:
    """One sampling point: both servers' RSS and caches, and the chunk of
    queries just sent."""

    seconds: float
    phase: int
    qps: int
    dnsgo_rss_kib: int
    unbound_rss_kib: int | None
    dnsgo: dict | None
    unbound: dict | None
    dnsgo_sent: int = 0
    dnsgo_lost: int = 0
    unbound_sent: int = 0
    unbound_lost: int = 0

    def dnsgo_full(self, share: float) -> bool:
        """Whether dnsgo's L1 and L2 both hold at least ``share`` of their bounds and have evicted."""
        return bool(self.dnsgo) and all(
            c["size"] >= share * c["bound"] and c["evicts"] > 0 for c in self.dnsgo.values())

    def unbound_full(self, share: float, bounds: tuple[int, int], before: "Sample | None") -> bool:
        """Whether Unbound's message and RRset caches both hold at least
        ``share`` of ``bounds`` and have stopped growing since the sample
        ``before`` although new names kept coming: it evicts.  (Unbound
        counts no evictions, and its ``mem.cache.*`` include the hash
        tables, so they settle above the configured sizes.)"""
        if not (self.unbound and before and before.unbound and self.unbound_sent):
            return False
        if self.unbound["msg"] < share * bounds[0] or self.unbound["rrset"] < share * bounds[1]:
            return False
        if "msg_count" in self.unbound and "msg_count" in before.unbound:
            keys = ("msg_count", "rrset_count")
        else:
            keys = ("msg", "rrset")
        return all(self.unbound[key] <= before.unbound[key] * 1.005 for key in keys)


@dataclass
class Chunk:
    """The queries of one sampling interval: its names and dnsperf's results."""

    first: int
    count: int
    qps: int
    results: dict = field(default_factory=dict)


class FullCacheBench:
    """One run: the zone, NSD, dnsgo and Unbound, the two phases, the report."""

    def __init__(self, args, workdir: Path, outdir: Path, procs: Processes):
        self.args, self.workdir, self.outdir, self.procs = args, workdir, outdir, procs
        self.bounds = (args.cache_mb[0] * MIB, args.cache_mb[1] * MIB)
        self.samples: list[Sample] = []
        self.notes: list[str] = []
        self.facts: dict[str, object] = {}
        self.qps = args.qps
        self.clean_chunks = 0
        self.next_name = 1
        self.names_sent = 0
        self.unbound_names_sent = 0
        self.wildcard_sent = 0
        self.chunks = 0
        self.began = 0.0
        self.dnsgo: Dnsgo | None = None
        self.unbound: Process | None = None

    # ---------------------------------------------------------------- setup

    def start_nsd(self) -> None:
        """Write the zone, start NSD on a free port and wait until it serves it."""
        began = time.monotonic()
        zone = self.workdir / "bench.zone"
        write_zone(zone, self.args.zone_names)
        written = time.monotonic() - began
        self.nsd_port, self.nsd_conf, nsd = servers.start_nsd(self.procs, self.workdir, zone, self.args.nsd_cpu, 600)
        loaded = time.monotonic() - began - written
        self.facts["zone"] = {"names": self.args.zone_names, "bytes": zone.stat().st_size,
                              "write_seconds": written, "nsd_load_seconds": loaded}
        say(f"zone: {self.args.zone_names:,} A names + *.{workload.ZONE} ({zone.stat().st_size / MIB:.0f} MiB) "
            f"written in {written:.1f} s; nsd answering on {HOST}:{self.nsd_port} after {loaded:.1f} s")

    def start_dnsgo(self) -> None:
        """Start the one-process dnsgo with the API, pinned to the server CPU."""
        home = self.workdir / "dnsgo"
        home.mkdir()
        port, api_port = free_port(), free_port()
        token = os.urandom(16).hex()
        (home / "api-token").write_text(token + "\n")
        conf = dnsgo_config(home, port, self.nsd_port, api_port, self.args.cache_mb)
        command = [servers.venv_bin("twistd"), "-n", "--pidfile=", "dnsgo", "--config", str(conf)]
        process = self.procs.start("dnsgo", command, home / "dnsgo.log", cpu=self.args.server_cpu, cwd=home)
        if not probe.wait_until_answering(port, workload.READY_NAME, 60, process.alive):
            raise SystemExit(f"dnsgo did not answer; end of its log:\n{process.log_tail()}")
        pin(process.pid, self.args.server_cpu)
        server = Dnsgo(port, api_port, token, process)
        deadline = time.monotonic() + 30
        while True:
            try:
                server.caches()
                break
            except (OSError, ValueError, KeyError, IndexError):
                if time.monotonic() > deadline or not process.alive():
                    raise SystemExit(f"dnsgo's API did not answer; end of its log:\n{process.log_tail()}")
                time.sleep(0.2)
        self.dnsgo = server
        say(f"dnsgo answering on {HOST}:{port} (pid {process.pid}, API {api_port}, CPU {self.args.server_cpu})")

    def start_unbound(self) -> None:
        """Start Unbound with the same cache sizes, pinned to the server CPU."""
        home = self.workdir / "unbound"
        home.mkdir()
        self.unbound_port = free_port()
        argv, self.unbound_conf = unbound_command(home, self.unbound_port, self.nsd_port)
        process = self.procs.start("unbound", argv, home / "unbound.log", cpu=self.args.server_cpu, cwd=home)
        if not probe.wait_until_answering(self.unbound_port, workload.READY_NAME, 30, process.alive):
            raise SystemExit(f"unbound did not answer; end of its log:\n{process.log_tail()}")
        pin(process.pid, self.args.server_cpu)
        self.unbound = process
        say(f"unbound answering on {HOST}:{self.unbound_port} (pid {process.pid}, CPU {self.args.server_cpu})")

    # ------------------------------------------------------------ measuring

    def sample(self, phase: int, chunk: Chunk | None) -> Sample:
        """Read both servers' RSS and caches now."""
        try:
            dnsgo_caches = self.dnsgo.caches()
        except (OSError, ValueError, KeyError, IndexError) as error:
            dnsgo_caches = None
            self.notes.append(f"at {self.elapsed():.0f} s dnsgo's API did not answer: {error}")
        unbound_caches_now = None
        if self.unbound is not None:
            try:
                unbound_caches_now = unbound_caches(self.unbound_conf)
            except (OSError, KeyError, ValueError, subprocess.SubprocessError) as error:
                self.notes.append(f"at {self.elapsed():.0f} s unbound-control failed: {error}")
        results = chunk.results if chunk else {}
        sample = Sample(
            seconds=self.elapsed(), phase=phase, qps=chunk.qps if chunk else 0,
            dnsgo_rss_kib=rss_kib(self.dnsgo.process.pid),
            unbound_rss_kib=rss_kib(self.unbound.pid) if self.unbound else None,
            dnsgo=dnsgo_caches, unbound=unbound_caches_now,
            dnsgo_sent=results["dnsgo"].sent if "dnsgo" in results else 0,
            dnsgo_lost=results["dnsgo"].lost if "dnsgo" in results else 0,
            unbound_sent=results["unbound"].sent if "unbound" in results else 0,
            unbound_lost=results["unbound"].lost if "unbound" in results else 0)
        self.samples.append(sample)
        say("  " + self.row(sample))
        return sample

    def elapsed(self) -> float:
        """Seconds since phase 1 began (0 before)."""
        return time.monotonic() - self.began if self.began else 0.0

    def send_chunk(self) -> Chunk:
        """Send the next ``--sample-seconds`` of new names at the current rate
        to dnsgo and Unbound at once (one dnsperf each, on the client CPU),
        then adjust the rate to what dnsgo sustained."""
        seconds = self.args.sample_seconds
        chunk = Chunk(self.next_name, math.ceil(self.qps * seconds * 1.05) + 100, self.qps)
        self.next_name += chunk.count
        self.chunks += 1
        names = self.workdir / "chunk.txt"
        write_names(names, chunk.first, chunk.count)
        load = dnsperf.Load(clients=self.args.clients, outstanding=self.args.outstanding,
                            seconds=seconds, passes=1, max_qps=self.qps)
        targets = {"dnsgo": self.dnsgo.port}
        if self.unbound is not None:
            targets["unbound"] = self.unbound_port
        with ThreadPoolExecutor(len(targets)) as pool:
            futures = {name: pool.submit(dnsperf.run, port, names, load,
                                         self.outdir / "dnsperf" / f"{name}-{self.chunks:03d}.txt",
                                         self.args.client_cpu, seconds + 30)
                       for name, port in targets.items()}
            chunk.results = {name: future.result() for name, future in futures.items()}
        sent = chunk.results["dnsgo"].sent
        self.names_sent += sent
        if "unbound" in chunk.results:
            self.unbound_names_sent += chunk.results["unbound"].sent
        self.wildcard_sent += max(0, chunk.first + sent - max(chunk.first, self.args.zone_names + 1))
        self.adjust_rate(chunk.results["dnsgo"])
        return chunk

    def adjust_rate(self, result: dnsperf.Result) -> None:
        """Lower the rate when dnsgo lost more than ``--max-loss`` % or
        dnsperf could not send at the rate (its outstanding queries were all
        waiting): by a fifth, or to 90 % of what was sent when that is less.
        Raise it by a tenth (up to ``--qps``) after three clean intervals in
        a row."""
        seconds = self.args.sample_seconds
        wanted = self.qps * seconds
        if result.lost_fraction * 100 > self.args.max_loss or result.sent < 0.95 * wanted:
            lowered = max(self.args.min_qps, min(int(self.qps * 0.8), int(0.9 * result.sent / seconds)))
            self.notes.append(f"at {self.elapsed():.0f} s dnsperf sent {result.sent:,} of the {wanted:,} queries "
                              f"-Q {self.qps:,} asks for and dnsgo lost {result.lost:,}: rate lowered to {lowered:,}")
            self.qps, self.clean_chunks = lowered, 0
        else:
            self.clean_chunks += 1
            if self.clean_chunks >= 3 and self.qps < self.args.qps:
                self.qps, self.clean_chunks = min(self.args.qps, int(self.qps * 1.1)), 0

    def run(self) -> None:
        """Start everything, fill the caches (phase 1), then keep evicting (phase 2)."""
        busy = cpu_busy_fraction()
        self.facts["busy_before"] = busy
        self.facts["loadavg_before"] = os.getloadavg()
        if busy > 0.10:
            self.notes.append(f"the machine was busy before the run: {busy:.0%} of all CPU time "
                              "used by other processes (RSS does not depend on speed, the fill time does)")
        (self.outdir / "dnsperf").mkdir()
        servers.CACHE_MB[:] = list(self.args.cache_mb)
        self.start_nsd()
        self.facts["code"] = code_version()
        self.start_dnsgo()
        if not self.args.no_unbound:
            self.start_unbound()
        say("== empty caches")
        self.sample(0, None)
        share = self.args.full_pct / 100
        say(f"== phase 1: new names at up to {self.args.qps:,} q/s until L1 and L2 are "
            f"≥ {self.args.full_pct:g} % of their bounds")
        self.began = time.monotonic()
        fill_limit = self.args.fill_limit_minutes * 60
        while True:
            sample = self.sample(1, self.send_chunk())
            if sample.dnsgo_full(share):
                break
            self.check_alive()
            if self.elapsed() > fill_limit:
                self.notes.append(f"the caches were not full after {fill_limit / 60:g} min; "
                                  "phase 2 started anyway")
                break
        self.facts["fill_seconds"] = self.elapsed()
        self.facts["fill_names"] = self.names_sent
        say(f"== phase 2: {self.args.evict_minutes:g} more minutes of new names")
        ends = time.monotonic() + self.args.evict_minutes * 60
        while time.monotonic() < ends - self.args.sample_seconds / 2:
            self.sample(2, self.send_chunk())
            self.check_alive()
        self.facts["names_sent"] = self.names_sent
        self.facts["wildcard_sent"] = self.wildcard_sent
        self.facts["unbound_names_sent"] = self.unbound_names_sent
        self.facts["loadavg_after"] = os.getloadavg()

    def check_alive(self) -> None:
        """Stop the run if a server has died."""
        for process in (self.dnsgo.process, self.unbound):
            if process is not None and not process.alive():
                raise SystemExit(f"{process.name} died; end of its log:\n{process.log_tail()}")

    # -------------------------------------------------------------- report

    def row(self, s: Sample) -> str:
        """One line of the table."""
        def cache(key: str) -> str:
            if not s.dnsgo:
                return "– | –"
            c = s.dnsgo[key]
            return f"{c['size'] / MIB:.1f} / {c['bound'] / MIB:.0f} | {_count(c['entries'])} / {c['evicts']:,}"

        unbound = "–"
        if s.unbound:
            unbound = f"{s.unbound['msg'] / MIB:.1f} / {s.unbound['rrset'] / MIB:.1f}"
            if "msg_count" in s.unbound and "rrset_count" in s.unbound:
                unbound += f" ({s.unbound['msg_count']:,} / {s.unbound['rrset_count']:,})"
        urss = "–" if s.unbound_rss_kib is None else f"{s.unbound_rss_kib / 1024:.1f}"
        lost = f"{s.dnsgo_lost / s.dnsgo_sent:.1%}" if s.dnsgo_sent else "–"
        return (f"| {_clock(s.seconds)} | {s.phase} | {s.qps:,} | {s.dnsgo_sent:,} | {lost} "
                f"| {s.dnsgo_rss_kib / 1024:.1f} | {cache('l1')} | {cache('l2')} | {urss} | {unbound} |")

    def table(self) -> list[str]:
        """The Markdown table of every sample."""
        return ["| time | phase | -Q | dnsgo sent | lost | dnsgo RSS MiB | L1 MiB accounted / bound "
                "| L1 entries / evicts | L2 MiB accounted / bound | L2 entries / evicts | Unbound RSS MiB "
                "| Unbound msg / rrset MiB (entries) |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"] + [
                    self.row(s) for s in self.samples] + [""]

    def summary(self) -> list[str]:
        """RSS empty, full and at the end, drift while evicting, and RSS against the bounds."""
        bound = sum(self.bounds)
        share = self.args.full_pct / 100
        lines = ["| | dnsgo | Unbound |", "|---|---:|---:|"]
        empty = self.samples[0] if self.samples else None
        dnsgo_full = next((s for s in self.samples if s.dnsgo_full(share)), None)
        unbound_full = next((s for before, s in zip(self.samples, self.samples[1:])
                             if s.unbound_full(share, self.bounds, before)), None)
        last = self.samples[-1] if self.samples else None

        def rss(s: Sample | None, who: str) -> float | None:
            value = None if s is None else (s.dnsgo_rss_kib if who == "dnsgo" else s.unbound_rss_kib)
            return None if value is None else value / 1024

        def drift(full: Sample | None, who: str) -> tuple[float, float, float] | None:
            """(largest |change| signed, min, max) in % of RSS when full, over the samples after it."""
            if full is None:
                return None
            base = rss(full, who)
            after = [rss(s, who) for s in self.samples if s.seconds > full.seconds and s.phase == 2]
            after = [value for value in after if value is not None]
            if not base or not after:
                return None
            changes = [(value - base) / base * 100 for value in after]
            return max(changes, key=abs), min(changes), max(changes)

        def mib(value: float | None) -> str:
            return "–" if value is None else f"{value:.1f}"

        def when(s: Sample | None) -> str:
            return "never" if s is None else f"{_clock(s.seconds)}"

        rows = {"dnsgo": (dnsgo_full, drift(dnsgo_full, "dnsgo")),
                "unbound": (unbound_full, drift(unbound_full, "unbound"))}
        lines.append(f"| caches full at (dnsgo: both ≥ {self.args.full_pct:g} % of their bounds and evicting; "
                     f"Unbound: both ≥ {self.args.full_pct:g} % and no longer growing) | {when(dnsgo_full)} "
                     f"| {when(unbound_full)} |")
        for label, pick in (("RSS empty (MiB)", lambda full: empty), ("RSS when full (MiB)", lambda full: full),
                            ("RSS at the end (MiB)", lambda full: last)):
            lines.append(f"| {label} | {mib(rss(pick(dnsgo_full), 'dnsgo'))} "
                         f"| {mib(rss(pick(unbound_full), 'unbound'))} |")
        cells = []
        for who in ("dnsgo", "unbound"):
            d = rows[who][1]
            cells.append("–" if d is None else f"{d[0]:+.1f} % ({d[1]:+.1f} … {d[2]:+.1f})")
        lines.append(f"| RSS drift after full: largest (min … max), % of RSS when full | {cells[0]} | {cells[1]} |")
        cells = []
        for who in ("dnsgo", "unbound"):
            full = rows[who][0]
            cells.append("–" if rss(full, who) is None else
                         f"{rss(full, who) / (bound / MIB):.2f} (end {rss(last, who) / (bound / MIB):.2f})")
        lines.append(f"| RSS when full ÷ (L1 + L2 bound = {bound / MIB:.0f} MiB) | {cells[0]} | {cells[1]} |")
        cells = []
        for who, full in (("dnsgo", dnsgo_full), ("unbound", unbound_full)):
            accounted = _accounted(full, who)
            if accounted is None or rss(empty, who) is None:
                cells.append("–")
            else:
                grown = rss(full, who) - rss(empty, who)
                cells.append(f"{accounted:.1f} MiB; RSS grew {grown:.1f} MiB = {grown / accounted:.2f} ×")
        lines.append(f"| caches' accounted bytes when full; (RSS full − RSS empty) ÷ accounted | "
                     f"{cells[0]} | {cells[1]} |")
        return lines + [""]

    def write_report(self) -> str:
        """Print and save the table, the summary and the raw samples."""
        args = self.args
        text = [f"# dnsgo full-cache RSS (issue #10) {self.outdir.name}", "", "## Samples", ""] + self.table()
        text += ["Time is from the start of phase 1. Phase 0 is the empty servers; 1 fills the caches; "
                 "2 keeps evicting. Each row is taken after one interval of new names, sent to dnsgo and "
                 "Unbound at the same time at `-Q` (the rate dnsgo sustained). Accounted = the cache's "
                 "`size_bytes` (`GET /api/cache/distributed`), entries from `/metrics`; Unbound's "
                 "from `unbound-control stats_noreset` (`mem.cache.message` / `mem.cache.rrset`). "
                 "RSS = summed VmRSS of the process tree.", "", "## Summary", ""] + self.summary()
        facts = []
        zone = self.facts.get("zone")
        if zone:
            facts.append(f"zone: {zone['names']:,} A names plus `*.{workload.ZONE}` "
                         f"({zone['bytes'] / MIB:.0f} MiB), NSD loaded it in {zone['nsd_load_seconds']:.1f} s")
        if "fill_seconds" in self.facts:
            facts.append(f"phase 1 sent {self.facts['fill_names']:,} names to dnsgo in "
                         f"{self.facts['fill_seconds']:.0f} s")
        if "names_sent" in self.facts:
            facts.append(f"names sent to dnsgo in all: {self.facts['names_sent']:,}, of which "
                         f"{self.facts['wildcard_sent']:,} past the zone's explicit names (answered by the wildcard); "
                         f"to Unbound: {self.facts['unbound_names_sent']:,} (the same names in the same order, "
                         "as many of each interval's as it answered at the rate)")
        if facts:
            text += ["Facts:", ""] + [f"- {fact}" for fact in facts] + [""]
        if self.notes:
            text += ["Notes:", ""] + [f"- {note}" for note in self.notes] + [""]
        text += ["Setup:", ""] + [f"- {line}" for line in environment(self)] + [""]
        markdown = "\n".join(text)
        (self.outdir / "results.md").write_text(markdown)
        (self.outdir / "results.json").write_text(json.dumps({
            "samples": [asdict(s) for s in self.samples], "facts": self.facts, "notes": self.notes,
            "args": vars(args)}, indent=2, default=str))
        return markdown


def _accounted(s: Sample | None, who: str) -> float | None:
    """The caches' accounted MiB at sample ``s`` (dnsgo: size_bytes; Unbound: mem.cache.*)."""
    if s is None:
        return None
    if who == "dnsgo":
        return None if not s.dnsgo else sum(c["size"] for c in s.dnsgo.values()) / MIB
    return None if not s.unbound else (s.unbound["msg"] + s.unbound["rrset"]) / MIB


def _count(value: int | None) -> str:
    """A count with thousands separators, or a dash."""
    return "–" if value is None else f"{value:,}"


def _clock(seconds: float) -> str:
    """Seconds as m:ss."""
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def environment(bench: FullCacheBench) -> list[str]:
    """Lines describing the machine, the versions, the pinning and the load."""
    args, facts = bench.args, bench.facts
    before, after = facts.get("loadavg_before"), facts.get("loadavg_after")
    return [
        f"{os.cpu_count()} CPUs ({cpu_model()})",
        f"dnsgo (one process, twistd -n dnsgo, L1 {args.cache_mb[0]} MiB, L2 {args.cache_mb[1]} MiB) and "
        f"Unbound (num-threads 1, msg-cache-size {args.cache_mb[0]}m, rrset-cache-size {args.cache_mb[1]}m) "
        f"on CPU {args.server_cpu}; dnsperf on CPU {args.client_cpu}; nsd on CPU {args.nsd_cpu} (RRL off)",
        f"{first_line(['/usr/sbin/nsd', '-v'])}; {first_line(['/usr/sbin/unbound', '-V'])}; dnsperf "
        f"{first_line(['sh', '-c', 'dnsperf -h 2>&1 | grep Version'])}; "
        f"Python {sys.version.split()[0]}; twisted {twisted_version()}",
        f"dnsperf -T 1 -c {args.clients} -q {args.outstanding} -t 2 -n 1 -l {args.sample_seconds} -Q (rate), "
        f"rate starting at {args.qps:,}, lowered after an interval where dnsgo lost > "
        f"{args.max_loss:g} % or dnsperf could not keep the rate (to 90 % of what it sent)",
        f"dnsgo code when it started: {facts.get('code', '?')}",
        "load average (1, 5, 15 min) before: "
        + (", ".join(f"{x:.2f}" for x in before) if before else "?")
        + "; after: " + (", ".join(f"{x:.2f}" for x in after) if after else "?"),
    ]


def code_version() -> str:
    """The commit the dnsgo under test was imported from (``dnsgo``'s
    repository, read-only), with a mark when its dnsgo/ has uncommitted changes."""
    import dnsgo
    repo = Path(dnsgo.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "dnsgo"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return f"{repo} (no git)"
    return f"{repo} at {commit}" + (" with uncommitted changes in dnsgo/" if dirty else "")


def parse_args(argv=None):
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-mb", default="64,128", metavar="MSG,RRSET",
                        help="message and RRset cache sizes in MiB, for dnsgo and Unbound alike (default 64,128)")
    parser.add_argument("--evict-minutes", type=float, default=10.0,
                        help="how long phase 2 keeps sending new names once the caches are full (default 10)")
    parser.add_argument("--sample-seconds", type=int, default=30,
                        help="the interval of dnsperf runs and samples (default 30)")
    parser.add_argument("--qps", type=int, default=2500,
                        help="dnsperf -Q to start with, and the most it is raised back to (default 2500)")
    parser.add_argument("--min-qps", type=int, default=200, help="the rate is never lowered below this (default 200)")
    parser.add_argument("--max-loss", type=float, default=1.0, metavar="PCT",
                        help="lower the rate after an interval where dnsgo lost more than this %% (default 1)")
    parser.add_argument("--full-pct", type=float, default=98.0,
                        help="phase 1 ends when L1 and L2 both hold this %% of their bounds (default 98)")
    parser.add_argument("--fill-limit-minutes", type=float, default=40.0,
                        help="start phase 2 anyway after this long (default 40)")
    parser.add_argument("--zone-names", type=int, default=1_000_000,
                        help="explicit A names in the zone; later names are answered by *.bench.test (default 1,000,000)")
    parser.add_argument("--no-unbound", action="store_true", help="measure dnsgo alone")
    parser.add_argument("--clients", type=int, default=10, help="dnsperf -c (default 10)")
    parser.add_argument("--outstanding", type=int, default=100, help="dnsperf -q (default 100)")
    parser.add_argument("--server-cpu", type=int, default=1, help="CPU of dnsgo and Unbound")
    parser.add_argument("--client-cpu", type=int, default=0, help="CPU of dnsperf")
    parser.add_argument("--nsd-cpu", type=int, default=0, help="CPU of nsd")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    try:
        args.cache_mb = tuple(int(part) for part in args.cache_mb.split(","))
        if len(args.cache_mb) != 2 or min(args.cache_mb) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--cache-mb: give two whole numbers of MiB, such as 64,128; not {args.cache_mb!r}")
    for option in ("qps", "min_qps", "sample_seconds", "zone_names", "clients", "outstanding"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    if args.evict_minutes < 0 or args.fill_limit_minutes <= 0:
        parser.error("--evict-minutes may not be negative and --fill-limit-minutes must be positive")
    if not 0 < args.full_pct <= 100:
        parser.error("--full-pct must be in (0, 100]")
    args.min_qps = min(args.min_qps, args.qps)
    return args


def main(argv=None) -> int:
    """Run the two phases; return the exit status."""
    args = parse_args(argv)
    needed = ["nsd", "nsd-control", "dnsperf", "taskset"] + ([] if args.no_unbound else ["unbound", "unbound-control"])
    for program in needed:
        if not shutil.which(program) and not Path("/usr/sbin", program).exists():
            print(f"{program} is missing: apt-get install nsd unbound dnsperf", file=sys.stderr)
            return 2
    return execute(lambda workdir, outdir, procs: FullCacheBench(args, workdir, outdir, procs),
                   args, "-fullcache", "dnsgo-fullcache-")


if __name__ == "__main__":
    sys.exit(main())
