"""DNS on the wire: message bytes, names, the table of record types and cache kinds."""
