"""
Control-plane high availability as real processes (``docs/ha.md``): two
(or more) ``twistd dnsgo control`` with ``high_availability`` enabled, one
per site, and ``twistd dnsgo worker`` processes that know every control
plane (``--control-plane a,b``), each with its own witness state file.

Each process runs on a :class:`Host`: an address on 127.0.0.1 (ports told
apart), or a network namespace of its own (tests.support.netns), reached
from the test at its own address.  Processes are killed when the test ends
(tests.support.cluster_procs.spawn_twistd's rules).
"""
import json
import os

import attrs
import dns.message
import dns.query
import dns.rcode
from twisted.internet import defer, reactor, task, threads

from tests.support.cluster_procs import (
    TOKEN,
    TWISTD,
    TwistdProcess,
    clean_environ,
    free_port,
    http,
    stop_process,
    wait_until,
    write_file,
)
from tests.support.harness import kill_marked, marked_environ

#: Short timings for tests: lease 3 s, renew deadline 2 s, retry 0.5 s.
LEASE, RENEW, RETRY = 3.0, 2.0, 0.5

IP = "/usr/sbin/ip"


@attrs.frozen
class Host:
    """Where a process runs: ``address`` (what it binds and is reached at), in ``netns`` (None: this one)."""

    address: str
    netns: str | None = None


def spawn_on(testcase, host: Host, name: str, args: list[str], env: dict) -> TwistdProcess:
    """``twistd -n --pidfile= ARGS`` on ``host`` (in its namespace, if any), killed when the test ends."""
    env, mark = marked_environ(testcase, env)
    proc = TwistdProcess(name, mark)
    argv = [TWISTD, "-n", "--pidfile=", *args]
    if host.netns is not None:
        argv = [IP, "netns", "exec", host.netns, *argv]
    reactor.spawnProcess(proc, argv[0], argv, env=env, path=os.getcwd())

    @defer.inlineCallbacks
    def stop():
        yield stop_process(proc)
        yield kill_marked(mark)

    testcase.addCleanup(stop)
    return proc


def http_at(host: str, port: int, method: str, path: str, *, body: bytes | None = None,
            timeout: float = 3.0) -> defer.Deferred:
    """``method path`` on host:port with the token (in a thread); fires with a Response, or None if nothing answers."""
    return http(port, method, path, body=body, timeout=timeout, host=host).addErrback(lambda f: f.trap(OSError) and None)


def ask_at(host: str, port: int, name: str = "www.example.test.", qtype: str = "A",
           timeout: float = 2.0) -> defer.Deferred:
    """Ask host:port over UDP; fires with the rcode, or None on a timeout or error."""

    def exchange():
        try:
            reply = dns.query.udp(dns.message.make_query(name, qtype), host, port=port, timeout=timeout)
        except Exception:
            return None
        return reply.rcode()

    return threads.deferToThread(exchange)


@attrs.define(eq=False)
class ControlNode:
    """One control plane: its site, host, ports and process."""

    name: str
    site: str
    host: Host
    control_port: int
    api_port: int
    config_path: str = ""
    proc: TwistdProcess | None = None

    @property
    def control_address(self) -> str:
        return f"{self.host.address}:{self.control_port}"

    @property
    def api_address(self) -> str:
        return f"{self.host.address}:{self.api_port}"


@attrs.define(eq=False)
class WorkerNode:
    """One worker: its site, host, DNS port, state directory and process."""

    worker_id: str
    site: str
    host: Host
    dns_port: int
    state_dir: str
    proc: TwistdProcess | None = None


