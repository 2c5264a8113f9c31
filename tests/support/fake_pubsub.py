"""
An in-memory stand-in for the pub/sub half of a RedisBackend, for unit tests.

A :class:`FakeBroker` is the Redis server: it delivers each published
message, synchronously, to every live subscription of its channel (the
publisher's own included, as Redis does).  Each :class:`FakePubSubBackend`
is one worker's connection to it; a test can cut a subscription off
(:meth:`FakeSubscription.lose`: messages are missed) and bring it back
(:meth:`FakeSubscription.restore`: ``on_reconnect`` is called), or make
publishing fail.
"""
from twisted.internet import defer

from dnsgo.redis.backend import RedisUnavailable


class FakeBroker:
    """The in-memory pub/sub server: channels and their subscriptions."""

    def __init__(self) -> None:
        self.subscriptions: list["FakeSubscription"] = []
        #: Every message published, as (channel, message), in order.
        self.published: list[tuple[bytes, bytes]] = []

    def deliver(self, channel: bytes, message: bytes) -> int:
        """Record and deliver a message; return how many subscriptions got it."""
        self.published.append((channel, message))
        receivers = [s for s in self.subscriptions if s.channel == channel and s.live]
        for s in receivers:
            s.on_message(message)
        return len(receivers)

    def messages(self, channel: bytes) -> list[bytes]:
        """The messages published on ``channel`` so far."""
        return [m for c, m in self.published if c == channel]


class FakeSubscription:
    """One subscription; ``live`` while it would receive messages."""

    def __init__(self, broker: FakeBroker, channel: bytes, on_message, on_reconnect) -> None:
        self.broker = broker
        self.channel = channel
        self.on_message = on_message
        self.on_reconnect = on_reconnect
        self.live = True
        self.stopped = False

    def lose(self) -> None:
        """The connection dropped: messages published from now on are missed."""
        self.live = False

    def restore(self) -> None:
        """Subscribed again after a loss: tell the owner, as a real backend does."""
        self.live = True
        self.on_reconnect()

    def stop(self) -> defer.Deferred:
        """Unsubscribe for good."""
        self.live = False
        self.stopped = True
        self.broker.subscriptions.remove(self)
        return defer.succeed(None)


class FakePubSubBackend:
    """One worker's connection to a :class:`FakeBroker` (publish and subscribe only)."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.fail_publish = False
        self.publish_attempts = 0

    def publish(self, channel: bytes, message: bytes) -> defer.Deferred:
        """Deliver at once, or fail with RedisUnavailable while ``fail_publish`` is set."""
        self.publish_attempts += 1
        if self.fail_publish:
            return defer.fail(RedisUnavailable("fake: publishing is failing"))
        return defer.succeed(self.broker.deliver(channel, message))

    def subscribe(self, channel: bytes, on_message, on_reconnect) -> FakeSubscription:
        """Subscribe to ``channel`` on the broker."""
        subscription = FakeSubscription(self.broker, channel, on_message, on_reconnect)
        self.broker.subscriptions.append(subscription)
        return subscription
