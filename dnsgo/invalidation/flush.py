"""
The :class:`Flush` value (what a cache clear drops: everything, a name, a
name and type, or a subtree, in L1, L2 or both) and how one is applied to
this process's caches and to the shared store.  A Flush is what travels
from the API through the control plane to the workers and their caches.
"""
from __future__ import annotations

from typing import Iterable

import attrs
from twisted.internet import defer

from dnsgo.dns import wire
from dnsgo.dns.names import wire_to_dotted
from dnsgo.dns.types import CACHE_KINDS, MESSAGE, RRSET, parse_cache_kinds, parse_qtype, qtype_text


def _canonical_name(name: str | None) -> str | None:
    """A name in its canonical text form: lowercase, absolute (``"example.com."``), escapes kept."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise ValueError(f"a name must be text, not {name!r}")
    return wire.name_to_text(wire.text_to_name(name).lower())


def _optional_qtype(value: str | int | None) -> int | None:
    return None if value is None else parse_qtype(value)


def _check_subtree(instance, attribute, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"subtree must be true or false, not {value!r}")


@attrs.frozen
class Flush:
    """
    What to drop from the caches.

    ``name`` is a presentation-form name (stored canonical: lowercase, with
    the final dot; ``"."`` is the root), or None for every name; ``qtype``
    limits the flush to one type (a code; a mnemonic is accepted and
    converted), or None for every type; with ``subtree``, the names below
    ``name`` go too.  ``caches`` are the kinds it applies to (``"message"``,
    ``"rrset"``; ``"all"`` is accepted).  Invalid values raise ValueError.
    """

    name: str | None = attrs.field(default=None, converter=_canonical_name)
    qtype: int | None = attrs.field(default=None, converter=_optional_qtype)
    subtree: bool = attrs.field(default=False, validator=_check_subtree)
    caches: frozenset[str] = attrs.field(default=CACHE_KINDS, converter=parse_cache_kinds)

    @classmethod
    def everything(cls, caches: str | Iterable[str] = CACHE_KINDS) -> "Flush":
        """A flush of every entry (of both caches unless ``caches`` says otherwise)."""
        return cls(caches=caches)

    @property
    def is_everything(self) -> bool:
        """Whether this drops every entry of its caches."""
        return self.qtype is None and (self.name is None or (self.subtree and self.name == "."))

    def wire_name(self) -> bytes | None:
        """The name in wire format, as the L1 message cache takes it."""
        return None if self.name is None else wire.text_to_name(self.name)

    def dotted_name(self) -> bytes | None:
        """The name as dotted bytes without the final dot (``b"example.com"``, the root ``b""``), as L2 takes it."""
        return None if self.name is None else wire_to_dotted(self.wire_name())

    def to_json(self) -> dict:
        """This flush as an entry of a message's ``flushes`` list."""
        return {
            "name": self.name,
            "type": None if self.qtype is None else qtype_text(self.qtype),
            "subtree": self.subtree,
            "caches": sorted(self.caches),
        }

    @classmethod
    def from_json(cls, obj) -> "Flush":
        """
        The flush an entry of a message's ``flushes`` list (or an API body)
        describes; ``type``, ``subtree`` and ``caches`` may be left out
        (every type, no subtree, both caches) but ``name`` must be there
        (null for every name).  Raises ValueError when it is malformed.
        """
        if not isinstance(obj, dict):
            raise ValueError("a flush must be an object")
        if "name" not in obj:
            raise ValueError("a flush needs a name (null for every name)")
        caches = obj.get("caches", sorted(CACHE_KINDS))
        if isinstance(caches, str) or not isinstance(caches, list) or not all(isinstance(c, str) for c in caches):
            raise ValueError("caches must be a list of cache kinds")
        try:
            return cls(obj["name"], obj.get("type"), obj.get("subtree", False), caches)
        except (TypeError, ValueError) as e:
            raise ValueError(str(e)) from None


def apply_locally(flush: Flush, caches) -> int:
    """
    Drop what ``flush`` names from this process's caches and return how
    many entries went: ``caches.messages`` (L1, which takes wire-format
    names) for ``"message"``, ``caches.rrsets`` (the local L2, which takes
    dotted names) for ``"rrset"``; either may be None (absent).  Any flush
    also forgets the remembered upstream failures (``caches.failures``, a
    :class:`~dnsgo.upstream.failures.FailureCache`, when there is one), so the
    next query for a flushed name goes upstream; they are not counted.
    """
    removed = 0
    if flush.name is None:
        wire_name = dotted = None
    else:
        wire_name = flush.wire_name()
        dotted = wire_to_dotted(wire_name)
    messages = getattr(caches, "messages", None)
    if MESSAGE in flush.caches and messages is not None:
        removed += messages.flush(wire_name, flush.qtype, flush.subtree)
    rrsets = getattr(caches, "rrsets", None)
    if RRSET in flush.caches and rrsets is not None:
        removed += rrsets.flush(dotted, flush.qtype, flush.subtree)
    failures = getattr(caches, "failures", None)
    if failures is not None:
        failures.clear()
    return removed



def flush_shared(store, flush: Flush) -> defer.Deferred:
    """
    Clear what ``flush`` names from the shared store (None: there is none);
    fires with True when it was cleared, False otherwise (never fails), for
    the API's ``sharedCleared``.
    """
    if store is None or RRSET not in flush.caches:
        return defer.succeed(False)
    d = store.flush(flush.dotted_name(), flush.qtype, flush.subtree)
    d.addCallbacks(lambda _: True, lambda _f: False)
    return d

def apply_batch_locally(flushes: Iterable[Flush], caches) -> int:
    """
    Apply several flushes (a received batch) to this process's caches;
    return the entries dropped.  The L1 part is one scan for the whole batch
    (a flush by name has to look at every L1 entry).
    """
    flushes = list(flushes)
    messages = getattr(caches, "messages", None)
    removed = 0
    if messages is not None:
        removed += messages.flush_many(
            [(f.wire_name(), f.qtype, f.subtree) for f in flushes if MESSAGE in f.caches]
        )
    l2_only = [attrs.evolve(f, caches=frozenset({RRSET})) for f in flushes if RRSET in f.caches]
    return removed + sum(apply_locally(flush, caches) for flush in l2_only)