class HACluster:
    """
    Control planes and workers of several sites, for one test.  ``sites``
    maps a site name to (the control plane's host, [the workers' hosts]).
    Ports are free ports of 127.0.0.1 when every host is there, else fixed.
    """

    def __init__(self, testcase, upstream: tuple[str, int], sites: dict, *, minimum: int = 3,
                 min_sites: int = 2, lease: float = LEASE, renew: float = RENEW, retry: float = RETRY,
                 heartbeat_timeout: str = "2s") -> None:
        self.testcase = testcase
        self.upstream = upstream
        self.timings = (lease, renew, retry)
        self.controls: list[ControlNode] = []
        self.workers: dict[str, WorkerNode] = {}
        #: More control-plane addresses the workers are given (after the cluster's own).
        self.extra_addresses: list[str] = []
        #: (worker id, control plane name) -> the address that worker is given for it instead of
        #: the control plane's own (a tests.support.tcp_partition proxy, to cut them apart).
        self.routes: dict[tuple[str, str], str] = {}
        loopback = all(cp.netns is None and all(w.netns is None for w in ws) for cp, ws in sites.values())

        def port(fixed: int) -> int:
            return free_port() if loopback else fixed

        for index, (site, (cp_host, worker_hosts)) in enumerate(sites.items()):
            node = ControlNode(f"cp-{site}", site, cp_host, port(9090), port(8080))
            self.controls.append(node)
            for number, worker_host in enumerate(worker_hosts, 1):
                worker_id = f"{site}-w{number}"
                state = os.path.abspath(testcase.mktemp())
                self.workers[worker_id] = WorkerNode(worker_id, site, worker_host, port(5353), state)
        # One text for every control plane (what differs comes from each one's environment), so
        # that a worker gets the same configuration from whichever it registers with first.
        config_path = write_file(
            testcase,
            'server:\n  listen_address: "127.0.0.1:0"\n'
            f'upstreams: ["{upstream[0]}:{upstream[1]}"]\n'
            "upstream:\n  timeout: 1s\n  retries: 1\n"
            'control:\n  grpc_address: "${DNSGO_CONTROL_ADDRESS:-127.0.0.1:9090}"\n'
            f"  heartbeat_timeout: {heartbeat_timeout}\n"
            f'api:\n  listen_address: "${{DNSGO_API_ADDRESS:-127.0.0.1:8080}}"\n  auth_token: "{TOKEN}"\n'
            "high_availability:\n  enabled: true\n  mode: active_passive\n"
            f'  peers: "${{DNSGO_HA_PEERS:-}}"\n{self._timings_yaml()}'
            f"  quorum:\n    type: worker_witness\n    minimum: {minimum}\n"
            f"    min_clusters_required: {min_sites}\n",
        )
        for node in self.controls:
            node.config_path = config_path

    def _timings_yaml(self) -> str:
        lease, renew, retry = self.timings
        return f"  lease_duration: {lease}s\n  renew_deadline: {renew}s\n  retry_period: {retry}s\n"

    # -- processes ---------------------------------------------------------

    def spawn_control(self, node: ControlNode) -> TwistdProcess:
        """Start one control plane (SITE_ID = its site)."""
        peers = ",".join(other.control_address for other in self.controls if other is not node)
        node.proc = spawn_on(self.testcase, node.host, node.name,
                             ["dnsgo", "control", "--config", node.config_path],
                             clean_environ(SITE_ID=node.site, DNSGO_CONTROL_ADDRESS=node.control_address,
                                           DNSGO_API_ADDRESS=node.api_address, DNSGO_HA_PEERS=peers))
        return node.proc

    def spawn_worker(self, worker: WorkerNode) -> TwistdProcess:
        """Start one worker that knows every control plane, with its state directory."""
        local = write_file(
            self.testcase,
            f'server:\n  listen_address: "{worker.host.address}:{worker.dns_port}"\n'
            f'  cluster_name: "{worker.site}"\n'
            f'high_availability:\n  state_dir: "{worker.state_dir}"\n{self._timings_yaml()}',
        )
        addresses = ",".join([self.routes.get((worker.worker_id, node.name), node.control_address)
                              for node in self.controls] + self.extra_addresses)
        worker.proc = spawn_on(self.testcase, worker.host, worker.worker_id,
                               ["dnsgo", "worker", "--control-plane", addresses,
                                "--worker-id", worker.worker_id, "--config", local],
                               clean_environ(SITE_ID=worker.site))
        return worker.proc

    @defer.inlineCallbacks
    def start(self):
        """Start every control plane and worker; wait until each API answers and each worker serves DNS."""
        for node in self.controls:
            self.spawn_control(node)
        for worker in self.workers.values():
            self.spawn_worker(worker)
        # Eight Python processes starting at once on a shared machine: be patient.
        yield defer.gatherResults([self.api_up(node, 90.0) for node in self.controls])
        yield defer.gatherResults([w.proc.wait_for_text("DNS listening", 90.0) for w in self.workers.values()])

    def api_up(self, node: ControlNode, timeout: float = 30.0) -> defer.Deferred:
        """Fires once ``node``'s API answers."""

        def up():
            if not node.proc.running:
                raise AssertionError(f"{node.name} ended:\n{node.proc.text}")
            return self.get(node, "/api/health")

        return wait_until(up, f"{node.name}'s API", timeout, lambda: node.proc.text)

    def kill(self, node: ControlNode) -> defer.Deferred:
        """kill -9 a control plane; fires once it is gone."""
        node.proc.signal("KILL")
        return node.proc.ended.addErrback(lambda _: None)

    # -- the API -----------------------------------------------------------

    def get(self, node: ControlNode, path: str) -> defer.Deferred:
        """GET on ``node``'s API: the JSON body if 200, else None."""
        d = http_at(node.host.address, node.api_port, "GET", path)
        return d.addCallback(lambda r: r.json() if r is not None and r.status == 200 else None)

    def clear(self, node: ControlNode, request: dict) -> defer.Deferred:
        """DELETE /api/cache/distributed on ``node``; fires with the Response (None if nothing answers)."""
        return http_at(node.host.address, node.api_port, "DELETE", "/api/cache/distributed",
                       body=json.dumps(request).encode())

    @defer.inlineCallbacks
    def states(self):
        """{node name: its /api/ha body, or None} of every running control plane."""
        bodies = yield defer.gatherResults([
            self.get(node, "/api/ha") if node.proc is not None and node.proc.running else defer.succeed(None)
            for node in self.controls
        ])
        return {node.name: body for node, body in zip(self.controls, bodies)}

    @defer.inlineCallbacks
    def actives(self):
        """The control planes whose /api/ha says active, with their bodies."""
        states = yield self.states()
        return {name: body for name, body in states.items() if body and body["role"] == "active"}

    def wait_workers(self, node: ControlNode, timeout: float = 45.0) -> defer.Deferred:
        """Fires once ``node``'s /api/workers lists every worker, healthy."""

        def all_healthy():
            def check(body):
                statuses = {w["workerId"]: w["status"] for w in body["workers"]} if body else {}
                return statuses == dict.fromkeys(self.workers, "healthy")

            return self.get(node, "/api/workers").addCallback(check)

        return wait_until(all_healthy, f"every worker healthy at {node.name}", timeout, interval=0.2)

    def node(self, name: str) -> ControlNode:
        """The control plane called ``name``."""
        return next(node for node in self.controls if node.name == name)

    @defer.inlineCallbacks
    def wait_for_one_active(self, timeout: float = 30.0, exclude=()):
        """Fires with (node, its /api/ha) once exactly one control plane (not in ``exclude``) is active."""

        @defer.inlineCallbacks
        def one():
            found = yield self.actives()
            found = {name: body for name, body in found.items() if name not in exclude}
            if len(found) == 1:
                [(name, body)] = found.items()
                return self.node(name), body
            return None

        result = yield wait_until(one, "exactly one active control plane", timeout,
                                  lambda: "\n".join(f"{n.name}: {n.proc.text[-3000:]}" for n in self.controls
                                                    if n.proc is not None), interval=0.1)
        return result


