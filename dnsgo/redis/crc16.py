"""
Redis Cluster key slots: CRC16 (the XMODEM variant: polynomial 0x1021,
initial value 0) of the key, or of its hash tag, modulo 16384.

``binascii.crc_hqx(data, 0)`` is exactly that CRC, in C.
"""
from binascii import crc_hqx

SLOTS = 16384


def hash_tag(key: bytes) -> bytes:
    """
    The part of ``key`` that decides its slot: the bytes between the first
    ``{`` and the first ``}`` after it when that is not empty, else the whole key.
    """
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def crc16(data: bytes) -> int:
    """CRC16-XMODEM of ``data``."""
    return crc_hqx(data, 0)


def key_slot(key: bytes) -> int:
    """The cluster slot (0..16383) that holds ``key``."""
    return crc_hqx(hash_tag(key), 0) & (SLOTS - 1)
