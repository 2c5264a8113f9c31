"""
How long a name stays answerable from the shared cache once the upstream is
dead (issue #10's serve-stale figure), for each ``ttl_multiplier``.

A real redis-server and the test suite's authority (tests.support); two
hybrid dnsgo servers in this process, each with serve-stale on.  Worker A
asks ``short.example.test`` (TTL 2 s) and writes it to Redis; the upstream
goes silent; every 0.25 s a fresh worker, which never saw the name (so
only Redis can answer it), is asked for it once, until one no longer
answers NOERROR.  Printed: seconds from A's
answer to B's last good answer, against the design's bound of
``TTL × ttl_multiplier`` (Redis drops the value then).

    .venv/bin/python bench/stale_window.py                # multipliers 1 and 3
    .venv/bin/python bench/stale_window.py --multiplier 5
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dns.rcode  # noqa: E402
from twisted.internet import defer, reactor, task  # noqa: E402

from tests.support.authority import AuthorityServer  # noqa: E402
from tests.support.harness import ask, config_text, port  # noqa: E402
from tests.support.redis_procs import SKIP, RedisServer  # noqa: E402
from dnsgo.app.assemble import build_service  # noqa: E402
from dnsgo.config import parse_config  # noqa: E402

NAME, TTL = "short.example.test.", 2


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def worker(redis: RedisServer, upstream: AuthorityServer, multiplier: float, started: list):
    extra = (
        "cache:\n  mode: hybrid\n"
        f'  shared_cache:\n    enabled: true\n    type: redis\n    address: "127.0.0.1:{redis.port}"\n'
        f"    ttl_multiplier: {multiplier}\n"
        "  serve_stale:\n    enabled: true\n    answer_ttl: 30\n    max_stale: 1h\n    client_timeout: 1s\n"
        "api:\n  enabled: false\n"
    )
    root = build_service(parse_config(config_text([upstream.address], extra), "<bench>", {}), reactor=reactor)
    root.startService()
    started.append(root)
    while root.backend.status().status != "connected":
        yield sleep(0.02)
    return root


@defer.inlineCallbacks
def window(multiplier: float) -> defer.Deferred:
    """Seconds from the first answer until a fresh worker last answered the name with the upstream dead."""
    redis = RedisServer().start()
    upstream = AuthorityServer().start()
    started: list = []
    try:
        a = yield worker(redis, upstream, multiplier, started)
        first = yield ask(port(a), NAME)
        learned = time.monotonic()
        assert first.rcode() == dns.rcode.NOERROR, first
        yield a.shared_store.idle()
        upstream.authority.silent = True
        last_good = None
        while time.monotonic() - learned < TTL * multiplier + 10:
            # A fresh worker each time: only Redis can answer it, not a copy of its own.
            fresh = yield worker(redis, upstream, multiplier, started)
            try:
                reply = yield ask(port(fresh), NAME, timeout=2)
                good = reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)
            except Exception:
                good = False
            started.remove(fresh)
            yield fresh.stopService()
            if good:
                last_good = time.monotonic() - learned
            elif time.monotonic() - learned > TTL:
                break
            yield sleep(0.25)
        return last_good
    finally:
        for root in started:
            yield root.stopService()
        upstream.stop()
        redis.stop()


@defer.inlineCallbacks
def main(multipliers):
    print("| ttl_multiplier | Redis keeps the value (s) | answerable with the upstream dead (s) |")
    print("|---:|---:|---:|")
    for multiplier in multipliers:
        seconds = yield window(multiplier)
        shown = "never" if seconds is None else f"{seconds:.1f}"
        print(f"| {multiplier:g} | {TTL * multiplier:g} | {shown} |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--multiplier", type=float, action="append")
    args = parser.parse_args()
    if SKIP:
        raise SystemExit(SKIP)
    d = main(args.multiplier or [1, 3])
    d.addErrback(lambda f: print(f.getTraceback()))
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
