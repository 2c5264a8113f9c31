"""
Control-plane failover time (``docs/ha.md``): two control planes (site-a,
site-b) and three workers per site as real processes on 127.0.0.1; in each
round the active control plane is killed with SIGKILL and the time until
the other one's ``/api/ha`` says ``active`` is measured (the API is polled
every 0.1 s); then the killed one is started again and the next round
waits until it follows the new leader.  Meanwhile every control plane is
polled every 0.1 s for moments with two active ones, and every worker is
asked a name every 0.2 s (answers, SERVFAILs and timeouts are counted) and
gets a steady dnsperf load (``--dnsperf-rate`` q/s each, 50 by default)
whose SERVFAILs and lost queries are counted too.

    .venv/bin/python bench/ha_failover.py [--rounds 10] [--lease 3 --renew 2 --retry 0.5] [--dnsperf-rate 50]

Prints one line per round and a summary (median and max failover).
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dnsperf  # noqa: E402  (bench/dnsperf.py: parsing its statistics)
from tests.support.authority import AuthorityServer  # noqa: E402
from tests.support.cluster_procs import wait_until  # noqa: E402
from tests.support.ha_procs import DnsProbe, HACluster, Host  # noqa: E402


class Run:
    """What tests.support.ha_procs needs of a test case: temporary paths and cleanups."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="dnsgo-ha-bench-")
        self._count = 0
        self._cleanups = []

    def mktemp(self) -> str:
        self._count += 1
        return os.path.join(self.directory, f"t{self._count}")

    def addCleanup(self, function, *args) -> None:
        self._cleanups.append((function, args))

    @defer.inlineCallbacks
    def clean(self):
        for function, args in reversed(self._cleanups):
            try:
                yield defer.maybeDeferred(function, *args)
            except Exception as e:  # a cleanup that fails must not stop the others
                print(f"cleanup failed: {e}", file=sys.stderr)
        shutil.rmtree(self.directory, ignore_errors=True)


class SteadyLoad:
    """
    One dnsperf per worker at a fixed rate for the whole run (``-Q``), over
    names of the test zone; stopped with SIGINT at the end, when dnsperf
    prints its statistics (completed, lost, rcodes).
    """

    def __init__(self, workers, rate: int, directory: str) -> None:
        self.outputs = []
        self.procs = []
        queries = os.path.join(directory, "queries.txt")
        with open(queries, "w") as f:
            f.write("www.example.test A\nmx.example.test MX\nmail.example.test A\nwww.example.test AAAA\n")
        for worker in workers:
            out = os.path.join(directory, f"dnsperf-{worker.worker_id}.txt")
            handle = open(out, "w")
            self.outputs.append((out, handle))
            self.procs.append(subprocess.Popen(
                ["dnsperf", "-s", "127.0.0.1", "-p", str(worker.dns_port), "-d", queries, "-Q", str(rate),
                 "-l", "100000", "-t", "2", "-c", "1"], stdout=handle, stderr=subprocess.STDOUT))

    def stop(self) -> dnsperf.Result:
        """Stop every dnsperf; their statistics added up."""
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        total = {"sent": 0, "completed": 0, "lost": 0, "servfail": 0}
        for out, handle in self.outputs:
            handle.close()
            with open(out) as f:
                result = dnsperf.parse(f.read())
            total["sent"] += result.sent
            total["completed"] += result.completed
            total["lost"] += result.lost
            total["servfail"] += result.rcodes.get("SERVFAIL", 0)
        return total


class OverlapWatch:
    """Polls every control plane's /api/ha; counts the polls that found two active ones."""

    def __init__(self, cluster: HACluster) -> None:
        self.cluster = cluster
        self.polls = 0
        self.overlaps = 0
        self._loop = task.LoopingCall(self._poll)
        self._busy = False

    def start(self):
        self._loop.start(0.1)
        return self

    def stop(self):
        if self._loop.running:
            self._loop.stop()

    @defer.inlineCallbacks
    def _poll(self):
        if self._busy:
            return
        self._busy = True
        try:
            actives = yield self.cluster.actives()
            self.polls += 1
            if len(actives) > 1:
                self.overlaps += 1
                print(f"  two active control planes: {sorted(actives)}")
        finally:
            self._busy = False


@defer.inlineCallbacks
def measure(reactor, options):
    run = Run()
    auth = AuthorityServer().start()
    run.addCleanup(auth.stop)
    loopback = Host("127.0.0.1")
    cluster = HACluster(run, auth.address, {
        "site-a": (loopback, [loopback] * options.workers),
        "site-b": (loopback, [loopback] * options.workers),
    }, lease=options.lease, renew=options.renew, retry=options.retry)
    lease = options.lease
    try:
        yield cluster.start()
        probe = DnsProbe(cluster.workers.values()).start()
        load = SteadyLoad(cluster.workers.values(), options.dnsperf_rate, run.directory) if options.dnsperf_rate else None
        active, status = yield cluster.wait_for_one_active(timeout=lease + 60)
        watch = OverlapWatch(cluster).start()
        times = []
        for number in range(1, options.rounds + 1):
            yield task.deferLater(reactor, lease + 1.0, lambda: None)  # the standby has heard of the lease
            started = time.monotonic()
            yield cluster.kill(active)
            new, body = yield cluster.wait_for_one_active(timeout=3 * lease + 30, exclude=(active.name,))
            took = time.monotonic() - started
            times.append(took)
            print(f"round {number}: {active.name} killed (term {status['term']}); {new.name} active in "
                  f"term {body['term']} after {took:.2f}s", flush=True)
            cluster.spawn_control(active)
            yield cluster.api_up(active)

            def follows(node=active, leader=new):
                if not node.proc.running:
                    raise AssertionError(f"{node.name} ended:\n{node.proc.text}")
                return cluster.get(node, "/api/ha").addCallback(
                    lambda b: b if b and b["leader"] == leader.api_address else None)

            yield wait_until(follows, f"{active.name} to follow {new.name}", 3 * lease + 30,
                             lambda node=active: node.proc.text[-4000:])
            active, status = new, body
        watch.stop()
        yield probe.stop()
        steady = load.stop() if load is not None else None
        print(f"\nlease {options.lease:g}s, renew deadline {options.renew:g}s, retry {options.retry:g}s, "
              f"{2 * options.workers} workers, {options.rounds} rounds")
        print(f"failover: median {statistics.median(times):.2f}s, max {max(times):.2f}s, "
              f"min {min(times):.2f}s (lease + retry = {options.lease + options.retry:g}s)")
        print(f"polls with two active control planes: {watch.overlaps} of {watch.polls}")
        print(f"DNS: {probe.answered} answered, {probe.failed} SERVFAIL (or other rcode), "
              f"{probe.timeouts} timeouts")
        if steady is not None:
            print(f"dnsperf, {options.dnsperf_rate} q/s per worker: {steady['sent']} sent, "
                  f"{steady['completed']} completed, {steady['servfail']} SERVFAIL, {steady['lost']} lost (timeouts)")
    finally:
        yield run.clean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=3, help="workers per site")
    parser.add_argument("--lease", type=float, default=3.0)
    parser.add_argument("--renew", type=float, default=2.0)
    parser.add_argument("--retry", type=float, default=0.5)
    parser.add_argument("--dnsperf-rate", type=int, default=50,
                        help="dnsperf -Q against every worker throughout (0: none; default 50)")
    task.react(measure, [parser.parse_args()])


if __name__ == "__main__":
    main()
