"""
The management API's view of a control plane: the registered workers and
their heartbeat snapshots, clears sent over the control channel, and the
shared cache read from Redis.
"""
from twisted.internet import defer

from dnsgo.api.local_view import RootView
from dnsgo.invalidation.flush import Flush, flush_shared


class ControlClusterView(RootView):
    """ClusterView over a :class:`dnsgo.app.roles.ControlRoot`."""

    def ready(self) -> bool:
        control = self._root.control
        return bool(control.running and any(w.status == "healthy" for w in self._root.registry.workers()))

    def workers(self) -> list:
        return self._root.registry.workers()

    def clear(self, target, worker_ids, flush: Flush) -> defer.Deferred:
        control = self._root.control
        if target == "worker":
            d = control.clear_cache(list(worker_ids or []), flush)
        elif target == "all":
            d = control.clear_cache(None, flush)
        else:
            d = defer.succeed([])

        def shared(results):
            if target == "worker":
                return {"results": results, "sharedCleared": False}
            s = flush_shared(self._root.shared_store, flush)
            s.addCallback(lambda cleared: {"results": results, "sharedCleared": cleared})
            return s

        d.addCallback(shared)
        return d

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
        chunk is marked failed with its error).
        """
        control = self._root.control
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
