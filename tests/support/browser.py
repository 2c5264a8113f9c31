"""
A real headless browser for end-to-end tests: Debian's Chromium
(``/usr/bin/chromium``) driven by Playwright for Python, which is told to
use that binary (no browser is ever downloaded).

Playwright's sync API must be called from the one thread that started it,
and must not run in the reactor's thread (it blocks).  :class:`BrowserThread`
owns one dedicated thread: every call is run there, and the test gets a
Deferred for its result, so a test can interleave browser steps with DNS
queries and API calls made from the reactor.
"""
import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor

from twisted.internet import defer, reactor
from twisted.python.failure import Failure

#: Debian's Chromium (``apt-get install chromium``).
CHROMIUM = "/usr/bin/chromium"

#: Chromium's flags: headless, no sandbox (root), and nothing that reaches the network by itself.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _skip_reason() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install playwright)"
    return None


#: Why browser tests cannot run here (a trial ``skip`` value), or None.
SKIP = _skip_reason()


class BrowserThread:
    """One Chromium, driven from a thread of its own; :meth:`call` runs a function there."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="playwright")
        self._playwright = None
        self.browser = None

    def call(self, function, *args, **kwargs) -> defer.Deferred:
        """Run ``function(*args, **kwargs)`` in the browser's thread; fires (in the reactor) with its result."""
        d = defer.Deferred()

        def done(future):
            error = future.exception()
            if error is None:
                reactor.callFromThread(d.callback, future.result())
            else:
                reactor.callFromThread(d.errback, Failure(error, type(error), error.__traceback__))

        self._executor.submit(function, *args, **kwargs).add_done_callback(done)
        return d

    def start(self) -> defer.Deferred:
        """Start Playwright and Chromium; fires with this object."""
        return self.call(self._launch).addCallback(lambda _: self)

    def new_page(self, **context_options) -> defer.Deferred:
        """A page of a new browser context (its own session storage); use it only through :meth:`call`."""
        return self.call(lambda: self.browser.new_context(**context_options).new_page())

    def stop(self) -> defer.Deferred:
        """Close Chromium and Playwright's driver, then end the thread."""
        d = self.call(self._close)

        def shut(result):
            self._executor.shutdown(wait=False)
            return result

        return d.addBoth(shut)

    def _launch(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=60_000)

    def _close(self) -> None:
        try:
            if self.browser is not None:
                self.browser.close()
        finally:
            if self._playwright is not None:
                self._playwright.stop()
