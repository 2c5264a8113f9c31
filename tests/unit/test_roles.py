"""Unit tests of the role builders: the worker's configuration merge and its broadcast hook."""
from twisted.internet import defer, task
from twisted.trial import unittest

from dnsgo.app.assemble import Caches
from dnsgo.cache.message import MessageCache
from dnsgo.cache.rrset import RRsetCache
from dnsgo.config import parse_config
from dnsgo.invalidation.flush import Flush
from dnsgo.invalidation.strategies import BroadcastInvalidator
from dnsgo.app.roles import WorkerRoot, merge_worker_config

CONTROL_TEXT = (
    'server:\n  listen_address: "127.0.0.1:5300"\n  num_workers: 4\n'
    'upstreams: ["192.0.2.53"]\ncache:\n  message_cache:\n    max_size_mb: 8\n'
)


class MergeTests(unittest.SynchronousTestCase):
    """merge_worker_config: the control plane's settings, the worker's own server section."""

    def test_control_settings_with_one_process(self):
        """Without a local file the control plane's server section is used, with num_workers forced to 1."""
        config = merge_worker_config(CONTROL_TEXT, None, {}, worker_id="w-7")
        self.assertEqual(config.server.num_workers, 1)
        self.assertEqual(str(config.server.listen_address), "127.0.0.1:5300")
        self.assertEqual(config.server.worker_id, "w-7")
        self.assertEqual(config.cache.message_cache.max_size_mb, 8)
        self.assertEqual(str(config.upstreams[0]), "192.0.2.53:53")

    def test_local_server_section_wins(self):
        """A local file's server section (listen address, identity) replaces the control plane's."""
        local = parse_config('server:\n  listen_address: "127.0.0.1:5411"\n  cluster_name: site-b\n', "<local>", {})
        config = merge_worker_config(CONTROL_TEXT, local, {"SITE_ID": "ignored"})
        self.assertEqual(str(config.server.listen_address), "127.0.0.1:5411")
        self.assertEqual(config.server.cluster_name, "site-b")
        self.assertEqual(config.cache.message_cache.max_size_mb, 8)

    def test_site_id_from_environment(self):
        """Without a configured cluster name, $SITE_ID names the worker's site."""
        config = merge_worker_config(CONTROL_TEXT, None, {"SITE_ID": "site-a"})
        self.assertEqual(config.server.cluster_name, "site-a")


class BroadcastTests(unittest.SynchronousTestCase):
    """A worker's broadcast hook hands flushes to the control client."""

    def test_flush_goes_to_the_control_plane(self):
        """Strategy broadcast: the flush itself becomes the control plane's Invalidate."""
        sent = []

        class Client:
            def invalidate(self, flush):
                sent.append(flush)
                return defer.succeed({"workers": 2, "failed": 0})

        root = WorkerRoot(None, {}, worker_id="w", cluster_name="", reactor=task.Clock())
        root.client = Client()
        self.successResultOf(root.broadcast(Flush("Example.COM", "AAAA", subtree=True)))
        self.successResultOf(root.broadcast(Flush.everything(caches="message")))
        self.assertEqual(sent, [Flush("example.com.", 28, True), Flush.everything(caches="message")])

    def test_relayed_flush_is_received_by_the_invalidator(self):
        """
        A ClearCache relayed from another worker goes through the broadcast
        invalidator's receiving side (its counters move); one from the API
        is applied without counting as received.
        """
        caches = make_caches(task.Clock())
        invalidator = BroadcastInvalidator(caches, send=lambda flush: defer.succeed(None))

        class Server:
            def __init__(self):
                self.invalidator = invalidator
                self.caches = caches

        root = WorkerRoot(None, {}, worker_id="w", cluster_name="", reactor=task.Clock())
        root.server = Server()
        self.assertEqual(root.clear(Flush("www.example.com", "A"), True), {"cleared": 0, "caches": ["message", "rrset"]})
        self.assertEqual((invalidator.stats().received_batches, invalidator.stats().applied_flushes), (1, 1))
        self.assertEqual(root.clear(Flush("example.org"), False), {"cleared": 0, "caches": ["message", "rrset"]})
        self.assertEqual(invalidator.stats().received_batches, 1)


def make_caches(clock):
    """Empty L1 and L2 caches of a small size."""
    return Caches(MessageCache(max_size_mb=1, num_shards=1, reactor=clock), RRsetCache(max_size_mb=1, num_shards=1, reactor=clock), 0)
