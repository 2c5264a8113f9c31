"""
twisted.names records and upstream replies for the L2 and shared-cache
tests: short builders, and a resolver that records the queries reaching it.
"""
from twisted.internet import defer
from twisted.names import dns

from dnsgo.dns.records import read_reply

#: The zone the builders default to.
ZONE = b"example.com"


def a(name, address, ttl=300):
    """An A record."""
    return dns.RRHeader(name, dns.A, dns.IN, ttl, dns.Record_A(address))


def aaaa(name, address, ttl=300):
    """An AAAA record."""
    return dns.RRHeader(name, dns.AAAA, dns.IN, ttl, dns.Record_AAAA(address))


def cname(name, target, ttl=300):
    """A CNAME record."""
    return dns.RRHeader(name, dns.CNAME, dns.IN, ttl, dns.Record_CNAME(target))


def ns(name, target, ttl=300):
    """An NS record."""
    return dns.RRHeader(name, dns.NS, dns.IN, ttl, dns.Record_NS(target))


def soa(zone=ZONE, ttl=3600, minimum=900):
    """An SOA record of C{zone}."""
    payload = dns.Record_SOA(b"ns1." + zone, b"hostmaster." + zone, serial=1, minimum=minimum)
    return dns.RRHeader(zone, dns.SOA, dns.IN, ttl, payload)


def addresses(records):
    """The dotted addresses of A records."""
    return [rr.payload.dottedQuad() for rr in records]


def ttls(records):
    """The TTLs of records."""
    return [rr.ttl for rr in records]


class FakeResolver:
    """The next resolver of a chain: records the queries that reach it."""

    def __init__(self):
        self.queries = []

    def query(self, query, timeout=None):
        """Answer everything with one A record."""
        self.queries.append(query)
        return defer.succeed(([a(query.name.name, "198.51.100.1")], [], []))


def reply_message(answers=(), authority=(), additional=(), rcode=dns.OK, trunc=False):
    """
    An upstream reply as the forwarder hands it to the caches: encoded by
    twisted.names (with a placeholder question; the fillers learn for the
    question asked) and read back from its bytes.
    """
    message = dns.Message(id=1, answer=1, rCode=rcode, trunc=trunc)
    message.maxSize = 0  # twisted.names would cut the message at 512 bytes
    message.queries = [dns.Query(b"question.invalid", dns.A, dns.IN)]
    message.answers, message.authority, message.additional = list(answers), list(authority), list(additional)
    return read_reply(message.toStr())
