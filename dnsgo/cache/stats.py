"""The counters every cache reports, in the management API's shape."""
import attrs


def hit_rate(hits: int, misses: int) -> float:
    """Hits as a percentage of lookups, 2 decimals; 0.0 before any lookup (the API's hit_rate)."""
    lookups = hits + misses
    return round(100.0 * hits / lookups, 2) if lookups else 0.0


@attrs.frozen
class CacheStats:
    """A snapshot of the L1 cache's counters, as the management API shows them."""

    hits: int
    misses: int
    evicts: int
    hit_rate: float
    size_bytes: int
    max_size_bytes: int
    num_shards: int
    entries: int
