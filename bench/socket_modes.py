"""
What a fresh UDP socket per upstream exchange costs, against a pool of
long-lived sockets.

Two measurements, each in one process on 127.0.0.1 with the epoll reactor
and an in-process responder (a UDP server that turns each query into a
reply by setting QR, so the reply matches the query's ID and question):

``raw``
    Twisted ports only, no DNS parsing: ``concurrency`` loops each send a
    query and wait for its reply, then the next.  ``fresh`` opens a
    connected port per exchange (socket, bind, connect, epoll registration,
    close: what dnsgo does), ``pooled`` sends from ``--sockets`` unconnected
    ports bound once to random ports and renewed every ``--renew`` uses.
``pool``
    The same through ``dnsgo.upstream.pool.UpstreamPool.query`` (IDs,
    matching, scanning, decoding, the infra cache), with the pool's
    ``socket_pool`` option off (fresh sockets) and on.

Each case runs for ``--seconds`` and reports exchanges per second, and
microseconds of this process's CPU per exchange (which includes the
responder's share, the same in every case).  Run it by hand:

    .venv/bin/python bench/socket_modes.py [--seconds 3] [--concurrency 32]
        [--sockets 16] [--renew 1000] [--repeat 3]

No assertions.  The machine's other load moves the absolute numbers; the
ratios between the cases of one run are what to read.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import secrets
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet import epollreactor  # noqa: E402

epollreactor.install()

from twisted.internet import defer, reactor, task  # noqa: E402
from twisted.internet.protocol import DatagramProtocol  # noqa: E402

from dnsgo.dns import wire  # noqa: E402
from dnsgo.upstream.infra import InfraCache  # noqa: E402
from dnsgo.upstream.pool import SocketPoolSettings, UpstreamPool  # noqa: E402
from dnsgo.upstream.sockets import _QuietPort  # noqa: E402

_ID = struct.Struct("!H")


class Responder(DatagramProtocol):
    """Answers every query with itself, QR and RA set (NOERROR, no records)."""

    noisy = False

    def datagramReceived(self, data, addr):
        """Reply at once."""
        self.transport.write(data[:2] + bytes([data[2] | 0x80, data[3] | 0x80]) + data[4:], addr)


def cpu() -> float:
    """CPU seconds used by this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def qname(i: int) -> bytes:
    """``q<i>.example.`` in wire format."""
    label = f"q{i}".encode()
    return bytes([len(label)]) + label + b"\x07example\x00"


class _FreshClient(DatagramProtocol):
    noisy = False

    def __init__(self, done):
        self.done = done

    def datagramReceived(self, data, addr):
        self.done(data)


class RawFresh:
    """One connected quiet port per exchange, closed after the reply."""

    def __init__(self, server):
        self.server = server

    def exchange(self, query: bytes) -> defer.Deferred:
        """Send ``query`` from a fresh socket; fires when the reply arrives."""
        d = defer.Deferred()

        def done(data):
            port.stopListening()
            d.callback(data)

        port = _QuietPort(0, _FreshClient(done), "0.0.0.0", 8192, reactor)
        port.startListening()
        port.connect(*self.server)
        port.write(query)
        return d

    def close(self):
        """Nothing stays open."""


class _SharedClient(DatagramProtocol):
    noisy = False

    def __init__(self, owner):
        self.owner = owner

    def datagramReceived(self, data, addr):
        self.owner.received(self, data, addr)


