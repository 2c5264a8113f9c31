"""
A network partition between processes on one host, for the tests that
cannot make network namespaces: a TCP proxy on 127.0.0.1 in front of one
server that can be cut and healed.

Cut, it stops reading from both ends of every connection it carries (what
was sent waits in the kernel's buffers, as behind a link that went down)
and holds new connections unanswered; healed, everything flows again, in
order.  So an AMP stream survives the cut intact, as a TCP connection does
when a real link comes back before its timeouts, and only the application's
own timeouts (heartbeats, leases) notice the partition.
"""
from __future__ import annotations

from twisted.internet import protocol, reactor as default_reactor


class _Side(protocol.Protocol):
    """One end of a proxied connection; writes what it reads to its peer."""

    def __init__(self, proxy: "PartitionProxy") -> None:
        self.proxy = proxy
        self.peer: _Side | None = None
        self.waiting: list[bytes] = []

    def connectionMade(self) -> None:
        self.proxy._sides.add(self)
        if self.proxy.cut_off:
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.waiting.append(data)

    def connectionLost(self, reason) -> None:
        self.proxy._sides.discard(self)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class _Client(_Side):
    """The proxy's connection to the server, made for one accepted connection."""

    def __init__(self, proxy: "PartitionProxy", accepted: _Side) -> None:
        super().__init__(proxy)
        self.peer = accepted

    def connectionMade(self) -> None:
        super().connectionMade()
        self.peer.peer = self
        for data in self.peer.waiting:
            self.transport.write(data)
        self.peer.waiting.clear()


class _Accepted(_Side):
    """A connection accepted from a client: connects on to the server (once not cut off)."""

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.proxy.cut_off:
            self.proxy._held.append(self)
        else:
            self.proxy._connect(self)


class PartitionProxy:
    """Forwards 127.0.0.1:``port`` to ``target`` (host, port) until :meth:`cut`; :meth:`heal` undoes it."""

    def __init__(self, target: tuple[str, int], *, reactor=default_reactor) -> None:
        self.target = target
        self.cut_off = False
        self._reactor = reactor
        self._sides: set[_Side] = set()
        self._held: list[_Accepted] = []
        factory = protocol.Factory.forProtocol(lambda: _Accepted(self))
        self._listener = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.port = self._listener.getHost().port

    @property
    def address(self) -> str:
        """host:port to give clients instead of the target's."""
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Stop carrying anything, in both directions, without closing a connection."""
        self.cut_off = True
        for side in list(self._sides):
            side.transport.pauseProducing()

    def heal(self) -> None:
        """Carry everything again: what waited first, then the connections held while cut."""
        self.cut_off = False
        for side in list(self._sides):
            side.transport.resumeProducing()
        held, self._held = self._held, []
        for accepted in held:
            if accepted.transport is not None and accepted.transport.connected:
                self._connect(accepted)

    def stop(self):
        """Close the listener and every connection; fires when the listener is closed."""
        for side in list(self._sides):
            side.transport.abortConnection()
        return self._listener.stopListening()

    def _connect(self, accepted: _Accepted) -> None:
        host, port = self.target
        creator = protocol.ClientCreator(self._reactor, _Client, self, accepted)
        creator.connectTCP(host, port).addErrback(lambda _: accepted.transport.loseConnection())
