"""
The UDP listener (``DNSDatagramListener``) on a real socket of 127.0.0.1:
every way a handler can answer, or fail to, gets the reply it should, and
the datagrams after it are still served.
"""
import socket

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from dnsgo.serve import listeners
from dnsgo.serve.listeners import DNSDatagramListener


class _Handler:
    """Answers by the first byte of the datagram: b"h" hit, b"m" miss (respond later), b"d" Deferred, b"x" raises, b"n" drops."""

    def __init__(self):
        self.later: list = []
        self.deferreds: list = []

    def handle(self, data: bytes, client: str, tcp: bool = False, respond=None, reply_to=None):
        kind = data[:1]
        if kind == b"h":
            return b"hit:" + data
        if kind == b"m":
            self.later.append((data, lambda reply: respond(reply, reply_to)))
            return None
        if kind == b"d":
            d = defer.Deferred()
            self.deferreds.append(d)
            return d
        if kind == b"x":
            raise RuntimeError("boom")
        return None

    def servfail(self, data: bytes) -> bytes:
        return b"servfail:" + data


class DatagramListenerTests(unittest.TestCase):
    """Replies from a real socket, read with a blocking client socket."""

    def setUp(self):
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("127.0.0.1", 0))
        self.address = server.getsockname()
        self.handler = _Handler()
        self.listener = DNSDatagramListener(reactor, server, self.handler)
        self.listener.start()
        self.addCleanup(self.listener.stopListening)
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.client.bind(("127.0.0.1", 0))
        self.client.setblocking(False)
        self.addCleanup(self.client.close)

    @defer.inlineCallbacks
    def replies(self, count: int, timeout: float = 5.0):
        """Wait for ``count`` datagrams at the client; fail after ``timeout`` seconds."""
        got: list[bytes] = []
        deadline = reactor.seconds() + timeout
        while len(got) < count:
            try:
                got.append(self.client.recv(65535))
                continue
            except BlockingIOError:
                pass
            if reactor.seconds() > deadline:
                self.fail(f"{len(got)} of {count} replies: {got!r}")
            yield task.deferLater(reactor, 0.005, lambda: None)
        return got

    def send(self, *datagrams: bytes) -> None:
        for data in datagrams:
            self.client.sendto(data, self.address)

    @defer.inlineCallbacks
    def test_every_kind_of_answer(self):
        """A hit, a raising handler (SERVFAIL), a drop, a later respond() and a Deferred each get their reply in turn."""
        self.send(b"h1", b"x2", b"n3", b"m4", b"d5", b"h6")
        got = yield self.replies(3)
        self.assertEqual(sorted(got), [b"hit:h1", b"hit:h6", b"servfail:x2"])
        self.flushLoggedErrors(RuntimeError)
        (data, respond), = self.handler.later
        respond(b"late:" + data)
        self.handler.deferreds[0].callback(b"deferred")
        got = yield self.replies(2)
        self.assertEqual(sorted(got), [b"deferred", b"late:m4"])

    @defer.inlineCallbacks
    def test_failed_deferred_is_servfail(self):
        """A Deferred that fails is logged and answered with SERVFAIL."""
        self.send(b"d1")
        yield self.replies(0)
        while not self.handler.deferreds:
            yield task.deferLater(reactor, 0.005, lambda: None)
        self.handler.deferreds[0].errback(RuntimeError("late boom"))
        got = yield self.replies(1)
        self.assertEqual(got, [b"servfail:d1"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_burst_longer_than_one_wakeup(self):
        """More datagrams than one wake-up reads (8 here) are all answered."""
        self.patch(listeners, "UDP_READS_PER_WAKEUP", 8)
        count = 30
        self.send(*(b"h%d" % i for i in range(count)))
        got = yield self.replies(count)
        self.assertEqual(sorted(got), sorted(b"hit:h%d" % i for i in range(count)))

    @defer.inlineCallbacks
    def test_no_reply_after_stop(self):
        """A reply that comes after the listener stopped is dropped, without an error."""
        self.send(b"m1")
        while not self.handler.later:
            yield task.deferLater(reactor, 0.005, lambda: None)
        self.listener.stopListening()
        _, respond = self.handler.later[0]
        respond(b"too late")
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertRaises(BlockingIOError, self.client.recv, 65535)
