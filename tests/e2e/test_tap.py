"""
The ``twistd dnsgo`` command line, run as real twistd processes.
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile

import dns.message
import dns.rcode
from twisted.internet import defer, error, protocol, reactor
from twisted.trial import unittest

from tests.support.authority import AuthorityServer
from tests.support.harness import ask
from tests.support.cluster_procs import TWISTD, free_port

ETC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "etc")


class _Collect(protocol.ProcessProtocol):
    """Collects a child's output and tells when it prints a marker or exits."""

    def __init__(self, marker: bytes | None = None) -> None:
        self.out = b""
        self.marker = marker
        self.seen = defer.Deferred()
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.out += data
        if self.marker and self.marker in self.out and not self.seen.called:
            self.seen.callback(self.out)

    errReceived = outReceived

    def processEnded(self, reason):
        self.signal = getattr(reason.value, "signal", None)
        self.ended.callback(reason.value.exitCode)
        if self.marker and not self.seen.called:
            self.seen.errback(RuntimeError(self.out.decode("utf-8", "replace")))


def run_twistd(args, marker=None, env=None):
    """Spawn twistd with ``args``; returns (protocol, transport)."""
    proto = _Collect(marker)
    transport = reactor.spawnProcess(
        proto, TWISTD, [TWISTD, *args], env=env if env is not None else dict(os.environ), path=tempfile.gettempdir()
    )
    return proto, transport


class CheckConfigTests(unittest.TestCase):
    """``twistd dnsgo --check-config``."""

    def write(self, text: str) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path

    @defer.inlineCallbacks
    def test_valid_exits_zero(self):
        """A valid file: exit 0 and 'configuration OK'."""
        path = self.write('server:\n  listen_address: "127.0.0.1:5399"\nupstreams: ["127.0.0.1:53"]\n')
        proto, _ = run_twistd(["dnsgo", "--check-config", "--config", path])
        code = yield proto.ended
        self.assertEqual(code, 0)
        self.assertIn(b"configuration OK", proto.out)

    @defer.inlineCallbacks
    def test_invalid_lists_every_problem(self):
        """An invalid file: exit 1, every problem with its path, no traceback."""
        path = self.write(
            "cache:\n  message_cache:\n    num_shards: 48\n  mode: hybird\nservr: {}\n"
            'upstreams: ["1.2.3.4:99999"]\n'
        )
        proto, _ = run_twistd(["dnsgo", "--check-config", "--config", path])
        code = yield proto.ended
        self.assertEqual(code, 1)
        out = proto.out.decode()
        self.assertIn("cache.message_cache.num_shards: must be a power of two", out)
        self.assertIn("cache.mode:", out)
        self.assertIn("servr: unknown key; did you mean 'server'?", out)
        self.assertIn("upstreams[0]:", out)
        self.assertIn("4 problems", out)
        self.assertNotIn("Traceback", out)

    @defer.inlineCallbacks
    def test_missing_file(self):
        """A file that does not exist: exit 1 with a clear line, no traceback."""
        proto, _ = run_twistd(["dnsgo", "--check-config", "--config", "/nonexistent/dnsgo.yaml"])
        code = yield proto.ended
        self.assertEqual(code, 1)
        self.assertIn(b"/nonexistent/dnsgo.yaml", proto.out)
        self.assertNotIn(b"Traceback", proto.out)

    @defer.inlineCallbacks
    def test_every_etc_config_is_valid(self):
        """Every example in etc/ passes --check-config (with the site variables set)."""
        env = dict(os.environ, SITE_A_IP="127.0.0.1", SITE_B_IP="127.0.0.2")
        names = sorted(n for n in os.listdir(ETC) if n.endswith(".yaml"))
        self.assertTrue(names)
        for name in names:
            proto, _ = run_twistd(["dnsgo", "--check-config", "--config", os.path.join(ETC, name)], env=env)
            code = yield proto.ended
            self.assertEqual(code, 0, f"{name}: {proto.out.decode()}")


class RunTests(unittest.TestCase):
    """``twistd -n dnsgo`` serving for real."""

    @defer.inlineCallbacks
    def test_serves_then_stops_on_sigterm(self):
        """The server answers over UDP and TCP and exits cleanly on SIGTERM."""
        auth = AuthorityServer().start()
        self.addCleanup(auth.stop)
        port = free_port()
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(
                f'server:\n  listen_address: "127.0.0.1:{port}"\nupstreams: ["127.0.0.1:{auth.port}"]\n'
                'api:\n  listen_address: "127.0.0.1:0"\n'
            )
        proto, transport = run_twistd(["-n", "--pidfile=", "dnsgo", "--config", path], marker=b"DNS listening")
        self.addCleanup(self._kill, transport)
        yield proto.seen
        r = yield ask(port, "www.example.test", "A")
        self.assertEqual(r.rcode(), dns.rcode.NOERROR)
        r = yield ask(port, "www.example.test", "A", tcp=True)
        self.assertEqual(r.rcode(), dns.rcode.NOERROR)
        transport.signalProcess("TERM")
        yield proto.ended
        # twistd shuts down, then re-raises the signal it got, as Unix daemons do.
        self.assertEqual(proto.signal, signal.SIGTERM, proto.out.decode())
        self.assertIn(b"Server Shut Down", proto.out)
        self.assertNotIn(b"Traceback", proto.out)

    @defer.inlineCallbacks
    def test_embedded_default_listens_on_5353(self):
        """Without --config, dnsgo listens on 127.0.0.1 port 5353."""
        for kind, port in ((socket.SOCK_DGRAM, 5353), (socket.SOCK_STREAM, 5353), (socket.SOCK_STREAM, 8080)):
            try:
                with socket.socket(socket.AF_INET, kind) as free:
                    free.bind(("127.0.0.1", port))
            except OSError:
                raise unittest.SkipTest(f"127.0.0.1:{port} is in use on this machine")
        proto, transport = run_twistd(["-n", "--pidfile=", "dnsgo"], marker=b"DNS listening")
        self.addCleanup(self._kill, transport)
        out = yield proto.seen
        self.assertIn(b"DNS listening on 127.0.0.1 port 5353 (udp+tcp)", out)
        transport.signalProcess("TERM")
        yield proto.ended

    def _kill(self, transport):
        try:
            transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass


class ReactorChoiceTests(unittest.SynchronousTestCase):
    """twistd imports dnsgo.tap to parse options before it installs the reactor asked for."""

    def test_importing_the_tap_installs_no_reactor(self):
        """Importing dnsgo.tap (and the plugin) leaves the reactor uninstalled, so --reactor still works."""
        code = ("import sys, dnsgo.tap; from twisted.plugins import dnsgo_plugin; "
                "print('twisted.internet.reactor' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        self.assertEqual(out.stdout.strip(), "False", out.stderr)
