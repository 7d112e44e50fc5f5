"""The HTTP transport of platform API calls: urllib3, the official SDKs' HTTP library.

Every update makes at least one API call, so the transport's own CPU counts: the same PATCH
costs about 0.26 ms of CPU through urllib3 against 0.38 ms through httpx on one thread (0.40
against 0.65 ms on eight), mostly httpx's URL parsing and connection-pool bookkeeping. The
OAuth token, WFM deliveries and the command line keep httpx.

:class:`PlatformHttp` never retries or follows a redirect on its own: the client's one retry
policy decides (``worker.retry``).
"""

from __future__ import annotations

import json as jsonlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import TimeoutError as Urllib3Timeout

POOL_SIZE = 64
"""Connections kept per host (as many as a threads worker's calls in flight)."""


class TransportFailure(Exception):
    """The request got no HTTP answer (refused, reset, a broken response); the message names
    the cause's type only (never the URL's query or a header)."""


class TransportTimeout(TransportFailure):
    """No answer within the timeout."""


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer: ``headers`` read case-insensitively, ``content`` the whole body."""

    status_code: int
    reason_phrase: str
    headers: Any  # urllib3's HTTPHeaderDict
    content: bytes

    def json(self) -> Any:
        """The body as JSON; raises ValueError when it is not."""
        return jsonlib.loads(self.content)


def _query_value(value: Any) -> str:
    if isinstance(value, bool):  # as httpx and the SDKs spell them
        return "true" if value else "false"
    return str(value)


def query(params: dict[str, Any]) -> str:
    """``params`` as a query string; a list value is a repeated parameter (``id=a&id=b``)."""
    pairs = [
        (key, _query_value(item))
        for key, value in params.items()
        for item in (value if isinstance(value, list | tuple) else [value])
    ]
    return urlencode(pairs)


class PlatformHttp:
    """Thread-safe: one per process, its connections kept alive per host."""

    def __init__(self, pool_size: int = POOL_SIZE) -> None:
        self._pool = urllib3.PoolManager(maxsize=pool_size, retries=False)

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        timeout_s: float,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> Reply:
        """One request; raises :class:`TransportTimeout` or :class:`TransportFailure` when no
        answer came (any HTTP status is a :class:`Reply`)."""
        if params:
            url = f"{url}?{query(params)}"
        body = None
        if json is not None:
            body = jsonlib.dumps(json, separators=(",", ":"), ensure_ascii=False).encode()
            headers = {**headers, "Content-Type": "application/json"}
        try:
            response = self._pool.request(
                method,
                url,
                body=body,
                headers=headers,
                timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
                redirect=False,
            )
        except Urllib3Timeout:
            raise TransportTimeout("timed out") from None
        except (Urllib3Error, OSError) as exc:
            raise TransportFailure(type(exc).__name__) from None
        return Reply(response.status, response.reason or "", response.headers, response.data)

    def close(self) -> None:
        self._pool.clear()
