"""
RFC 9520: remember, briefly, that resolving a question failed, so a dead or
broken upstream is not asked again for every retrying client.

It sits in front of the upstreams only (inside the forwarding resolver), so
cached answers and serve-stale still win over a remembered failure.
"""


class FailureCache:
    """
    Questions whose resolution failed recently (timeouts or SERVFAIL), each
    for ``ttl`` seconds (RFC 9520: at least 1 s, at most 5 minutes).
    """

    def __init__(self, ttl: float = 5.0, *, max_entries: int = 10000, reactor) -> None:
        if not 1 <= ttl <= 300:
            raise ValueError("failure TTL must be between 1 and 300 seconds (RFC 9520)")
        self._reactor = reactor
        self._ttl = ttl
        self._max = max_entries
        self._until: dict = {}
        self.hits = 0

    def failed(self, key) -> None:
        """Remember that ``key`` just failed."""
        if len(self._until) >= self._max:
            now = self._reactor.seconds()
            self._until = {k: t for k, t in self._until.items() if t > now}
            if len(self._until) >= self._max:
                self._until.clear()
        self._until[key] = self._reactor.seconds() + self._ttl

    def recent(self, key) -> bool:
        """True while ``key`` failed less than ``ttl`` seconds ago."""
        until = self._until.get(key)
        if until is None:
            return False
        if until <= self._reactor.seconds():
            del self._until[key]
            return False
        self.hits += 1
        return True

    def clear(self) -> None:
        """Forget every failure (a flush, or an upstream change)."""
        self._until.clear()
