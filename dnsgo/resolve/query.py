"""
The question a resolver in the chain is asked, with the flags that matter.

Twisted's ``IResolver.query`` takes a ``dns.Query``, which carries no flags.
A forwarder must still know the client's DO and CD bits (they are part of
the cache key, RFC 7873 / RFC 4035), so :class:`FlaggedQuery` extends
``dns.Query`` with them, and :class:`dnsgo.resolve.chain.Chain` passes the very same
object down the chain instead of rebuilding a plain one.
"""
from twisted.names import dns

from dnsgo.dns.names import dotted_to_wire, wire_to_dotted
from dnsgo.dns.wire import label_has_dot


class FlaggedQuery(dns.Query):
    """
    A ``dns.Query`` that also carries the client's DO and CD bits and the
    question name in wire format (case as sent).

    ``dotted`` says the name has a ``.`` inside a label: its dotted form
    (``name``) is then ambiguous, and the caches must neither answer nor
    learn from it (:func:`dnsgo.dns.records.read_reply`).

    Resolvers that do not know about the extra attributes see an ordinary
    ``dns.Query``.
    """

    __slots__ = ("dnssec_ok", "checking_disabled", "qname_wire", "dotted")

    def __init__(
        self,
        qname_wire: bytes,
        type: int = dns.A,
        cls: int = dns.IN,
        *,
        dnssec_ok: bool = False,
        checking_disabled: bool = False,
    ) -> None:
        super().__init__(wire_to_dotted(qname_wire), type, cls)
        self.qname_wire = qname_wire
        self.dotted = label_has_dot(qname_wire)
        self.dnssec_ok = dnssec_ok
        self.checking_disabled = checking_disabled

    @classmethod
    def from_name(cls, name: bytes | str, type: int = dns.A, qclass: int = dns.IN, **flags) -> "FlaggedQuery":
        """Build a query from a dotted name (as twisted.names lookups use)."""
        if isinstance(name, str):
            name = name.encode("idna") if name else b""
        return cls(dotted_to_wire(name), type, qclass, **flags)
