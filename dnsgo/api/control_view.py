"""
The management API's view of a control plane: the registered workers and
their heartbeat snapshots, clears sent over the control channel, and the
shared cache read from Redis.
"""
from twisted.internet import defer
from twisted.logger import Logger

from dnsgo.api.local_view import RootView
from dnsgo.invalidation.flush import Flush, flush_shared

#: The Redis key (after the key prefix) holding the newest HA term that wrote (docs/ha.md).
TERM_KEY = b"cp:term"


class ControlClusterView(RootView):
    """ClusterView over a :class:`dnsgo.app.roles.ControlRoot`."""

    log = Logger(namespace="dnsgo.api")

    def ready(self) -> bool:
        control = self._root.control
        return bool(control.running and any(w.status == "healthy" for w in self._root.registry.workers()))

    def workers(self) -> list:
        return self._root.registry.workers()

    def ha(self) -> dict:
        """The HA state (docs/ha.md): the election's status, or the default of a process without HA."""
        election = self._root.control.election
        return super().ha() if election is None else election.status()

    def architecture(self) -> dict:
        """The seed's ``architecture``; with HA also ``highAvailability`` (mode, role, term, leader, site, priority)."""
        body = super().architecture()
        election = self._root.control.election
        if election is not None:
            status = election.status()
            body["highAvailability"] = {key: status[key] for key in ("mode", "role", "term", "leader", "site", "priority")}
        return body

    def clear(self, target, worker_ids, flush: Flush) -> defer.Deferred:
        """Clear caches; with HA only the active control plane does (NotLeader at once: HTTP 503)."""
        control = self._root.control
        term = control.fenced().get("term")
        if target == "worker":
            d = control.clear_cache(list(worker_ids or []), flush)
        elif target == "all":
            d = control.clear_cache(None, flush)
        else:
            d = defer.succeed([])

        def shared(results):
            if target == "worker":
                return {"results": results, "sharedCleared": False}
            s = self._flush_shared(flush, term)
            s.addCallback(lambda cleared: {"results": results, "sharedCleared": cleared})
            return s

        d.addCallback(shared)
        return d

    def _flush_shared(self, flush: Flush, term: int | None) -> defer.Deferred:
        """
        Clear the shared cache; with HA first raise ``cp:term`` in Redis to
        this control plane's term (compare-and-set): a control plane whose
        term is older than the one stored there flushes nothing.
        """
        root = self._root
        if term is None or root.backend is None or root.shared_store is None:
            return flush_shared(root.shared_store, flush)
        key = root.config.cache.shared_cache.key_prefix.encode("utf-8") + TERM_KEY

        def check(stored: int):
            if stored != term:
                self.log.warn("shared-cache flush refused: Redis holds term {stored}, this control plane's is {term}",
                              stored=stored, term=term)
                return False
            return flush_shared(root.shared_store, flush)

        d = root.backend.raise_term(key, term)
        return d.addCallbacks(check, lambda _f: False)

    def entries(self, worker_ids, name: str, type: str | None) -> defer.Deferred:
        """Every worker's (or the listed workers') L1 and L2 for ``name``, asked over the control channel."""
        return self._root.control.inspect_cache(list(worker_ids) if worker_ids else None, name, type)

    def dump_shard(self, worker_id: str, shard: int) -> defer.Deferred:
        """The dump lines of segment ``shard`` of ``worker_id``'s L2 and the number of segments."""
        return self._root.control.dump_shard(worker_id, shard)

    def load(self, worker_ids, chunks) -> defer.Deferred:
        """
        Send the chunks of dump entry lines to the workers one chunk at a
        time; fires with each worker's summed counts (a worker that failed a
        chunk is marked failed with its error).  With HA only the active
        control plane loads (NotLeader at once: HTTP 503).
        """
        control = self._root.control
        control.fenced()
        targets = list(worker_ids) if worker_ids else None

        async def run():
            totals: dict[str, dict] = {}
            for chunk in chunks:
                for result in await control.load_cache(targets, chunk):
                    total = totals.setdefault(result["workerId"], {
                        "workerId": result["workerId"], "success": True, "loaded": 0, "expired": 0})
                    total["loaded"] += result.get("loaded", 0)
                    total["expired"] += result.get("expired", 0)
                    if not result["success"]:
                        total["success"] = False
                        total["error"] = result.get("error")
            return list(totals.values())

        return defer.ensureDeferred(run())

    def upstreams(self) -> list:
        return [
            {"workerId": w.worker_id, "upstreams": (w.snapshot or {}).get("upstreams", [])}
            for w in self._root.registry.workers()
        ]
