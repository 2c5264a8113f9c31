"""
The log observer twistd uses for dnsgo: ``logging.level``, ``logging.format``
(text or one JSON object per line), and without the two lines Twisted writes
for every UDP socket the upstream pool opens and closes.
"""
import re
import sys

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    jsonFileLogObserver,
    textFileLogObserver,
)

#: The configuration's level names, as Twisted's levels.
_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warning": LogLevel.warn, "error": LogLevel.error}

_SOCKET_NOISE = re.compile(r"^(?:\S+ starting on \d+|\(UDP Port \d+ Closed\))$")


def drop_socket_noise(event) -> PredicateResult:
    """Filter predicate: drop Twisted's per-socket "starting on N" / "Port N Closed" lines."""
    message = event.get("message")
    if message and len(message) == 1 and isinstance(message[0], str):
        # The legacy log.msg form udp.Port uses: decided without formatting.
        return PredicateResult.no if _SOCKET_NOISE.match(message[0]) else PredicateResult.maybe
    if event.get("log_level") in (None, LogLevel.info) and "log_failure" not in event:
        try:
            text = formatEvent(event)
        except Exception:
            return PredicateResult.maybe
        if _SOCKET_NOISE.match(text):
            return PredicateResult.no
    return PredicateResult.maybe


def make_observer(logging_config, out=None) -> ILogObserver:
    """An observer writing to ``out`` (stdout) per the ``logging`` section."""
    if out is None:
        out = sys.stdout
    if logging_config.format == "json":
        base = jsonFileLogObserver(out)
    else:
        base = textFileLogObserver(out)
    levels = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[logging_config.level])
    return FilteringLogObserver(base, [drop_socket_noise, levels])


def install_observer(parent, logging_config) -> None:
    """
    Give a twistd application (``parent``) the observer for
    ``logging_config``, unless it already has one; twistd uses it when it
    starts logging.  Anything else as parent is left alone.
    """
    if hasattr(parent, "setComponent") and parent.getComponent(ILogObserver, None) is None:
        parent.setComponent(ILogObserver, make_observer(logging_config))
