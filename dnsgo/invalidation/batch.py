"""
The pub/sub invalidation message format, version 1 (``docs/invalidation.md``):
a :class:`Batch` of flushes as compact JSON, and with a signing key the
``hmac-sha256:`` envelope over it.
"""
from __future__ import annotations

import json
import math

import attrs

from dnsgo.cache.signing import MAC_SIZE, Signer
from dnsgo.invalidation.flush import Flush

#: The version of the pub/sub message format this code writes and reads.
FORMAT_VERSION = 1

#: Messages longer than this are ignored unread.
MAX_MESSAGE_BYTES = 1 << 20

#: What a signed message starts with: this, the MAC in hex, then ":" and the JSON.
SIGNED_PREFIX = b"hmac-sha256:"
_SIGNED_HEAD = len(SIGNED_PREFIX) + 2 * MAC_SIZE + 1

#: A signed message whose ``sent_at`` is further than this from the
#: receiver's clock (seconds, either way) is a replay and is ignored.
MAX_SIGNED_AGE = 300.0

# -- the pub/sub message format ------------------------------------------------


class BadMessage(ValueError):
    """A pub/sub message that cannot be applied: malformed, or of a version this code does not know."""


class BadSignature(BadMessage):
    """A pub/sub message without a valid signature (or a replay of an old one) while a signing key is set."""


@attrs.frozen
class Batch:
    """
    One pub/sub message: the flushes, who sent them (``origin``), the
    sender's sequence number and when it sent them (seconds since the
    epoch).  ``origin``, ``seq`` and ``sent_at`` are None when a message
    left them out (one published by hand).
    """

    flushes: tuple[Flush, ...]
    origin: str | None = None
    seq: int | None = None
    sent_at: float | None = None


def sign_message(payload: bytes, channel: bytes, signer: Signer) -> bytes:
    """``payload`` (a message's JSON) signed for ``channel``: :data:`SIGNED_PREFIX`, the MAC in hex, ``:``, the JSON."""
    return SIGNED_PREFIX + signer.mac(channel, payload).hex().encode("ascii") + b":" + payload


def open_message(data: bytes, channel: bytes, signer: Signer | None) -> bytes:
    """
    The JSON of a message received on ``channel``.  With a ``signer`` it
    must be signed for that channel (else :class:`BadSignature`); without
    one, a signature is skipped unchecked (Redis is trusted).
    """
    signed = data.startswith(SIGNED_PREFIX) and len(data) >= _SIGNED_HEAD and data[_SIGNED_HEAD - 1 : _SIGNED_HEAD] == b":"
    if signer is None:
        return data[_SIGNED_HEAD:] if signed else data
    if not signed:
        raise BadSignature("message is not signed")
    try:
        mac = bytes.fromhex(data[len(SIGNED_PREFIX) : _SIGNED_HEAD - 1].decode("ascii"))
    except ValueError:
        raise BadSignature("signature is not hex") from None
    payload = data[_SIGNED_HEAD:]
    if not signer.verify(mac, channel, payload):
        raise BadSignature("signature does not match")
    return payload


def encode_batch(batch: Batch) -> bytes:
    """The message of ``batch`` (format version :data:`FORMAT_VERSION`, compact JSON in UTF-8)."""
    obj = {"v": FORMAT_VERSION}
    if batch.origin is not None:
        obj["origin"] = batch.origin
    if batch.seq is not None:
        obj["seq"] = batch.seq
    if batch.sent_at is not None:
        obj["sent_at"] = round(batch.sent_at, 3)
    obj["flushes"] = [f.to_json() for f in batch.flushes]
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode_batch(data: bytes) -> Batch:
    """
    The batch a message holds.  Raises :class:`BadMessage` for anything
    that is not a version-1 message exactly as documented (keys the
    document does not name are allowed and skipped).
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise BadMessage(f"message of {len(data)} bytes is over the {MAX_MESSAGE_BYTES} byte limit")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise BadMessage(f"not JSON: {e}"[:200]) from None
    if not isinstance(obj, dict):
        raise BadMessage("not a JSON object")
    version = obj.get("v")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise BadMessage(f"unknown format version {version!r}")
    origin = obj.get("origin")
    if origin is not None and not isinstance(origin, str):
        raise BadMessage("origin must be a string")
    seq = obj.get("seq")
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
        raise BadMessage("seq must be an integer")
    sent_at = obj.get("sent_at")
    if sent_at is not None and (
        not isinstance(sent_at, (int, float)) or isinstance(sent_at, bool) or not math.isfinite(sent_at)
    ):
        raise BadMessage("sent_at must be a number")
    entries = obj.get("flushes")
    if not isinstance(entries, list):
        raise BadMessage("flushes must be a list")
    flushes = []
    for index, entry in enumerate(entries):
        try:
            flushes.append(Flush.from_json(entry))
        except ValueError as e:
            raise BadMessage(f"flushes[{index}]: {e}") from None
    return Batch(tuple(flushes), origin, seq, None if sent_at is None else float(sent_at))
