"""
The control channel's AMP commands: the contract between a control plane
and its workers (``docs/control-protocol.md`` describes it for people).

AMP ignores box keys it does not know, so an argument added later must be
optional and both sides keep working; a change that cannot be made that
way gets a new command name.  What a worker can do is announced in
``Register.capabilities`` (:data:`CAPABILITIES`).
"""
from __future__ import annotations

import json

from twisted.internet import defer, error
from twisted.protocols import amp
from twisted.python.failure import Failure

from dnsgo.invalidation.flush import Flush


#: What a worker built from this module can do, sent with Register.
CAPABILITIES = ("heartbeat", "clear-cache", "reload-config", "shutdown", "invalidate", "cache-tools", "witness")


class BigUnicode(amp.Argument):
    """
    A text argument of any length.  An AMP value holds at most 65,535 bytes,
    so the UTF-8 bytes are split over keys ``NAME.0``, ``NAME.1``, ... and
    ``NAME`` holds how many there are.  ``BigUnicode(optional=True)`` may be
    left out (None).
    """

    def toBox(self, name, strings, objects, proto):
        """Write the text as its count of chunks and the chunks."""
        key = _python_name(name)
        if self.optional and objects.get(key) is None:
            objects.pop(key, None)
            return
        data = objects.pop(key).encode("utf-8")
        step = amp.MAX_VALUE_LENGTH
        chunks = [data[start:start + step] for start in range(0, len(data), step)] or [b""]
        strings[name] = str(len(chunks)).encode("ascii")
        for index, chunk in enumerate(chunks):
            strings[_chunk_key(name, index)] = chunk

    def fromBox(self, name, strings, objects, proto):
        """Read the chunks back and join them into the text."""
        if self.optional and name not in strings:
            objects[_python_name(name)] = None
            return
        count = int(strings.pop(name))
        chunks = [strings.pop(_chunk_key(name, index)) for index in range(count)]
        objects[_python_name(name)] = b"".join(chunks).decode("utf-8")


