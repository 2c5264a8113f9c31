"""The ``logging`` section's observer."""
import io
import json

from twisted.logger import Logger, LogPublisher
from twisted.trial import unittest

from dnsgo.config import LoggingConfig
from dnsgo.app.logs import make_observer


class ObserverTests(unittest.SynchronousTestCase):
    """make_observer: level, format, and Twisted's per-socket noise."""

    def emit(self, level="info", fmt="text"):
        out = io.StringIO()
        log = Logger(namespace="t", observer=LogPublisher(make_observer(LoggingConfig(level=level, format=fmt), out)))
        return out, log

    def test_level_filters(self):
        """With level warning (Twisted calls it warn), info lines are dropped and warnings kept."""
        out, log = self.emit(level="warning")
        log.info("quiet {x}", x=1)
        log.warn("loud {x}", x=2)
        self.assertNotIn("quiet", out.getvalue())
        self.assertIn("loud 2", out.getvalue())

    def test_json_lines(self):
        """format json writes one JSON object per event."""
        out, log = self.emit(fmt="json")
        log.info("hello {who}", who="dns")
        records = [json.loads(line.lstrip("\x1e")) for line in out.getvalue().splitlines() if line.strip()]
        self.assertEqual(records[0]["who"], "dns")
        self.assertEqual(records[0]["log_format"], "hello {who}")

    def test_socket_noise_dropped(self):
        """udp.Port's legacy "starting on N" / "(UDP Port N Closed)" lines are dropped; others stay."""
        from twisted.logger._legacy import publishToNewObserver
        from twisted.python.log import textFromEventDict

        out = io.StringIO()
        observer = make_observer(LoggingConfig(), out)
        for text in ("_UDPClient starting on 40000", "(UDP Port 40000 Closed)", "something else happened"):
            event = {"message": (text,), "isError": 0, "system": "-", "time": 0.0}
            publishToNewObserver(observer, event, textFromEventDict)
        text = out.getvalue()
        self.assertNotIn("starting on", text)
        self.assertNotIn("Closed", text)
        self.assertIn("something else happened", text)
