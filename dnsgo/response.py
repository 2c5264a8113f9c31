"""
Building reply bytes on the miss path, from what the resolver chain gave.

The reply is encoded without its OPT record: that is what the L1 cache
stores, and :mod:`dnsgo.handler` adds the OPT (and truncates) per client.
"""
from twisted.names import dns

from dnsgo import wire
from dnsgo.query import wire_to_dotted

#: The default bound of served TTLs: one day, as ``cache.max_ttl``'s default.
MAX_TTL = 86400

_TOP_BIT = 2**31


def encode_reply(query: wire.QueryInfo, rcode: int, answers, authority, additional, max_ttl: int = MAX_TTL) -> bytes:
    """
    Encode a reply to ``query`` with the given sections.

    The question is copied byte for byte from the query, so the client's
    0x20 case survives; the ID and RD come from the query, RA is set, AD is
    clear (dnsgo does not validate).  No TTL goes out above ``max_ttl``,
    and a TTL with its top bit set goes out as 0 (RFC 2181 §8).
    """
    m = dns.Message(
        id=query.id,
        answer=1,
        opCode=dns.OP_QUERY,
        recDes=query.rd,
        recAv=1,
        rCode=rcode,
        checkingDisabled=query.cd,
    )
    m.maxSize = 0  # twisted.names would cut the body at 512 bytes; truncation is ours
    m.queries = [dns.Query(wire_to_dotted(query.qname), query.qtype, query.qclass)]
    m.answers = _bounded(answers, max_ttl)
    m.authority = _bounded(authority, max_ttl)
    m.additional = _bounded([rr for rr in additional if rr.type != dns.OPT], max_ttl)
    encoded = m.toStr()
    end = 12 + len(query.question)
    if encoded[12:end] != query.question:
        # Only a name with bytes twisted.names cannot round-trip (a "." inside
        # a label) gets here; when the lengths agree the bytes can be copied.
        if wire.parse_question(encoded)[3] == end:
            encoded = encoded[:12] + query.question + encoded[end:]
    return encoded



def _bounded(records, max_ttl: int) -> list:
    """``records`` as a list, each TTL above ``max_ttl`` lowered to it (0 when its top bit is set)."""
    records = list(records)
    if all(rr.ttl <= max_ttl for rr in records):
        return records
    return [
        rr
        if rr.ttl <= max_ttl
        else dns.RRHeader(rr.name.name, rr.type, rr.cls, 0 if rr.ttl >= _TOP_BIT else max_ttl, rr.payload, rr.auth)
        for rr in records
    ]
