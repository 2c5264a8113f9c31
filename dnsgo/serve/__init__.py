"""Serving DNS: the UDP and TCP listeners, the query handler (the L1 fast path), the ACL, reply building."""
