"""
Building reply bytes on the miss path, from what the resolver chain gave.

The reply is encoded without its OPT record: that is what the L1 cache
stores, and :mod:`dnsgo.handler` adds the OPT (and truncates) per client.
"""
from twisted.names import dns

from dnsgo import wire
from dnsgo.query import wire_to_dotted


def encode_reply(query: wire.QueryInfo, rcode: int, answers, authority, additional) -> bytes:
    """
    Encode a reply to ``query`` with the given sections.

    The question is copied byte for byte from the query, so the client's
    0x20 case survives; the ID and RD come from the query, RA is set, AD is
    clear (dnsgo does not validate).
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
    m.answers = list(answers)
    m.authority = list(authority)
    m.additional = [rr for rr in additional if rr.type != dns.OPT]
    encoded = m.toStr()
    end = 12 + len(query.question)
    if encoded[12:end] != query.question:
        # Only a name with bytes twisted.names cannot round-trip (a "." inside
        # a label) gets here; when the lengths agree the bytes can be copied.
        if wire.parse_question(encoded)[3] == end:
            encoded = encoded[:12] + query.question + encoded[end:]
    return encoded

