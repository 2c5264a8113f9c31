"""Who a serving process is: its worker id, cluster, address and start time."""
import os
import time

import attrs


@attrs.frozen
class Identity:
    """Who this worker is, for the snapshot."""

    worker_id: str
    cluster_name: str
    address: str
    started_at: float


def default_worker_id() -> str:
    """A worker id when none is configured: host name and pid."""
    return f"{os.uname().nodename}-{os.getpid()}"


def now_wall() -> float:
    """Wall-clock seconds (for identities)."""
    return time.time()
