"""
A lossy authoritative server for the tests: the dnspython authority of
tests/support/authority.py behind a deterministic imitation of
response-rate-limiting (nsd's RRL with ``rrl-slip: 2`` drops some replies and
answers others with TC=1, which sends the client to TCP).

Over UDP, the n-th query to arrive (counting from 1, over every client) is

* dropped when ``n % drop_every == 0`` (by default every second query);
* otherwise answered with an empty TC=1 reply when
  ``n % truncate_every == 1`` (by default every fourth query: 1, 5, 9, ...),
  so the client must ask again over TCP;
* otherwise answered from the zone.

With ``first_try=True`` the loss is per question instead: the first UDP
query for each question (name and type) is dropped, every later one
answered (truncated as above), so a client that retransmits once always
gets through, however concurrent queries interleave; arrival order alone
can drop both tries of one question when other queries come between them.

TCP is never limited, as with RRL.  ``silent`` (inherited) still drops
everything.  The counters say what happened, so a test can check that the
loss it relies on really took place.
"""
import dns.flags
import dns.message

from tests.support.authority import Authority


class LossyAuthority(Authority):
    """The test zone, losing and truncating UDP replies by arrival order (see the module docstring)."""

    def __init__(self, zone=None, *, drop_every: int = 2, truncate_every: int = 4, first_try: bool = False) -> None:
        super().__init__(zone)
        self.first_try = first_try
        self._seen: set = set()
        if drop_every < 2 or truncate_every < 2:
            raise ValueError("drop_every and truncate_every must be at least 2")
        self.drop_every = drop_every
        self.truncate_every = truncate_every
        self.udp_queries = 0
        self.dropped = 0
        self.truncated = 0
        self.tcp_queries = 0

    def answer(self, data: bytes, limit: int | None) -> bytes | None:
        """The reply to ``data``: over UDP (``limit`` None) maybe none, or an empty TC=1 one."""
        if limit is not None:
            self.tcp_queries += 1
            return super().answer(data, limit)
        self.udp_queries += 1
        n = self.udp_queries
        if self.first_try:
            try:
                q = dns.message.from_wire(data).question[0]
                question = (q.name.to_text().lower(), q.rdtype)
            except Exception:
                question = data[2:]
            drop = question not in self._seen
            self._seen.add(question)
        else:
            drop = n % self.drop_every == 0
        if drop:
            self.dropped += 1
            super().answer(data, limit)  # counted in queries like any other
            return None
        if n % self.truncate_every == 1:
            reply = super().answer(data, limit)
            if reply is None:
                return None
            self.truncated += 1
            return truncated(reply)
        return super().answer(data, limit)


def truncated(reply: bytes) -> bytes:
    """``reply`` cut to its header and question, with TC=1 (what RRL's slip sends)."""
    message = dns.message.from_wire(reply)
    message.answer = []
    message.authority = []
    message.additional = []
    message.flags |= dns.flags.TC
    return message.to_wire()
