"""
Bearer-token authentication of the management API.

With a token configured, a request is let in only when it carries
``Authorization: Bearer <token>`` (exactly one such header: two are refused
rather than one of them picked); the comparison is constant-time on bytes.
Without a token the API is open, so it may then listen only on a loopback
address (:func:`check_listen_allowed`).  Tokens are never logged or echoed.
"""
import hmac
import ipaddress


class Unauthorized(Exception):
    """A request without the right bearer token; ``reason`` says what was wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InsecureListenError(ValueError):
    """The API was asked to listen beyond loopback without a token."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 (also IPv4-mapped) and ``localhost``."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def check_listen_allowed(listen_host: str, token: str) -> None:
    """
    Refuse (InsecureListenError) to serve the API without a token on any
    address but loopback: an open API on the network lets anyone clear the
    caches.
    """
    if not token and not is_loopback(listen_host):
        raise InsecureListenError(
            f"api.listen_address {listen_host} is not a loopback address and no API token is set: "
            "set api.auth_token, api.auth_token_file or $DNSGO_API_TOKEN, or listen on 127.0.0.1"
        )


def check_bearer(authorization: bytes | None, token: bytes) -> None:
    """
    Let the request in (return None) or raise Unauthorized.  ``authorization``
    is the raw header value or None; ``token`` the configured token, b""
    meaning no authentication.  The scheme is matched case-insensitively
    (RFC 9110 section 11.1); the token in constant time.
    """
    if not token:
        return
    if authorization is None:
        raise Unauthorized("missing Authorization header")
    scheme, _, credentials = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        raise Unauthorized("the Authorization scheme must be Bearer")
    if not hmac.compare_digest(credentials.strip(), token):
        raise Unauthorized("invalid bearer token")


def check_authorization(values: list[bytes] | None, token: bytes) -> None:
    """
    :func:`check_bearer` over every ``Authorization`` header of a request
    (``values`` as ``Headers.getRawHeaders`` gives them, None for none).
    More than one is refused whatever they hold: which one a proxy or a
    server reads is not defined, so neither may be trusted.
    """
    if not token:
        return
    if values and len(values) > 1:
        raise Unauthorized("more than one Authorization header")
    check_bearer(values[0] if values else None, token)
