"""
Random 16-bit query IDs for upstream transmissions (RFC 5452 §9.2).

``secrets.randbits(16)`` is one ``getrandom`` system call per ID, a few
microseconds on the miss path.  :class:`QueryIds` draws the same kernel
randomness (``os.urandom``) 8 KiB at a time and hands it out two bytes per
ID, so an ID costs an index into an array.  The IDs are as unpredictable as
before: every one comes from the kernel's CSPRNG, none is ever reused, and
the buffer lives only in this process (a forked child drops what it
inherited and draws its own).
"""
from __future__ import annotations

import os
import weakref
from array import array

#: Bytes of kernel randomness fetched at once (4,096 IDs).
CHUNK = 8192


class QueryIds:
    """A source of random 16-bit IDs, refilled from ``os.urandom`` in chunks."""

    __slots__ = ("_ids", "_next", "__weakref__")

    def __init__(self) -> None:
        self._ids = array("H")
        self._next = 0
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (ids := ref()) is not None and ids._drop())

    def _drop(self) -> None:
        """Forget the IDs drawn so far (a forked child must not repeat its parent's)."""
        self._ids = array("H")
        self._next = 0

    def __call__(self) -> int:
        """The next random ID, 0 to 65535."""
        at = self._next
        if at >= len(self._ids):
            self._ids = array("H", os.urandom(CHUNK))
            at = 0
        self._next = at + 1
        return self._ids[at]
