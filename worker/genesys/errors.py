"""Typed errors for every non-2xx answer and every transport failure."""

from __future__ import annotations


class GenesysError(Exception):
    """A Genesys call failed. ``retryable`` says whether trying again later can help.

    The message is one actionable line and never contains a token or secret.
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        correlation_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.correlation_id = correlation_id
        self.retry_after_s = retry_after_s


class BadRequest(GenesysError):
    """400: the platform rejected the request's content."""


class Unauthorized(GenesysError):
    """401: the token is unknown, expired or revoked."""


class Forbidden(GenesysError):
    """403: the OAuth client's roles lack a permission."""


class NotFound(GenesysError):
    """404: the user (or other resource) does not exist."""


class RateLimited(GenesysError):
    """429: over a platform limit; wait ``retry_after_s``."""

    retryable = True


class ServerError(GenesysError):
    """5xx (and 408): the platform failed; try again later."""

    retryable = True


class TransportError(GenesysError):
    """Timeout or connection failure before an answer arrived."""

    retryable = True


class TokenError(GenesysError):
    """The token endpoint refused the client's credentials (not retryable: fix the config)."""


def error_for_status(status: int) -> type[GenesysError]:
    if status == 400:
        return BadRequest
    if status == 401:
        return Unauthorized
    if status == 403:
        return Forbidden
    if status == 404:
        return NotFound
    if status == 429:
        return RateLimited
    if status >= 500 or status == 408:
        return ServerError
    return GenesysError
