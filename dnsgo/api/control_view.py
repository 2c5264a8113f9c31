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

    def upstreams(self) -> list:
        return [
            {"workerId": w.worker_id, "upstreams": (w.snapshot or {}).get("upstreams", [])}
            for w in self._root.registry.workers()
        ]