class RawPooled:
    """``n`` unconnected quiet ports bound to random ports, each renewed after ``renew`` uses."""

    def __init__(self, server, n: int, renew: int):
        self.server = server
        self.renew = renew
        self.slots = [self._open() for _ in range(n)]
        self.waiting: dict = {}

    def _open(self):
        proto = _SharedClient(self)
        port = _QuietPort(0, proto, "0.0.0.0", 8192, reactor)
        port.startListening()
        return [proto, port, 0, 0]  # protocol, port, uses, in flight

    def exchange(self, query: bytes) -> defer.Deferred:
        """Send ``query`` from a random pooled socket under a free random ID."""
        slot = random.choice(self.slots)
        proto = slot[0]
        while True:
            query_id = secrets.randbits(16)
            if (proto, query_id) not in self.waiting:
                break
        d = defer.Deferred()
        self.waiting[(proto, query_id)] = (d, slot)
        slot[2] += 1
        slot[3] += 1
        slot[1].write(_ID.pack(query_id) + query[2:], self.server)
        if slot[2] >= self.renew:
            self.slots[self.slots.index(slot)] = self._open()
        return d

    def received(self, proto, data, addr):
        """Hand a reply to its exchange; close a retired socket once it is idle."""
        entry = self.waiting.pop((proto, _ID.unpack_from(data)[0]), None)
        if entry is None:
            return
        d, slot = entry
        slot[3] -= 1
        if slot[2] >= self.renew and slot[3] == 0:
            slot[1].stopListening()
        d.callback(data)

    def close(self):
        """Close the pool's sockets."""
        for slot in self.slots:
            slot[1].stopListening()


class PoolClient:
    """UpstreamPool.query with or without its socket pool."""

    def __init__(self, server, sockets: SocketPoolSettings | None):
        infra = InfraCache([server], reactor)
        self.pool = UpstreamPool(infra, timeout=2.0, retries=0, socket_pool=sockets, reactor=reactor)
        self.n = 0

    def exchange(self, query: bytes) -> defer.Deferred:
        """One upstream query for a name never asked before (no coalescing)."""
        self.n += 1
        return self.pool.query(qname(self.n), 1)

    def close(self):
        """Close the socket pool, if any."""
        self.pool.close()


@defer.inlineCallbacks
def run_case(client, seconds: float, concurrency: int):
    """Keep ``concurrency`` exchanges going for ``seconds``; fires with (exchanges/s, CPU µs per exchange)."""
    query = wire.build_query(0, qname(0), 1, 1, rd=True, cd=False, do=False, udp_size=1232)
    count = 0
    stop_at = reactor.seconds() + seconds

    @defer.inlineCallbacks
    def loop():
        nonlocal count
        while reactor.seconds() < stop_at:
            yield client.exchange(query)
            count += 1

    started, cpu0 = time.perf_counter(), cpu()
    yield defer.gatherResults([loop() for _ in range(concurrency)])
    elapsed, used = time.perf_counter() - started, cpu() - cpu0
    client.close()
    yield task.deferLater(reactor, 0.05, lambda: None)
    return count / elapsed, used / count * 1e6


@defer.inlineCallbacks
def main(args):
    """Run every case ``--repeat`` times, interleaved, and print the best of each."""
    port = reactor.listenUDP(0, Responder(), interface="127.0.0.1")
    server = ("127.0.0.1", port.getHost().port)
    pooled = SocketPoolSettings(sockets=args.sockets, max_uses=args.renew, max_age=60.0)
    cases = {
        "raw fresh": lambda: RawFresh(server),
        f"raw pooled ({args.sockets} sockets, renewed every {args.renew} uses)": lambda: RawPooled(
            server, args.sockets, args.renew
        ),
        "UpstreamPool fresh (default)": lambda: PoolClient(server, None),
        f"UpstreamPool socket_pool ({args.sockets} sockets, {args.renew} uses)": lambda: PoolClient(server, pooled),
    }
    best: dict = {}
    for _ in range(args.repeat):
        for name, make in cases.items():
            rate, cost = yield run_case(make(), args.seconds, args.concurrency)
            if name not in best or rate > best[name][0]:
                best[name] = (rate, cost)
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        print("ip_local_port_range:", " ".join(f.read().split()))
    print(f"concurrency {args.concurrency}, {args.seconds:g} s per case, best of {args.repeat}")
    print(f"{'case':<62} {'exchanges/s':>12} {'CPU µs/exchange':>16}")
    for name, (rate, cost) in best.items():
        print(f"{name:<62} {rate:>12,.0f} {cost:>16.1f}")
    yield port.stopListening()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sockets", type=int, default=16)
    parser.add_argument("--renew", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    task.react(lambda _reactor: main(options))
