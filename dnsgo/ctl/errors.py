"""
What can go wrong in ``dnsgoctl``, each failure with the exit code the
documentation promises (docs/dnsgoctl.md):

=====  ==========================================================
0      success
1      the API reported a failure, or check-config found problems
2      usage: bad arguments or settings
3      the API cannot be reached (refused, timed out, no answer)
4      401: the token is missing or wrong
5      400: the API refused the request (its reason is printed)
6      any other HTTP error, or an answer that is not the API's
=====  ==========================================================
"""
from __future__ import annotations

OK = 0
FAILED = 1
USAGE = 2
UNREACHABLE = 3
UNAUTHORIZED = 4
BAD_REQUEST = 5
HTTP_ERROR = 6


class CtlError(Exception):
    """A failure to report on one line of stderr and exit with :attr:`exit_code`."""

    exit_code = FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Failed(CtlError):
    """The API carried out the request and reported that (part of) it failed."""

    exit_code = FAILED


class UsageError(CtlError):
    """Arguments or settings that cannot be used."""

    exit_code = USAGE


class Unreachable(CtlError):
    """Nothing answered at the API's address, or it did not answer in time."""

    exit_code = UNREACHABLE


class Unauthorized(CtlError):
    """The API answered 401."""

    exit_code = UNAUTHORIZED


class BadRequest(CtlError):
    """The API answered 400; the message holds its reason."""

    exit_code = BAD_REQUEST


class HttpError(CtlError):
    """Any other HTTP error status (``status``), a redirect, or an answer that is not the API's JSON (``status`` None)."""

    exit_code = HTTP_ERROR

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
