"""The upstream servers: the pool that asks them, the L3 infrastructure cache, the RFC 9520 failure cache."""
