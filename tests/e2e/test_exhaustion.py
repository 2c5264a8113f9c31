"""
Resource exhaustion by hostile clients, against real ``twistd dnsgo``
processes on 127.0.0.1 forwarding to the dnspython authority of
tests.support.authority:

* TCP clients that pipeline thousands of queries for a 3.7 KB answer and
  never read: the server's memory stays bounded, UDP is still answered, and
  the stalled connections are cut off after the idle timeout;
* idle TCP clients under a low open-file limit: the server raises its soft
  limit, caps TCP clients below it, and upstream sockets still get
  descriptors, so cache misses are answered.

Plus unit tests of the connection-cap arithmetic (dnsgo.serve.fdlimit).
"""
import os
import re
import resource
import sys
import tempfile
import time

import dns.message
import dns.rcode
from twisted.internet import defer, error, protocol, reactor, task, threads
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from dnsgo.serve import fdlimit
from dnsgo.serve.listeners import DNSService
from tests.support.authority import Authority, AuthorityServer, big_txt_lines, make_zone
from tests.support.harness import ask
from tests.support.hostile_clients import open_idle_connections, open_non_reading_clients, udp_burst

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

#: The name whose TXT answer is about 3.7 KB (17 records of ~210 bytes).
HUGE = "huge.example.test"

