"""
RFC 2308 negative-answer TTLs, applied to the records of a reply before it is
encoded, so that what the client sees and what the caches keep agree.
"""
from twisted.names import dns


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
