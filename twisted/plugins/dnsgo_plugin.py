"""Registers ``twistd dnsgo``; the work is in :mod:`dnsgo.tap`."""
from twisted.application.service import ServiceMaker

dnsgo = ServiceMaker(
    "dnsgo",
    "dnsgo.tap",
    "A caching DNS forwarder with L1/L2/L3 caches (local or Redis-shared)",
    "dnsgo",
)