class DnsProbe:
    """
    Asks every worker for a name at a steady rate while a scenario runs;
    counts answers, SERVFAILs (any rcode but NOERROR) and timeouts.
    """

    def __init__(self, workers, *, interval: float = 0.2, name: str = "www.example.test.") -> None:
        self._workers = list(workers)
        self._interval = interval
        self._name = name
        self.answered = 0
        self.failed = 0
        self.timeouts = 0
        #: (seconds since the start, worker id, rcode or None) of every question not answered NOERROR.
        self.misses: list[tuple[float, str, int | None]] = []
        self._started = 0.0
        self._loop = task.LoopingCall(self._round)
        self._pending: set = set()

    def start(self) -> "DnsProbe":
        self._started = reactor.seconds()
        self._loop.start(self._interval, now=True)
        return self

    @defer.inlineCallbacks
    def stop(self):
        """Stop asking; fires once the last answers are in."""
        if self._loop.running:
            self._loop.stop()
        yield defer.DeferredList(list(self._pending))

    def _round(self) -> None:
        for worker in self._workers:
            d = ask_at(worker.host.address, worker.dns_port, self._name)
            self._pending.add(d)
            d.addCallback(self._count, worker.worker_id, reactor.seconds() - self._started)
            d.addBoth(lambda _, d=d: self._pending.discard(d))

    def _count(self, rcode, worker_id: str, asked_at: float) -> None:
        if rcode == dns.rcode.NOERROR:
            self.answered += 1
            return
        if rcode is None:
            self.timeouts += 1
        else:
            self.failed += 1
        self.misses.append((round(asked_at, 2), worker_id, rcode))

    def __repr__(self) -> str:
        return (f"<DnsProbe answered={self.answered} servfail={self.failed} timeouts={self.timeouts} "
                f"misses={self.misses[:20]}>")
