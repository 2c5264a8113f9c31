"""
Which Redis Cluster client for Twisted: measure GET latency and throughput
of dnsgo's slot router over txredisapi against redis-py's RedisCluster run
in the reactor's thread pool (``deferToThread``), on a local 3+3 cluster.

    .venv/bin/python bench/redis_cluster_client.py [--ops 2000] [--inflight 32]

redis-py is not a dnsgo dependency: install it somewhere else and put it on
PYTHONPATH (``pip install --target /tmp/redispy redis``); without it only
the router is measured.  Prints one line per client: p50/p99 latency of
GETs sent one at a time, and GETs per second with ``--inflight`` in flight
together with the client process's CPU time per GET (the steadier number
on a shared machine).
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, reactor, threads  # noqa: E402

from dnsgo.redis.breaker import CircuitBreaker
from dnsgo.redis.cluster import ClusterRedis
from dnsgo.redis.guard import Guard
from tests.support.redis_procs import RedisCluster  # noqa: E402


def percentile(samples: list[float], p: float) -> float:
    """The p-th percentile (0..100) of samples, nearest rank."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


@defer.inlineCallbacks
def measure(name: str, get, keys: list[bytes], inflight: int):
    """Sequential latency, then throughput with ``inflight`` GETs outstanding."""
    for key in keys[:200]:  # warm up: connections, slot map
        yield get(key)
    latencies = []
    for key in keys:
        t = time.perf_counter()
        value = yield get(key)
        latencies.append((time.perf_counter() - t) * 1000)
        assert value is not None, key
    queue = list(keys)
    start, cpu = time.perf_counter(), time.process_time()

    @defer.inlineCallbacks
    def lane():
        while queue:
            yield get(queue.pop())

    yield defer.gatherResults([lane() for _ in range(inflight)])
    rate = len(keys) / (time.perf_counter() - start)
    cpu_per_get = (time.process_time() - cpu) / len(keys) * 1e6
    print(f"{name:42s} p50 {statistics.median(latencies):6.3f} ms  p99 {percentile(latencies, 99):6.3f} ms"
          f"  {rate:6.0f} GETs/s with {inflight} in flight, {cpu_per_get:4.0f} us CPU/GET")


@defer.inlineCallbacks
def main(args):
    cluster = RedisCluster().start()
    try:
        seeds = [("127.0.0.1", n.port) for n in cluster.nodes[:3]]
        guard = Guard(CircuitBreaker(reactor=reactor), read_timeout=5, write_timeout=5, reactor=reactor)
        ours = ClusterRedis(seeds, guard=guard, pool_size=10, reactor=reactor)
        yield ours.start()
        keys = [b"bench:%d" % i for i in range(args.ops)]
        for key in keys:
            yield ours.set(key, b"x" * 100, 600)
        yield measure("dnsgo ClusterRedis (txredisapi + hiredis)", ours.get, keys, args.inflight)
        yield ours.stop()
        try:
            from redis.cluster import ClusterNode, RedisCluster as PyCluster
        except ImportError:
            print("redis-py is not importable: skipped (see the module docstring)")
            return
        import redis

        py = PyCluster(startup_nodes=[ClusterNode(h, p) for h, p in seeds], max_connections=32)
        print(f"redis-py {redis.__version__}, reactor thread pool of {reactor.getThreadPool().max} threads")
        yield measure("redis-py RedisCluster in deferToThread", lambda k: threads.deferToThread(py.get, k),
                      keys, args.inflight)
        py.close()
    finally:
        cluster.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--inflight", type=int, default=32)
    options = parser.parse_args()

    def run():
        d = main(options)
        d.addErrback(lambda f: f.printTraceback())
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
