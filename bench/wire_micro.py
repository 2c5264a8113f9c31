"""
Micro benchmark of the byte-level helpers on the L1 hit path.

Prints microseconds per call for ``parse_query``, ``render_ttls``,
``patch_header`` and the three together, on a typical EDNS query (as dig
sends it, with a cookie) and a reply with three answer records.  No
assertions: run it by hand with ``.venv/bin/python bench/wire_micro.py``.
"""
import timeit

import dns.edns
import dns.message
import dns.rrset

from dnsgo.dns import wire


def _messages() -> tuple[bytes, bytes]:
    """Return (query bytes, stored reply bytes without OPT) for www.example.com A."""
    query = dns.message.make_query(
        "www.Example.com", "A", use_edns=0, payload=1232,
        options=[dns.edns.CookieOption(b"\x01" * 8, b"")],
    )
    reply = dns.message.make_response(query)
    reply.use_edns(False)
    reply.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "CNAME", "web.example.com."))
    reply.answer.append(dns.rrset.from_text("web.example.com.", 60, "IN", "A", "192.0.2.1", "192.0.2.2"))
    return query.to_wire(), reply.to_wire()


def _time(label: str, stmt, number: int = 20_000) -> None:
    """Print the best-of-25 microseconds per call of ``stmt`` (the machine may be busy)."""
    best = min(timeit.repeat(stmt, number=number, repeat=25)) / number
    print("%-40s %6.2f µs/op" % (label, best * 1e6))


def main() -> None:
    """Time the hit-path helpers one by one and together."""
    query, stored = _messages()
    layout = wire.scan_response(stored)
    info = wire.parse_query(query)
    offsets, ttls = layout.ttl_offsets, layout.orig_ttls
    plain = dns.message.make_query("www.example.com", "A").to_wire()

    _time("parse_query (no EDNS)", lambda: wire.parse_query(plain))
    _time("parse_query (EDNS + cookie)", lambda: wire.parse_query(query))
    _time("render_ttls (3 RRs)", lambda: wire.render_ttls(stored, offsets, ttls, 17))
    _time("patch_header", lambda: wire.patch_header(stored, info))
    _time("add_opt", lambda: wire.add_opt(stored, 1232, False))

    def hit() -> bytes:
        q = wire.parse_query(query)
        reply = wire.patch_header(wire.render_ttls(stored, offsets, ttls, 17), q)
        return wire.add_opt(reply, 1232, q.do)

    _time("parse + render + patch + add_opt", hit)
    _time("scan_response (miss path)", lambda: wire.scan_response(stored), 5_000)


if __name__ == "__main__":
    main()
