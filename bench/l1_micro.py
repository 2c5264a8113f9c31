"""
Micro benchmark of the L1 message cache's hit path.

Prints microseconds per ``parse_query`` + ``MessageCache.lookup`` hit, for
hits within the same second (only ``patch_header``) and for hits that must
render the TTLs again (the clock moves a second before each), next to the
cost of ``parse_query`` alone.  No assertions: run it by hand with
``.venv/bin/python bench/l1_micro.py``.
"""
import timeit

import dns.edns
import dns.message
from twisted.internet import task
from twisted.names import dns as tdns

from dnsgo.dns import wire
from dnsgo.cache.message import MessageCache
from dnsgo.serve.reply import encode_reply


def _setup():
    """Return (query bytes, cache, clock) with www.example.com A cached."""
    query = dns.message.make_query(
        "www.Example.com", "A", use_edns=0, payload=1232,
        options=[dns.edns.CookieOption(b"\x01" * 8, b"")],
    ).to_wire()
    q = wire.parse_query(query)
    answers = [
        tdns.RRHeader(b"www.example.com", tdns.CNAME, tdns.IN, 300, tdns.Record_CNAME(b"web.example.com")),
        tdns.RRHeader(b"web.example.com", tdns.A, tdns.IN, 60, tdns.Record_A("192.0.2.1")),
        tdns.RRHeader(b"web.example.com", tdns.A, tdns.IN, 60, tdns.Record_A("192.0.2.2")),
    ]
    clock = task.Clock()
    cache = MessageCache(reactor=clock, num_shards=32)
    if not cache.store(q, encode_reply(q, tdns.OK, answers, [], [])):
        raise SystemExit("the reply was not cacheable")
    return query, cache, clock


def _time(label: str, stmt, number: int = 200_000) -> None:
    """Print the best-of-5 microseconds per call of ``stmt``."""
    best = min(timeit.repeat(stmt, number=number, repeat=5)) / number
    print("%-44s %6.2f µs/op" % (label, best * 1e6))


def main() -> None:
    """Time the L1 hit path."""
    query, cache, clock = _setup()
    parse, lookup = wire.parse_query, cache.lookup

    _time("parse_query", lambda: parse(query))
    _time("parse_query + lookup (same second)", lambda: lookup(parse(query)))

    def rerender():
        clock.rightNow = (clock.rightNow + 1.0) % 50
        return lookup(parse(query))

    _time("parse_query + lookup (TTLs re-rendered)", rerender)
    q = parse(query)
    _time("lookup alone (same second)", lambda: lookup(q))


if __name__ == "__main__":
    main()
