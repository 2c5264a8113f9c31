"""
A small authoritative DNS server for the tests, written with dnspython so
that the upstream side is not dnsgo's own code.

It serves one zone over UDP and TCP on 127.0.0.1 (port 0), counts the
queries it gets, can go silent (a dead upstream), and truncates UDP replies
that do not fit the client's limit, as a real server does.
"""
from collections import Counter

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.renderer
import dns.zone
from twisted.internet import protocol, reactor as default_reactor
from twisted.protocols.basic import Int16StringReceiver

ZONE = """
$ORIGIN example.test.
$TTL 300
@       3600 IN SOA ns1 hostmaster 1 7200 3600 1209600 300
@       IN NS   ns1
ns1     IN A    192.0.2.53
www     IN A    192.0.2.1
www     IN AAAA 2001:db8::1
short   2 IN A  192.0.2.2
zero    0 IN A  192.0.2.3
c10     IN CNAME h10
h10     IN A    192.0.2.10
dangling IN CNAME nothere
mx      IN MX   10 mail
mail    IN A    192.0.2.25
"""


def big_txt_lines(prefix: str, count: int) -> str:
    """Zone lines giving ``prefix`` enough TXT records for a large reply."""
    return "".join(f'{prefix} IN TXT "{"x" * 200}-{i:03d}"\n' for i in range(count))


def make_zone(extra: str = "") -> dns.zone.Zone:
    """The test zone: ZONE, a 3-record TXT (``mid``, ~700 bytes) and a 10-record one (``big``, ~2 KB)."""
    text = ZONE + big_txt_lines("mid", 3) + big_txt_lines("big", 10) + extra
    return dns.zone.from_text(text, origin="example.test.", relativize=False)


class Authority:
    """
    The zone's answers, shared by the UDP and TCP protocols.

    ``queries`` counts (lowercased name, type) pairs; ``silent`` makes the
    server drop everything; ``rcode_override`` answers every query with it.
    """

    def __init__(self, zone: dns.zone.Zone | None = None) -> None:
        self.zone = zone or make_zone()
        self.queries: Counter = Counter()
        self.silent = False
        self.rcode_override: int | None = None

    @property
    def total(self) -> int:
        """How many queries arrived in all."""
        return sum(self.queries.values())

    def answer(self, data: bytes, limit: int | None) -> bytes | None:
        """The reply bytes for ``data``; truncated (TC=1) past ``limit``."""
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        q = query.question[0]
        self.queries[(q.name.to_text().lower(), dns.rdatatype.to_text(q.rdtype))] += 1
        if self.silent:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if self.rcode_override is not None:
            response.set_rcode(self.rcode_override)
        else:
            self.respond(response, q.name, q.rdtype)
        if limit is None:
            limit = query.payload if query.edns >= 0 else 512
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer = []
            response.authority = []
            response.additional = []
            response.flags |= dns.flags.TC
            return response.to_wire()

    def respond(self, response, name, rdtype) -> None:
        """Fill ``response`` for the question: REFUSED outside the zone, else from the zone."""
        if not name.is_subdomain(self.zone.origin):
            response.set_rcode(dns.rcode.REFUSED)
            response.flags &= ~dns.flags.AA
        else:
            self._fill(response, name, rdtype)

    def _fill(self, response, name, rdtype) -> None:
        soa = self.zone.find_rrset(self.zone.origin, dns.rdatatype.SOA)
        seen = 0
        while True:
            node = self.zone.get_node(name)
            if node is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
                response.authority.append(soa)
                return
            rrset = node.get_rdataset(dns.rdataclass.IN, rdtype)
            if rrset is not None:
                response.answer.append(self.zone.find_rrset(name, rdtype))
                return
            cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if cname is None or seen > 8:
                response.authority.append(soa)
                return
            response.answer.append(self.zone.find_rrset(name, dns.rdatatype.CNAME))
            name = cname[0].target
            seen += 1


class _UDP(protocol.DatagramProtocol):
    def __init__(self, authority: Authority) -> None:
        self.authority = authority

    def datagramReceived(self, data, addr):
        reply = self.authority.answer(data, None)
        if reply is not None:
            self.transport.write(reply, addr)


class _TCP(Int16StringReceiver):
    def stringReceived(self, data):
        reply = self.factory.authority.answer(data, 65535)
        if reply is not None:
            self.sendString(reply)


class AuthorityServer:
    """Runs an :class:`Authority` on ``host`` (default 127.0.0.1) over UDP and TCP (same port)."""

    def __init__(self, authority: Authority | None = None, reactor=None, host: str = "127.0.0.1") -> None:
        self.authority = authority or Authority()
        self._reactor = reactor or default_reactor
        self.host = host
        self._ports = []
        self.port = None

    def start(self) -> "AuthorityServer":
        """Bind both transports; returns self."""
        for _ in range(20):
            udp = self._reactor.listenUDP(0, _UDP(self.authority), interface=self.host)
            port = udp.getHost().port
            factory = protocol.ServerFactory.forProtocol(_TCP)
            factory.authority = self.authority
            try:
                tcp = self._reactor.listenTCP(port, factory, interface=self.host)
            except Exception:
                udp.stopListening()
                continue
            self._ports = [udp, tcp]
            self.port = port
            return self
        raise RuntimeError("no free port pair")

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) to forward to."""
        return (self.host, self.port)

    def stop(self):
        """Stop listening; returns a Deferred."""
        from twisted.internet import defer

        ports, self._ports = self._ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
