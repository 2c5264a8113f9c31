"""
The miss path in one process, measured in a way that noisy shared machines
cannot move: instructions per miss, counted by callgrind.

A dnsgo server is built in this process (``app.assemble.build_service``,
the default configuration but for the upstream, NSD on a free port), and
its query handler is fed ``--misses`` new names, ``--concurrency`` at a
time, through ``handle(..., respond=...)`` as the UDP listener does; the
upstream exchanges are real (sockets, the reactor, NSD).  What is left
out is only the listener's own ``recvfrom``/``sendto``.

    .venv/bin/python bench/inprocess_miss.py [--misses 20000]      # CPU µs per miss (noisy)
    .venv/bin/python bench/inprocess_miss.py --callgrind [--misses 1000]
                                                # instructions per miss (needs valgrind)
    .venv/bin/python bench/inprocess_miss.py --callgrind --pool-only
                                                # the upstream pool alone: UpstreamPool.ask per name
    .venv/bin/python bench/inprocess_miss.py --callgrind --without l2-fill
                                                # the same with one part of the miss path left out
    .venv/bin/python bench/inprocess_miss.py --garbage [--misses 5000]
                                                # objects left in reference cycles per miss, by type

With ``--callgrind`` the script runs itself under ``valgrind
--tool=callgrind`` with instrumentation off, turns it on
(``callgrind_control -i on``) when the misses start and off when they end,
and prints the user-space instructions per miss.  The count moves by well
under 1 % from run to run, where CPU time moves by 20 % on the 2-core
development VM, so two versions of the code can be compared with one run
each.  Kernel time (the system calls) is not counted.

It needs NSD, like ``run.py``; the process pins itself to CPU 1 and NSD
to CPU 0.  No assertions.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from callgrind import instructions_counted  # noqa: E402


def callgrind(args) -> None:
    """Run this script under callgrind and print the instructions per miss."""
    out = Path(tempfile.mkdtemp(prefix="dnsgo-cg-"))
    try:
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                   f"--callgrind-out-file={out / 'callgrind.out'}", sys.executable, __file__,
                   "--misses", str(args.misses), "--concurrency", str(args.concurrency), "--toggle"]
        if args.pool_only:
            command.append("--pool-only")
        for part in args.without:
            command += ["--without", part]
        run = subprocess.run(command, capture_output=True, text=True, check=False)
        instructions = instructions_counted(out)
        if not instructions:
            raise SystemExit(f"callgrind wrote no totals:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
        print(run.stdout.strip())
        print(f"{instructions / args.misses:,.0f} instructions per miss (user space, callgrind)")
    finally:
        shutil.rmtree(out, ignore_errors=True)


def drive(args) -> None:
    """Build the server, send the misses, print CPU per miss."""
    import servers
    import workload
    from procs import Processes

    os.sched_setaffinity(0, {1})
    from twisted.internet import epollreactor

    epollreactor.install()
    import gc

    import dns.message
    from twisted.internet import reactor

    from dnsgo.app.assemble import build_service
    from dnsgo.config.load import parse_config
    from dnsgo.dns import wire
    from dnsgo.tap import GC_THRESHOLDS

    gc.set_threshold(*GC_THRESHOLDS)
    for part in args.without:
        leave_out(part)
    if args.garbage:
        gc.collect()
        gc.disable()
    workdir = Path(tempfile.mkdtemp(prefix="dnsgo-inproc-"))
    try:
        sizes = workload.Sizes(hit_names=10, cname_every=10**9, zipf_names=0, zipf_queries=0,
                               zipf_exponent=1.0, miss_names=args.misses)
        layout = workload.Layout(sizes, servers=1)
        workload.write_zone(workdir / "bench.zone", layout)
        queries = [dns.message.make_query(name, "A", use_edns=0, payload=1232).to_wire()
                   for name in workload.miss_names(layout, 0)]
        with Processes() as procs:
            port, _, _ = servers.start_nsd(procs, workdir, workdir / "bench.zone", 0)
            config = parse_config(f'server: {{listen_address: "127.0.0.1:0"}}\n'
                                  f'upstreams: ["127.0.0.1:{port}"]\napi: {{enabled: false}}\n')
            parts = build_service(config, reactor=reactor).parts
            old_handler = "respond" not in parts.handler.handle.__code__.co_varnames
            pending = iter(queries)
            answered = [0]
            started = [0.0, 0.0]

            def respond(reply, reply_to=None) -> None:
                answered[0] += 1
                send_next()
                if answered[0] == args.misses:
                    reactor.stop()

            def send_next() -> None:
                data = next(pending, None)
                if data is None:
                    return
                if args.pool_only:
                    q = wire.parse_query(data)
                    parts.pool.ask(q.qname, q.qtype, q.qclass, False, False, respond)
                    return
                if old_handler:  # a version before handle(..., respond=...): its Deferred
                    reply = parts.handler.handle(data, "127.0.0.1")
                    if reply is not None and not isinstance(reply, bytes):
                        reply.addCallback(respond)
                        return
                else:
                    reply = parts.handler.handle(data, "127.0.0.1", respond=respond)
                if reply is not None:
                    respond(reply)

            def toggle(state: str) -> None:
                if args.toggle:
                    subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], capture_output=True, check=False)

            def go() -> None:
                toggle("on")
                started[:] = [time.process_time(), time.perf_counter()]
                for _ in range(args.concurrency):
                    send_next()

            reactor.callWhenRunning(go)
            reactor.run()
            toggle("off")
            cpu = time.process_time() - started[0]
            wall = time.perf_counter() - started[1]
        print(f"{args.misses:,} misses: {cpu / args.misses * 1e6:.1f} µs CPU each, {args.misses / wall:,.0f} misses/s")
        if args.garbage:
            report_garbage(args.misses)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


#: What ``--without`` can leave out of the miss path, and how: each
#: replaces one step with a no-op, so the difference in instructions per
#: miss is what that step costs.  The replies still reach the driver; only
#: the caches (and the statistics) lose what the step would have done.
WITHOUT = {
    "l2-fill": ("dnsgo.resolve.l2", "_ReplyFiller", "__call__", lambda self, query, reply: None),
    "l2-check": ("dnsgo.cache.rrset", "RRsetCache", "holds_any", lambda self, name, type, cls=1: False),
    "l1-store": ("dnsgo.cache.message", "MessageCache", "store", lambda self, q, body, layout=None: False),
    "stats": ("dnsgo.serve.stats", "QueryStats", "record", lambda self, *args: None),
}


def leave_out(part: str) -> None:
    """Replace the step ``part`` of :data:`WITHOUT` with its no-op, in this process."""
    import importlib

    module, cls, method, stub = WITHOUT[part]
    setattr(getattr(importlib.import_module(module), cls), method, stub)


def report_garbage(misses: int) -> None:
    """Print what only the cyclic collector could free (collection was off during the run), by type."""
    import collections
    import gc

    gc.set_debug(gc.DEBUG_SAVEALL)
    found = gc.collect()
    kinds = collections.Counter(type(o).__qualname__ for o in gc.garbage)
    gc.garbage.clear()
    gc.set_debug(0)
    print(f"{found:,} objects in reference cycles ({found / misses:.1f} per miss); the commonest types:")
    for kind, count in kinds.most_common(12):
        print(f"  {count:>9,}  {kind}")


def main() -> None:
    """Parse the options and measure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--misses", type=int, default=None, help="names to ask (20000; 1000 with --callgrind)")
    parser.add_argument("--concurrency", type=int, default=50, help="misses in flight at once")
    parser.add_argument("--callgrind", action="store_true", help="count instructions under valgrind")
    parser.add_argument("--pool-only", action="store_true", help="ask the upstream pool directly")
    parser.add_argument("--garbage", action="store_true",
                        help="turn the cyclic garbage collector off, then report what it alone could free")
    parser.add_argument("--without", action="append", default=[], choices=sorted(WITHOUT),
                        help="leave this step of the miss path out (repeatable): what it costs")
    parser.add_argument("--toggle", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.misses is None:
        args.misses = 1000 if args.callgrind else 20000
    if args.callgrind:
        callgrind(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
