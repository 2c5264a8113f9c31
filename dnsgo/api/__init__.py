"""
The HTTP management API (Klein): cache statistics and clearing across
workers, worker and upstream state, health, readiness, OpenAPI and
Prometheus metrics.  See docs/api.md.
"""
from dnsgo.api.app import ClusterView, ManagementAPI, WorkerView
from dnsgo.api.auth import InsecureListenError, check_listen_allowed
from dnsgo.api.site import APISite

__all__ = ["APISite", "ClusterView", "InsecureListenError", "ManagementAPI", "WorkerView", "check_listen_allowed"]
