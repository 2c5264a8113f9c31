"""
HMAC-SHA256 signatures for what dnsgo puts in Redis: shared-cache values
(``docs/redis-format.md``) and invalidation messages
(``docs/invalidation.md``), when ``cache.shared_cache.signing_key`` (or
``signing_key_file``) is set.

Without a key, whoever can write to Redis can make every worker serve any
answer: Redis is inside the trust boundary.  With a key, a value or message
must carry a MAC made with it, over the bytes and over where they were
found (the key name, the channel), so a value moved to another key, or a
message replayed on another channel, fails the check.  The standard
library's ``hmac`` does the work; this module only fixes what is signed.
"""
from __future__ import annotations

import hashlib
import hmac
import struct

import attrs

#: Bytes of one MAC.
MAC_SIZE = hashlib.sha256().digest_size

_LENGTH = struct.Struct("!I")


@attrs.frozen
class Signer:
    """A signing key (never shown in ``repr``) and the MACs it makes and checks."""

    key: bytes = attrs.field(repr=False, validator=attrs.validators.min_len(1))

    def mac(self, *parts: bytes) -> bytes:
        """The HMAC-SHA256 of ``parts``, each length-prefixed so their boundaries are signed too."""
        digest = hmac.new(self.key, digestmod=hashlib.sha256)
        for part in parts:
            digest.update(_LENGTH.pack(len(part)))
            digest.update(part)
        return digest.digest()

    def verify(self, mac: bytes, *parts: bytes) -> bool:
        """Whether ``mac`` is :meth:`mac` of ``parts``, compared in constant time."""
        return hmac.compare_digest(mac, self.mac(*parts))
