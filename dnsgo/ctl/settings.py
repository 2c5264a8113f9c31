"""
Where the management API is and which token to send it.

Each of the two is taken from the first place that gives it:

1. the command line: ``--api``; ``--token`` or ``--token-file``;
2. the environment: ``$DNSGO_API``; ``$DNSGO_TOKEN``;
3. a dnsgo configuration file (``--config FILE``): ``api.listen_address``;
   the token as the server itself reads it (``api.auth_token``, else
   ``api.auth_token_file``, else ``$DNSGO_API_TOKEN``);
4. the API's defaults: ``http://127.0.0.1:8080``, no token.

The configuration file is read only when the first two leave something
unset, and only its ``api`` section is validated (with dnsgo.config's own
rules), so a server file with a ``${VAR}`` this shell lacks elsewhere
still serves.  The token is never shown: :class:`Settings` keeps it out of
its repr and the messages name only where it came from.
"""
from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping

import attrs
import yaml

from dnsgo.config import Address, ConfigError, api_token, parse_config
from dnsgo.ctl.errors import UsageError

#: The API's default listen address (docs/configuration.md, api.listen_address).
DEFAULT_API = "http://127.0.0.1:8080"
DEFAULT_PORT = 8080
#: Seconds to wait for the API to connect or to send more of its answer.
DEFAULT_TIMEOUT = 10.0

ENV_API = "DNSGO_API"
ENV_TOKEN = "DNSGO_TOKEN"


@attrs.frozen
class Settings:
    """How to reach the API: its base URL, the bearer token ('' for none), and where each came from."""

    api_url: str = DEFAULT_API
    token: str = attrs.field(default="", repr=False)
    timeout: float = DEFAULT_TIMEOUT
    api_source: str = "the default"
    token_source: str = "nowhere"


@attrs.frozen
class Flags:
    """What the command line said about the settings (None: not given)."""

    api: str | None = None
    token: str | None = attrs.field(default=None, repr=False)
    token_file: str | None = None
    config: str | None = None
    timeout: float | None = None


def resolve(flags: Flags, environ: Mapping[str, str]) -> Settings:
    """The settings from ``flags``, then ``environ``, then the configuration file; UsageError if unusable."""
    if flags.token is not None and flags.token_file is not None:
        raise UsageError("give --token or --token-file, not both")
    timeout = DEFAULT_TIMEOUT if flags.timeout is None else flags.timeout
    if not timeout > 0:
        raise UsageError(f"--timeout must be more than 0 seconds, not {timeout:g}")

    api = api_source = token = token_source = None
    if flags.api is not None:
        api, api_source = api_url(flags.api, "--api"), "--api"
    elif environ.get(ENV_API):
        api, api_source = api_url(environ[ENV_API], f"${ENV_API}"), f"${ENV_API}"
    if flags.token is not None:
        token, token_source = flags.token, "--token"
    elif flags.token_file is not None:
        token, token_source = read_token_file(flags.token_file), f"--token-file {flags.token_file}"
    elif environ.get(ENV_TOKEN):
        token, token_source = environ[ENV_TOKEN], f"${ENV_TOKEN}"

    if flags.config is not None and (api is None or token is None):
        from_file = from_config_file(flags.config, environ)
        if api is None:
            api, api_source = from_file.api_url, from_file.api_source
        if token is None:
            token, token_source = from_file.token, from_file.token_source
    if api is None:
        api, api_source = DEFAULT_API, "the default"
    if not token:
        token, token_source = "", "nowhere"
    check_token(token, token_source)
    return Settings(api, token, timeout, api_source, token_source)


def api_url(text: str, source: str) -> str:
    """
    The base URL of the API ``text`` names: ``HOST[:PORT]`` (http, port
    8080 when absent) or an ``http://`` / ``https://`` URL, with no
    trailing slash.  UsageError naming ``source`` when it is none of these.
    """
    raw = text.strip()
    given_scheme = "://" in raw
    parts = urllib.parse.urlsplit(raw if given_scheme else f"http://{raw}")
    problem = None
    try:
        port = parts.port
    except ValueError:
        problem = "its port is not a number from 0 to 65535"
    if problem is None:
        if parts.scheme not in ("http", "https"):
            problem = "only http:// and https:// are spoken"
        elif not parts.hostname:
            problem = "it has no host"
        elif parts.username is not None or parts.password is not None:
            problem = "put the token in --token or $DNSGO_TOKEN, not in the address"
        elif parts.query or parts.fragment:
            problem = "it has a query or fragment"
        elif port == 0:
            problem = "port 0 is not a port to connect to"
    if problem is not None:
        raise UsageError(f"{source}: {_clip(raw)!r} is not an API address ({problem}); "
                         "expected HOST:PORT or http://HOST:PORT")
    netloc = parts.netloc
    if not given_scheme and port is None:
        netloc = f"{netloc}:{DEFAULT_PORT}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def read_token_file(path: str) -> str:
    """The token in file ``path``, without surrounding white space; UsageError if unreadable or empty."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as error:
        raise UsageError(f"--token-file: cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--token-file: {path} is not UTF-8 text") from None
    if not token:
        raise UsageError(f"--token-file: {path} is empty")
    return token


def check_token(token: str, source: str) -> None:
    """UsageError (without the token) when ``token`` cannot go in an HTTP header."""
    if any(not (0x21 <= ord(c) <= 0x7E) for c in token):
        raise UsageError(f"the token from {source} holds a space, a control or a non-ASCII character; "
                         "an HTTP header cannot carry it")


@attrs.frozen
class FromConfig:
    """What a dnsgo configuration file says about its API."""

    api_url: str
    api_source: str
    token: str = attrs.field(repr=False)
    token_source: str


def from_config_file(path: str, environ: Mapping[str, str]) -> FromConfig:
    """
    The API address and token of the dnsgo configuration at ``path``.  Only
    the ``api`` section is checked, by dnsgo.config; UsageError listing its
    problems, or when the file cannot be read, the API is disabled or it
    listens on port 0.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as error:
        raise UsageError(f"--config: cannot read {path}: {error.strerror}") from None
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"--config: {path} is not a YAML configuration: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"--config: {path} is not a dnsgo configuration (the top level is not a mapping)")
    # Only the api section, and upstreams given, so nothing else is read or checked.
    text = json.dumps({"api": data.get("api") or {}, "upstreams": ["127.0.0.1:53"]}, default=str)
    try:
        api = parse_config(text, path, environ).api
        token = api_token(api, environ, path)
    except ConfigError as error:
        raise UsageError(f"--config: {'; '.join(str(p) for p in error.problems)} (in {path})") from None
    if not api.enabled:
        raise UsageError(f"--config: {path} disables the API (api.enabled: false)")
    if api.listen_address.port == 0:
        raise UsageError(f"--config: {path} has api.listen_address on port 0 (chosen at start); give --api")
    source = f"{path} (api.listen_address)"
    if api.auth_token:
        token_source = f"{path} (api.auth_token)"
    elif api.auth_token_file:
        token_source = f"{path} (api.auth_token_file)"
    else:
        token_source = "$DNSGO_API_TOKEN" if token else "nowhere"
    return FromConfig(base_url_of(api.listen_address), source, token, token_source)


def base_url_of(listen: Address) -> str:
    """The URL to reach an API listening on ``listen``: an unspecified address is reached on loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(listen.host, listen.host)
    return f"http://{Address(host, listen.port)}"


def _clip(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[:limit] + "\u2026"
