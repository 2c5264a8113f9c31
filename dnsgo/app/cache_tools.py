"""
Inspection, dump and load of one serving process's caches: what the
management API (standalone) and the control channel (InspectCache,
DumpCache, LoadCache, on a worker) call.
"""
from __future__ import annotations

from dnsgo.cache import dump, inspect
from dnsgo.dns.names import parse_name
from dnsgo.dns.types import parse_qtype


def parse_lookup(name: str, type: str | None) -> tuple[bytes, int | None]:
    """A name and optional type as a person gives them, as dotted bytes and a type code; ValueError saying why."""
    return parse_name(name), (parse_qtype(type) if type else None)


class CacheTools:
    """
    The cache tools of one serving process (its ``caches`` and worker id):
    its part of ``GET /api/cache/entries``, its L2 one segment at a time
    for a dump, and loading a dump's entries.
    """

    def __init__(self, caches, worker_id: str, *, reactor) -> None:
        self._caches = caches
        self._worker_id = worker_id
        self._reactor = reactor

    def inspect(self, name: str, type: str | None) -> dict:
        """What L1 and L2 hold for ``name`` (of ``type``, or any): ``{l1, l2, truncated}``; ValueError for a bad name or type."""
        dotted, qtype = parse_lookup(name, type)
        caches = self._caches
        l1, cut1 = inspect.l1_entries(caches.messages, dotted, qtype)
        l2, cut2 = inspect.l2_entries(caches.rrsets, dotted, qtype, now=self._reactor.seconds())
        return {"l1": l1, "l2": l2, "truncated": cut1 or cut2}

    def dump_shard(self, index: int) -> tuple[list[str], int]:
        """The dump lines of L2 segment ``index`` and the number of segments; ValueError for an index out of range."""
        rrsets = self._caches.rrsets
        if rrsets is None:
            return [], 0
        if not 0 <= index < rrsets.num_shards:
            raise ValueError(f"no segment {index}: there are {rrsets.num_shards}")
        return dump.shard_lines(rrsets, index), rrsets.num_shards

    def dump_lines(self):
        """Every line of a dump of this process's L2 (header to end line)."""
        rrsets = self._caches.rrsets
        return dump.dump_lines(rrsets, worker=self._worker_id, now=self._reactor.seconds())

    def load(self, text: str) -> dump.LoadResult:
        """Load dump entry lines (no header or end line) into L2; ValueError (DumpError) for a bad line."""
        return self.load_entries(dump.read_entry_lines(text.splitlines()))

    def load_entries(self, entries) -> dump.LoadResult:
        """Load entries already read into L2, skipping the expired."""
        rrsets = self._caches.rrsets
        if rrsets is None:
            return dump.LoadResult(0, len(entries))
        return dump.load(rrsets, entries, now=self._reactor.seconds())
