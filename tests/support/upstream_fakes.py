"""
Fake upstream DNS servers and a fake UDP reactor for the upstream pool tests.
"""
from __future__ import annotations

import attrs
from twisted.internet import protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.names import dns
from twisted.protocols.basic import Int16StringReceiver

ANSWER_ADDRESS = "192.0.2.1"


def decode(data: bytes) -> dns.Message:
    """Decode a DNS message."""
    message = dns.Message()
    message.fromStr(data)
    return message


def reply_to(
    query: dns.Message,
    *,
    rcode: int = dns.OK,
    address: str | None = ANSWER_ADDRESS,
    trunc: bool = False,
    query_id: int | None = None,
    name: bytes | None = None,
    opt: bool = True,
) -> bytes:
    """
    The wire form of a reply to ``query``: same ID and question (unless
    ``query_id`` or ``name`` override them), ``rcode``, an A record for
    ``address`` when given, and an OPT record when ``opt``.
    """
    question = query.queries[0]
    qname = name if name is not None else question.name.name
    reply = dns.Message(
        id=query.id if query_id is None else query_id,
        answer=1,
        rCode=rcode,
        trunc=int(trunc),
        recDes=1,
        recAv=1,
    )
    reply.queries = [dns.Query(qname, question.type, question.cls)]
    if address is not None and rcode == dns.OK:
        reply.answers = [
            dns.RRHeader(qname, dns.A, dns.IN, 300, dns.Record_A(address, 300))
        ]
    if opt:
        reply.additional = [dns._OPTHeader(udpPayloadSize=1232)]
    return reply.toStr()


class UDPUpstream(protocol.DatagramProtocol):
    """
    A UDP DNS server on 127.0.0.1.  ``handler(query, data, addr)`` returns a
    list of datagrams to send back to ``addr`` (empty: stay silent).  It
    records every query and the client address it came from.
    """

    noisy = False

    def __init__(self, handler):
        self.handler = handler
        self.queries: list[dns.Message] = []
        self.sources: list[tuple[str, int]] = []
        self.port = None

    def datagramReceived(self, data, addr):
        """Record the query and send what the handler says."""
        query = decode(data)
        self.queries.append(query)
        self.sources.append(addr)
        for reply in self.handler(query, data, addr):
            self.transport.write(reply, addr)

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) this server listens on."""
        return ("127.0.0.1", self.port.getHost().port)


class _TCPUpstreamProtocol(Int16StringReceiver):
    def stringReceived(self, data):
        """Record the query and send what the handler says."""
        query = decode(data)
        self.factory.queries.append(query)
        for reply in self.factory.handler(query, data, self.transport.getPeer()):
            self.sendString(reply)


class TCPUpstream(protocol.ServerFactory):
    """A TCP DNS server (RFC 7766 framing) with the same handler as UDPUpstream."""

    protocol = _TCPUpstreamProtocol
    noisy = False

    def __init__(self, handler):
        self.handler = handler
        self.queries: list[dns.Message] = []


def answering(**kwargs):
    """A handler that answers every query once with ``reply_to(query, **kwargs)``."""
    return lambda query, data, addr: [reply_to(query, **kwargs)]


def silent(query, data, addr):
    """A handler that never answers."""
    return []


@attrs.define
class FakeUDPPort:
    """A connected UDP port of :class:`FakeUDPReactor`; records what was sent."""

    protocol: protocol.DatagramProtocol
    interface: str
    connected_to: tuple[str, int] | None = None
    written: list[bytes] = attrs.Factory(list)
    closed: bool = False

    def connect(self, host, port):
        """Remember the peer."""
        self.connected_to = (host, port)

    def write(self, data, addr=None):
        """Record a datagram."""
        self.written.append(data)

    def stopListening(self):
        """Mark the port closed."""
        self.closed = True

    def deliver(self, data: bytes, addr: tuple[str, int] | None = None):
        """Hand ``data`` to the protocol as if it came from ``addr`` (default: the peer)."""
        self.protocol.datagramReceived(data, addr or self.connected_to)


class FakeUDPReactor(MemoryReactorClock):
    """A Clock plus memory reactor whose listenUDP hands out FakeUDPPorts."""

    def __init__(self):
        super().__init__()
        self.udp_ports: list[FakeUDPPort] = []

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        """Create a FakeUDPPort and start the protocol on it."""
        fake = FakeUDPPort(protocol, interface)
        self.udp_ports.append(fake)
        protocol.makeConnection(fake)
        return fake