#: Sets the open-file limit of the process, then becomes twistd.
_SETRLIMIT_THEN_EXEC = (
    "import os, resource, sys\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)

_LISTENING = re.compile(r"DNS listening on 127\.0\.0\.1 port (\d+)")


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def huge_authority(testcase) -> AuthorityServer:
    """An authority that also serves HUGE TXT (a 3.7 KB reply); stopped when the test ends."""
    server = AuthorityServer(Authority(make_zone(big_txt_lines("huge", 17)))).start()
    testcase.addCleanup(server.stop)
    return server


class DnsgoProcess(protocol.ProcessProtocol):
    """A ``twistd -n dnsgo`` child: its output, its pid, and the port it bound."""

    def __init__(self) -> None:
        self.out = b""
        self.port: int | None = None
        self.listening = defer.Deferred()
        self.ended = defer.Deferred()
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if self.port is None:
            m = _LISTENING.search(self.text)
            if m:
                self.port = int(m.group(1))
                self.listening.callback(self)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.running = False
        if not self.listening.called:
            self.listening.errback(RuntimeError(f"dnsgo ended before listening:\n{self.text}"))
        self.ended.callback(None)

    @property
    def text(self) -> str:
        return self.out.decode("utf-8", "replace")

    @property
    def pid(self) -> int:
        return self.transport.pid


def start_dnsgo_process(testcase, upstream, *, idle_timeout: str = "10s", nofile=None) -> defer.Deferred:
    """
    Run ``twistd -n dnsgo`` on 127.0.0.1, an OS-chosen port, forwarding to
    ``upstream`` (host, port), without the API; ``nofile`` (soft, hard) sets
    its open-file limit before it starts.  Fires with the
    :class:`DnsgoProcess` once it listens; killed when the test ends.
    """
    path = os.path.abspath(testcase.mktemp())
    with open(path, "w") as f:
        f.write(
            "server:\n"
            '  listen_address: "127.0.0.1:0"\n'
            f"  tcp_idle_timeout: {idle_timeout}\n"
            f'upstreams: ["{upstream[0]}:{upstream[1]}"]\n'
            "upstream:\n  timeout: 1s\n  retries: 1\n"
            "api:\n  enabled: false\n"
        )
    args = [TWISTD, "-n", "--pidfile=", "dnsgo", "--config", path]
    if nofile is not None:
        args = [sys.executable, "-c", _SETRLIMIT_THEN_EXEC, str(nofile[0]), str(nofile[1]), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DNSGO_")}
    proc = DnsgoProcess()
    reactor.spawnProcess(proc, args[0], args, env=env, path=tempfile.gettempdir())

    def stop():
        if proc.running:
            try:
                proc.transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass
        return proc.ended

    testcase.addCleanup(stop)
    return proc.listening


def huge_query() -> bytes:
    """The wire form of a HUGE TXT query with EDNS."""
    return dns.message.make_query(HUGE, "TXT", use_edns=0, payload=1232).to_wire()


class NonReadingClientTests(unittest.TestCase):
    """TCP clients that pipeline many queries and never read the replies."""

    @defer.inlineCallbacks
    def test_memory_bounded_and_udp_answered(self):
        """
        20 TCP clients that each pipeline 2,000 queries for a 3.7 KB answer
        and never read grow the server's RSS by less than 25 MB (unbounded,
        their replies alone would be 150 MB), and UDP queries are answered
        meanwhile.
        """
        auth = huge_authority(self)
        server = yield start_dnsgo_process(self, auth.address, idle_timeout="60s")
        warm = yield ask(server.port, HUGE, "TXT", tcp=True)
        self.assertGreater(len(warm.to_wire()), 3500)
        yield sleep(0.3)
        base = rss_bytes(server.pid)
        clients = open_non_reading_clients(server.port, huge_query(), 20, 2000)
        self.addCleanup(lambda: [c.close() for c in clients])
        peak = base
        for i in range(30):
            yield sleep(0.1)
            for c in clients:
                c.pump()
            peak = max(peak, rss_bytes(server.pid))
            if i % 6 == 0:
                started = time.monotonic()
                r = yield ask(server.port, "www.example.test", "A", timeout=2)
                self.assertEqual(r.rcode(), dns.rcode.NOERROR)
                self.assertLess(time.monotonic() - started, 1.0)
        self.assertFalse(any(c.closed_by_peer for c in clients))
        print(f"\n  20 non-reading TCP clients x 2,000 pipelined 3.7 KB answers: server RSS "
              f"{base / 2**20:.1f} -> {peak / 2**20:.1f} MiB (+{(peak - base) / 2**20:.1f})")
        self.assertLess(peak - base, 25 * 1024 * 1024, f"RSS grew from {base} to {peak} bytes")

    @defer.inlineCallbacks
    def test_stalled_connection_closed_after_idle_timeout(self):
        """
        With tcp_idle_timeout 1 s, TCP clients that stopped reading while
        replies wait for them are still open after half a second and cut off
        (reset) within two idle timeouts plus a margin; the server answers
        afterwards.
        """
        auth = huge_authority(self)
        server = yield start_dnsgo_process(self, auth.address, idle_timeout="1s")
        yield ask(server.port, HUGE, "TXT", tcp=True)
        clients = open_non_reading_clients(server.port, huge_query(), 5, 2000)
        self.addCleanup(lambda: [c.close() for c in clients])
        started = time.monotonic()
        yield sleep(0.5)
        self.assertFalse(any(c.closed_by_peer for c in clients))
        while time.monotonic() - started < 4.0 and not all(c.closed_by_peer for c in clients):
            yield sleep(0.1)
        self.assertTrue(all(c.closed_by_peer for c in clients),
                        f"{sum(c.closed_by_peer for c in clients)} of 5 closed after 4 s")
        r = yield ask(server.port, "www.example.test", "A", timeout=2)
        self.assertEqual(r.rcode(), dns.rcode.NOERROR)
        self.assertNotIn("Traceback", server.text)


class DescriptorExhaustionTests(unittest.TestCase):
    """Idle TCP clients under a low open-file limit."""

    @defer.inlineCallbacks
    def test_idle_clients_leave_descriptors_for_misses(self):
        """
        Started with a soft limit of 128 and a hard one of 256 open files,
        dnsgo raises its soft limit to 256 and caps TCP clients at 192; with
        250 idle TCP connections open to it, 50 concurrent UDP misses are
        all answered by the upstream (NXDOMAIN, none SERVFAIL or lost), and
        the log has no 'Too many open files' and no traceback.
        """
        auth = AuthorityServer().start()
        self.addCleanup(auth.stop)
        server = yield start_dnsgo_process(self, auth.address, nofile=(128, 256))
        idle = open_idle_connections(server.port, 250)
        self.addCleanup(lambda: [s.close() for s in idle])
        # Only connections past the cap of 192 can be reset during connect().
        self.assertGreaterEqual(len(idle), 192)
        # Let the server accept what it will (the clients past its cap are
        # closed at once).
        yield sleep(0.5)
        queries = []
        for i in range(50):
            q = dns.message.make_query(f"miss{i}.example.test", "A")
            q.id = i
            queries.append(q.to_wire())
        replies = yield threads.deferToThread(udp_burst, server.port, queries, 5.0)
        rcodes = [None if r is None else dns.rcode.to_text(dns.message.from_wire(r).rcode()) for r in replies]
        self.assertEqual(rcodes, ["NXDOMAIN"] * 50)
        self.assertGreaterEqual(auth.authority.total, 50)
        self.assertNotIn("Too many open files", server.text)
        self.assertNotIn("Traceback", server.text)
        self.assertIn("open-file limit (RLIMIT_NOFILE) raised from 128 to 256", server.text)
        self.assertIn("tcp_max_connections lowered from 1000 to 192", server.text)


class ConnectionCapTests(unittest.SynchronousTestCase):
    """The arithmetic of dnsgo.serve.fdlimit, and its use by DNSService."""

    def test_reserve(self):
        """A quarter of the open-file limit is kept for everything but client TCP, at least 64."""
        self.assertEqual(fdlimit.descriptor_reserve(100), 64)
        self.assertEqual(fdlimit.descriptor_reserve(256), 64)
        self.assertEqual(fdlimit.descriptor_reserve(1024), 256)
        self.assertEqual(fdlimit.descriptor_reserve(1_048_576), 262_144)

    def test_cap(self):
        """The cap is the configured number, lowered to the limit less the reserve, and at least 1."""
        self.assertEqual(fdlimit.tcp_connection_cap(1000, 1024), 768)
        self.assertEqual(fdlimit.tcp_connection_cap(1000, 256), 192)
        self.assertEqual(fdlimit.tcp_connection_cap(1000, 1_048_576), 1000)
        self.assertEqual(fdlimit.tcp_connection_cap(100, 1024), 100)
        self.assertEqual(fdlimit.tcp_connection_cap(1000, 50), 1)
        self.assertEqual(fdlimit.tcp_connection_cap(1000, None), 1000)

    def test_raise_to_hard_limit(self):
        """The soft limit is raised to the hard one, and (before, after) returned."""
        calls = []
        got = fdlimit.raise_open_file_limit(
            getrlimit=lambda which: (1024, 524288), setrlimit=lambda which, limits: calls.append((which, limits))
        )
        self.assertEqual(got, (1024, 524288))
        self.assertEqual(calls, [(resource.RLIMIT_NOFILE, (524288, 524288))])

    def test_raise_nothing_to_do(self):
        """A soft limit already at the hard one is left alone."""
        def setrlimit(which, limits):
            raise AssertionError("setrlimit called")

        self.assertEqual(fdlimit.raise_open_file_limit(getrlimit=lambda w: (4096, 4096), setrlimit=setrlimit),
                         (4096, 4096))

    def test_raise_refused(self):
        """When the kernel refuses, the limit stays and one warning is logged."""
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def setrlimit(which, limits):
            raise ValueError("not allowed")

        self.assertEqual(fdlimit.raise_open_file_limit(getrlimit=lambda w: (1024, 4096), setrlimit=setrlimit),
                         (1024, 1024))
        self.assertEqual([e["log_namespace"] for e in events], ["dnsgo.serve.fdlimit"])



class ServiceCapTests(unittest.TestCase):
    """DNSService applies the cap."""

    def test_service_caps_and_logs_once(self):
        """DNSService under a 256-descriptor limit allows 192 TCP clients and says so in one line when it starts."""
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service = DNSService(object(), "127.0.0.1", 0, tcp_max_connections=1000, descriptor_limit=256,
                             reactor=reactor)
        self.assertEqual(service.tcp_factory.max_connections, 192)
        service.startService()
        self.addCleanup(service.stopService)
        lowered = [e for e in events if "lowered" in e.get("log_format", "")]
        self.assertEqual(len(lowered), 1)
        self.assertEqual((lowered[0]["configured"], lowered[0]["cap"], lowered[0]["reserve"]), (1000, 192, 64))

    def test_service_under_generous_limit(self):
        """Under a limit that leaves room, the configured tcp_max_connections stands."""
        service = DNSService(object(), "127.0.0.1", 0, tcp_max_connections=1000, descriptor_limit=65536,
                             reactor=reactor)
        self.assertEqual(service.tcp_factory.max_connections, 1000)