class FlushArgument(amp.Argument):
    """
    A :class:`~dnsgo.invalidation.flush.Flush`, carried as the JSON object of
    the invalidation message format (``docs/invalidation.md``): the one value
    a flush is from the API to the caches.  A value that is not a valid
    flush fails the command on the receiving side (an error answer).
    """

    def toString(self, flush: Flush) -> bytes:
        """The flush's JSON."""
        return json.dumps(flush.to_json(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def fromString(self, data: bytes) -> Flush:
        """The flush the JSON holds; InvalidRequest if it holds none."""
        try:
            return Flush.from_json(json.loads(data))
        except (ValueError, RecursionError) as e:
            raise InvalidRequest(f"not a flush: {e}"[:200]) from None


def _python_name(name: bytes) -> str:
    """The keyword a responder gets for wire argument ``name``."""
    return name.decode("ascii").replace("-", "_")


def _chunk_key(name: bytes, index: int) -> bytes:
    """The box key of chunk ``index`` of argument ``name``."""
    return name + b"." + str(index).encode("ascii")


# --------------------------------------------------------------------------
# Errors a responder may send back (any other exception closes the connection)


class InvalidRequest(Exception):
    """The arguments make no sense (an empty worker id, an unknown cache)."""


class NotRegistered(Exception):
    """A worker sent a command that needs a registration it does not have."""


class HandlerFailed(Exception):
    """The code that carries the command out failed; the text says why."""


_ERRORS = {InvalidRequest: b"INVALID", HandlerFailed: b"FAILED"}


class StaleTerm(Exception):
    """
    High availability (``docs/ha.md``): the command's term is older than the
    newest the receiver has seen, or it carries none once a term exists,
    so the sender is not the leader (any more).
    """


#: The errors of a command that carries a control plane's term.
_FENCED_ERRORS = {StaleTerm: b"STALE_TERM", **_ERRORS}


# --------------------------------------------------------------------------
# Worker -> control plane


class Register(amp.Command):
    """
    A worker introduces itself (first thing on every connection) and gets
    the configuration to run with and how often to send heartbeats.
    A worker id already registered is taken over by the new connection.
    """

    arguments = [
        (b"worker_id", amp.Unicode()),
        (b"cluster_name", amp.Unicode()),
        (b"dns_address", amp.Unicode()),
        (b"version", amp.Unicode()),
        (b"capabilities", amp.ListOf(amp.Unicode())),
        (b"ha", BigUnicode(optional=True)),  # the witness's report (JSON), docs/ha.md
    ]
    response = [
        (b"config", BigUnicode()),  # YAML text
        (b"heartbeat_interval", amp.Float()),  # seconds
        (b"node_id", amp.Unicode(optional=True)),  # the control plane's HA name
    ]
    errors = _ERRORS


class Heartbeat(amp.Command):
    """
    A registered worker is alive; ``snapshot`` is its stats snapshot as
    JSON, ``ha`` (optional) its witness's report as JSON (``docs/ha.md``).
    """

    arguments = [(b"snapshot", BigUnicode()), (b"ha", BigUnicode(optional=True))]
    response = []
    errors = {NotRegistered: b"NOT_REGISTERED", **_ERRORS}


class Invalidate(amp.Command):
    """
    A registered worker asks the control plane to relay a cache flush to
    every other worker (the ``broadcast`` invalidation strategy).  Answered
    once all of them answered or timed out.  ``term`` (optional): the
    newest term the worker has seen; a control plane that is not the
    leader of at least that term refuses with STALE_TERM.
    """

    arguments = [(b"flush", FlushArgument()), (b"term", amp.Integer(optional=True))]
    response = [
        (b"workers", amp.Integer()),  # workers the flush was sent to
        (b"failed", amp.Integer()),  # of which did not confirm it
    ]
    errors = {NotRegistered: b"NOT_REGISTERED", **_FENCED_ERRORS}


# --------------------------------------------------------------------------
# Control plane -> worker


class ClearCache(amp.Command):
    """
    Apply ``flush`` to the worker's own caches.  ``relayed`` is true when the
    flush is another worker's, relayed by the control plane for the
    ``broadcast`` strategy (the worker's invalidator receives it and counts
    it), false for a clear asked through the management API.  Answers how
    many entries went and from which caches.  ``term`` (optional): the
    sending leader's term (``docs/ha.md``); refused with STALE_TERM when
    the worker has seen a newer one.
    """

    arguments = [
        (b"flush", FlushArgument()),
        (b"relayed", amp.Boolean(optional=True)),
        (b"term", amp.Integer(optional=True)),
    ]
    response = [
        (b"cleared", amp.Integer()),
        (b"caches", amp.ListOf(amp.Unicode())),
    ]
    errors = _FENCED_ERRORS


class InspectCache(amp.Command):
    """
    What the worker's L1 and L2 hold for ``name`` (dotted text), of
    ``type`` (a mnemonic, or '' for every type): the JSON object of one
    worker in ``GET /api/cache/entries`` (its ``l1``, ``l2`` and ``truncated``).
    """

    arguments = [(b"name", amp.Unicode()), (b"type", amp.Unicode())]
    response = [(b"entries", BigUnicode())]
    errors = _ERRORS


class DumpCache(amp.Command):
    """
    The cache-dump lines (``docs/cache-dump.md``, no header or end line) of
    segment ``shard`` of the worker's L2, and how many segments there are:
    a dump is read one segment per command, so no answer holds a whole cache.
    """

    arguments = [(b"shard", amp.Integer())]
    response = [(b"lines", BigUnicode()), (b"shards", amp.Integer())]
    errors = _ERRORS


class LoadCache(amp.Command):
    """
    Load cache-dump entry lines (no header or end line; checked by the
    sender and again here) into the worker's L2; answers how many went in
    and how many had expired.
    """

    arguments = [(b"lines", BigUnicode())]
    response = [(b"loaded", amp.Integer()), (b"expired", amp.Integer())]
    errors = _ERRORS


class ReloadConfig(amp.Command):
    """
    Run with this configuration (YAML text) from now on; ``applied`` says
    whether it was.  ``term`` (optional) as in ClearCache.
    """

    arguments = [(b"config", BigUnicode()), (b"term", amp.Integer(optional=True))]
    response = [(b"applied", amp.Boolean())]
    errors = _FENCED_ERRORS


class Shutdown(amp.Command):
    """Stop the worker process; answered before the worker stops.  ``term`` (optional) as in ClearCache."""

    arguments = [(b"term", amp.Integer(optional=True))]
    response = []
    errors = _FENCED_ERRORS


# --------------------------------------------------------------------------
# Control plane -> worker: high availability (docs/ha.md)

#: The answer of PreVote, RequestVote and Renew (dnsgo.control.witness.WitnessAnswer).
WITNESS_ANSWER = [
    (b"granted", amp.Boolean()),
    (b"term", amp.Integer()),  # the worker's newest term, after the request
    (b"holder", amp.Unicode()),  # the control plane it promised an unexpired lease to ('' none)
    (b"remaining", amp.Float()),  # seconds that promise still runs
    (b"reason", amp.Unicode()),  # why not, when not granted
]


class PreVote(amp.Command):
    """
    Would the worker vote for ``candidate`` in ``term``?  Asked before a
    candidate raises its term, so that a candidate that cannot win does not
    disturb the leader; changes nothing on the worker.
    """

    arguments = [(b"term", amp.Integer()), (b"candidate", amp.Unicode())]
    response = WITNESS_ANSWER
    errors = _ERRORS


class RequestVote(amp.Command):
    """
    Vote for ``candidate`` in ``term``.  The worker saves its vote before it
    answers; it votes once per term, and not while it has promised an
    unexpired lease to another control plane.
    """

    arguments = [(b"term", amp.Integer()), (b"candidate", amp.Unicode())]
    response = WITNESS_ANSWER
    errors = _ERRORS


class Renew(amp.Command):
    """
    The leader of ``term`` renews its lease: the worker promises not to vote
    for another control plane for ``lease`` seconds from its answer (saved
    before it answers).  ``leader_api`` is the leader's API address,
    ``voters`` the JSON list of ``[worker id, site]`` of its electorate.
    """

    arguments = [
        (b"term", amp.Integer()),
        (b"leader", amp.Unicode()),
        (b"lease", amp.Float()),
        (b"leader_api", amp.Unicode()),
        (b"voters", BigUnicode()),
    ]
    response = WITNESS_ANSWER
    errors = _ERRORS


# --------------------------------------------------------------------------
# Calling a command with a deadline


class CommandTimeout(Exception):
    """The peer did not answer a command in time."""


def call(protocol: amp.AMP, command: type[amp.Command], *, timeout: float, reactor, **arguments) -> defer.Deferred:
    """
    Send ``command`` over ``protocol`` and return a Deferred for the answer
    that fails with :class:`CommandTimeout` after ``timeout`` seconds.  An
    answer that arrives later is dropped.
    """
    result: defer.Deferred = defer.Deferred()
    name = command.__name__

    def expire() -> None:
        result.errback(CommandTimeout(f"no answer to {name} within {timeout:g}s"))

    timer = reactor.callLater(timeout, expire)

    def done(outcome):
        if result.called:
            return None
        if timer.active():
            timer.cancel()
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)
        return None

    defer.maybeDeferred(protocol.callRemote, command, **arguments).addBoth(done)
    return result


def describe(failure: Failure) -> str:
    """A short text for a failed command, for an API result or a log line."""
    value = failure.value
    if isinstance(value, (error.ConnectionLost, error.ConnectionDone)):
        return "connection lost"
    text = value.args[0] if getattr(value, "args", None) else ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return str(text) or type(value).__name__
