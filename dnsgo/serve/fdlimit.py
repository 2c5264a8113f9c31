"""
File descriptors: the open-file limit of a serving process, and how many of
them client TCP connections may take.

Every client TCP connection holds a descriptor for as long as it is open,
and every upstream exchange needs one for its UDP socket (two when it falls
back to TCP).  Left alone, idle TCP clients can take every descriptor the
process may open, and then upstream sends fail with EMFILE ("Too many open
files") and cache misses get SERVFAIL.  So:

* at start, :func:`raise_open_file_limit` raises the soft ``RLIMIT_NOFILE``
  to the hard limit (many systems start processes at a soft 1024 with a
  much higher hard limit);
* :func:`tcp_connection_cap` keeps :func:`descriptor_reserve` descriptors
  (a quarter of the limit, at least 64) for upstream sockets, Redis, the
  listeners and the log, and lets client TCP connections have the rest at
  most, whatever ``server.tcp_max_connections`` says.
"""
import resource

from twisted.logger import Logger

log = Logger(namespace="dnsgo.serve.fdlimit")

#: "Use this process's own soft limit" (as a default argument).
PROCESS_LIMIT = object()

#: The fewest descriptors kept for everything but client TCP connections.
MIN_RESERVE = 64

#: The soft limit asked for when the hard limit is unlimited (not on Linux,
#: whose hard limit is at most fs.nr_open; macOS reports RLIM_INFINITY).
_UNLIMITED_TARGET = 1 << 20


def open_file_limit(getrlimit=resource.getrlimit) -> int | None:
    """This process's soft RLIMIT_NOFILE, or None when it is unlimited."""
    soft, _ = getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def raise_open_file_limit(getrlimit=resource.getrlimit, setrlimit=resource.setrlimit) -> tuple[int, int]:
    """
    Raise the soft RLIMIT_NOFILE of this process to its hard limit; returns
    (soft before, soft after), logging one line when it changed or could not
    be raised.  Called once at start by the serving processes' entry point.
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft == hard:
        return soft, soft
    target = _UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if target <= soft:
        return soft, soft
    try:
        setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as e:
        log.warn("cannot raise the open-file limit from {soft} to {target}: {error}",
                 soft=soft, target=target, error=e)
        return soft, soft
    log.info("open-file limit (RLIMIT_NOFILE) raised from {soft} to {target}", soft=soft, target=target)
    return soft, target


def descriptor_reserve(limit: int) -> int:
    """Descriptors kept out of reach of client TCP connections under ``limit``."""
    return max(MIN_RESERVE, limit // 4)


def tcp_connection_cap(configured: int, limit: int | None) -> int:
    """
    How many client TCP connections to allow: ``configured``
    (``server.tcp_max_connections``), but no more than the open-file
    ``limit`` less :func:`descriptor_reserve` (and at least 1).  None as
    ``limit`` means unlimited.
    """
    if limit is None:
        return configured
    return max(1, min(configured, limit - descriptor_reserve(limit)))
