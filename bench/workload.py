"""
The benchmark's data: the ``bench.test.`` zone and the dnsperf query files.

Names are laid out in disjoint index ranges so that no scenario warms
another's names: the hit working set first, then the Zipf population, then
one block of never-repeated miss names per server.
"""
import itertools
import random
from dataclasses import dataclass
from pathlib import Path

ZONE = "bench.test"
READY_NAME = f"ready.{ZONE}"
TTL = 86400


def a_name(index: int) -> str:
    """The A-record name with number ``index``."""
    return f"h{index:07d}.{ZONE}"


def cname_name(index: int) -> str:
    """The CNAME with number ``index`` (it points at ``a_name(index)``)."""
    return f"c{index:07d}.{ZONE}"


@dataclass(frozen=True)
class Sizes:
    """How many names and queries each scenario uses."""

    hit_names: int
    cname_every: int
    zipf_names: int
    zipf_queries: int
    zipf_exponent: float
    miss_names: int
    seed: int = 20240611


@dataclass(frozen=True)
class Layout:
    """The index ranges of each scenario's names, for ``servers`` servers."""

    sizes: Sizes
    servers: int

    @property
    def hit_range(self) -> range:
        """Indexes of the hit working set."""
        return range(1, 1 + self.sizes.hit_names)

    @property
    def zipf_range(self) -> range:
        """Indexes of the Zipf population (shared: each server has its own cache)."""
        start = self.hit_range.stop
        return range(start, start + self.sizes.zipf_names)

    def miss_range(self, server: int) -> range:
        """Indexes of the unique names server number ``server`` is asked once."""
        start = self.zipf_range.stop + server * self.sizes.miss_names
        return range(start, start + self.sizes.miss_names)

    @property
    def a_records(self) -> int:
        """How many A names the zone holds."""
        return self.miss_range(self.servers).start - 1

    @property
    def cname_indexes(self) -> range:
        """Indexes of the CNAMEs (a slice of the hit working set)."""
        return range(1, 1 + self.sizes.hit_names, self.sizes.cname_every)


def _address(index: int) -> str:
    """A distinct IPv4 address in 10.0.0.0/8 for ``index``."""
    return f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"


def write_zone(path: Path, layout: Layout) -> None:
    """Write the ``bench.test.`` zone file: SOA, NS, the ready name, every A
    name and the CNAMEs."""
    with open(path, "w") as out:
        out.write(f"$ORIGIN {ZONE}.\n$TTL {TTL}\n"
                  f"@ IN SOA ns1 hostmaster 1 3600 900 604800 {TTL}\n"
                  "@ IN NS ns1\nns1 IN A 127.0.0.1\nready IN A 127.0.0.1\n")
        for index in range(1, layout.a_records + 1):
            out.write(f"h{index:07d} IN A {_address(index)}\n")
        for index in layout.cname_indexes:
            out.write(f"c{index:07d} IN CNAME h{index:07d}\n")


def write_queries(path: Path, names) -> int:
    """Write a dnsperf query file asking A for each of ``names``; return the count."""
    count = 0
    with open(path, "w") as out:
        for name in names:
            out.write(f"{name} A\n")
            count += 1
    return count


def hit_names(layout: Layout) -> list[str]:
    """The hit working set: the A names plus the CNAMEs, shuffled."""
    names = [a_name(i) for i in layout.hit_range]
    names += [cname_name(i) for i in layout.cname_indexes]
    random.Random(layout.sizes.seed).shuffle(names)
    return names


def miss_names(layout: Layout, server: int) -> list[str]:
    """The unique names for server number ``server``, shuffled."""
    names = [a_name(i) for i in layout.miss_range(server)]
    random.Random(layout.sizes.seed + 1 + server).shuffle(names)
    return names


def zipf_trace(layout: Layout, nx_share: float = 0.0) -> list[str]:
    """A fixed-seed trace of ``zipf_queries`` names drawn from the Zipf
    population with P(rank k) proportional to 1/k**s; ranks are mapped to
    names through a seeded shuffle.  With ``nx_share``, that share of the
    queries (at seeded places) is for names the zone does not have, each
    asked once."""
    sizes = layout.sizes
    rng = random.Random(sizes.seed + 1000)
    population = [a_name(i) for i in layout.zipf_range]
    rng.shuffle(population)
    cumulative = list(itertools.accumulate(
        1.0 / rank ** sizes.zipf_exponent for rank in range(1, len(population) + 1)))
    trace = rng.choices(population, cum_weights=cumulative, k=sizes.zipf_queries)
    for n, index in enumerate(rng.sample(range(len(trace)), int(len(trace) * nx_share))):
        trace[index] = f"nx{n:07d}.{ZONE}"
    return trace


def with_scan(trace: list[str], layout: Layout, count: int) -> list[str]:
    """
    ``trace`` with ``count`` one-hit wonders inserted as one block in the
    middle: names of the zone asked once each, taken from the end of the
    last server's miss block (Twisted Names'), which no other scenario of a
    dnsgo/Unbound run asks for.
    """
    block = layout.miss_range(layout.servers - 1)
    if count > len(block):
        raise SystemExit(f"--zipf-scan: at most {len(block):,} names")
    scan = [a_name(i) for i in range(block.stop - count, block.stop)]
    middle = len(trace) // 2
    return trace[:middle] + scan + trace[middle:]


def ideal_hit_rate(trace: list[str]) -> float:
    """The hit rate of an infinite cache on ``trace``: only first sightings miss."""
    return 1.0 - len(set(trace)) / len(trace) if trace else 0.0


def zipf_sample(ranked: list[str], exponent: float, count: int, seed: int) -> list[str]:
    """``count`` names drawn with a fixed ``seed`` from ``ranked`` (most
    popular first) with P(rank k) proportional to 1/k**exponent.  Draws with
    different seeds from one ``ranked`` list share the same popular names."""
    cumulative = list(itertools.accumulate(
        1.0 / rank ** exponent for rank in range(1, len(ranked) + 1)))
    return random.Random(seed).choices(ranked, cum_weights=cumulative, k=count)
