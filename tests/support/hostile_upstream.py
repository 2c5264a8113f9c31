"""
A hostile upstream for the tests: the dnspython authority of
tests/support/authority.py, plus wildcards and scripted replies that try to poison
a cache (data for names other than the question, foreign SOAs, DNAMEs,
TTLs of 2**31 and above).

Keep new attacks here, so every feature can be tried against them.
"""
import dns.flags
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tests.support.authority import Authority, make_zone

#: Zone lines for the label-with-a-dot attacks (relative to example.test.).
DOTTED_LINES = """
www.bank      IN A 10.0.0.1
*.wild        IN A 192.0.2.7
host.sub.wild IN A 10.9.9.9
"""


def rrset(name: str, ttl: int, rdtype: str, *rdatas: str) -> dns.rrset.RRset:
    """An IN RRset from text."""
    return dns.rrset.from_text(name, ttl, "IN", rdtype, *rdatas)


def cname_with_foreign_data(target: str, address: str):
    """A script: the question is a CNAME to ``target``, and the reply also says what ``target``'s A is."""

    def script(response, qname, rdtype):
        response.answer.append(rrset(qname.to_text(), 300, "CNAME", target))
        response.answer.append(rrset(target, 300, "A", address))

    return script


def dname_with_foreign_data(owner: str, target_zone: str, address: str):
    """A script: ``owner`` is a DNAME to ``target_zone``; the reply synthesizes the CNAME and adds the target's A."""

    def script(response, qname, rdtype):
        relative = qname.relativize(dns.name.from_text(owner)).to_text()
        target = f"{relative}.{target_zone}"
        response.answer.append(rrset(owner, 300, "DNAME", target_zone))
        response.answer.append(rrset(qname.to_text(), 300, "CNAME", target))
        response.answer.append(rrset(target, 300, "A", address))

    return script


def cname_to_foreign_nxdomain(target: str, foreign_zone: str):
    """A script: NXDOMAIN for a CNAME's ``target``, with an SOA of ``foreign_zone`` that the upstream does not serve."""

    def script(response, qname, rdtype):
        response.set_rcode(dns.rcode.NXDOMAIN)
        response.answer.append(rrset(qname.to_text(), 300, "CNAME", target))
        response.authority.append(rrset(foreign_zone, 3600, "SOA", f"ns.{foreign_zone} host.{foreign_zone} 1 7200 3600 1209600 3000"))

    return script


def address_with_ttl(ttl: int, address: str = "192.0.2.99"):
    """A script: the question's A record, with ``ttl`` (up to 2**32 - 1)."""

    def script(response, qname, rdtype):
        response.answer.append(rrset(qname.to_text(), ttl, "A", address))

    return script


class HostileAuthority(Authority):
    """
    The test zone (with :data:`DOTTED_LINES` and ``extra`` lines), wildcard
    answers, and ``scripts``: lowercased name text (``"cn.example.test."``)
    to a callable ``(response, qname, rdtype)`` that writes the reply,
    whatever the name's zone.
    """

    def __init__(self, scripts=None, extra: str = "") -> None:
        super().__init__(make_zone(DOTTED_LINES + extra))
        self.scripts = dict(scripts or {})

    def respond(self, response, name, rdtype) -> None:
        """Scripted names first, then the zone with wildcards, else REFUSED."""
        script = self.scripts.get(name.to_text().lower())
        if script is not None:
            script(response, name, rdtype)
            return
        if name.is_subdomain(self.zone.origin) and self.zone.get_node(name) is None:
            wildcard = self._wildcard(name, rdtype)
            if wildcard is not None:
                response.answer.append(wildcard)
                return
        super().respond(response, name, rdtype)

    def _wildcard(self, name, rdtype):
        """The RRset a wildcard above ``name`` synthesizes for it (owner ``name``), or None."""
        parent = name.parent()
        while parent.is_subdomain(self.zone.origin):
            node = self.zone.get_node(dns.name.Name((b"*",) + parent.labels))
            if node is not None:
                found = node.get_rdataset(dns.rdataclass.IN, rdtype)
                if found is None:
                    return None
                synthesized = dns.rrset.RRset(name, dns.rdataclass.IN, rdtype)
                synthesized.update(found)
                return synthesized
            if parent == self.zone.origin:
                return None
            parent = parent.parent()
        return None
