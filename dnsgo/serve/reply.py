"""
Building reply bytes on the miss path, from what the resolver chain gave.

The reply is encoded without its OPT record: that is what the L1 cache
stores, and :mod:`dnsgo.serve.handler` adds the OPT (and truncates) per client.

RFC 2308 negative-answer TTLs are applied to the records of a reply before
it is encoded (:func:`normalize_negative`), so that what the client sees and
what the caches keep agree.
"""
from twisted.names import dns

from dnsgo.dns import wire
from dnsgo.dns.names import wire_to_dotted

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


def negative_ttl(soa: dns.RRHeader, cap: int) -> int:
    """min(SOA TTL, SOA MINIMUM, cap): how long a negative answer may live."""
    return max(0, min(soa.ttl, soa.payload.minimum, cap))


def normalize_negative(rcode: int, answers, authority, cap: int):
    """
    For NXDOMAIN and NODATA (NOERROR, no answer of the asked type at the end
    of the chain is not checked here: any NOERROR reply with an SOA in its
    authority section), return the authority section with each SOA's TTL
    set to its negative TTL.  Other replies are returned unchanged.
    """
    if rcode not in (dns.OK, dns.ENAME) or (rcode == dns.OK and not _is_nodata(answers)):
        return authority
    out = []
    for rr in authority:
        if rr.type == dns.SOA:
            rr = dns.RRHeader(rr.name.name, rr.type, rr.cls, negative_ttl(rr, cap), rr.payload, rr.auth)
        out.append(rr)
    return out


def _is_nodata(answers) -> bool:
    return not answers or all(rr.type == dns.CNAME for rr in answers)
