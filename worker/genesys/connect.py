"""The one way to build a Genesys client from the settings: the worker's runtime and the CLI's
definition checks share the fleet's Redis-backed token and request budget."""

from __future__ import annotations

import httpx
import redis

from worker.genesys.client import GenesysClient
from worker.genesys.http import PlatformHttp
from worker.genesys.token import TokenProvider
from worker.limiter import SharedRateLimiter
from worker.names import DEFAULT_ORG
from worker.settings import Settings


class _NoCookies(httpx.Cookies):
    """Cookies that are never kept: nothing to extract from a response, nothing to send."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class CookielessClient(httpx.Client):
    """An ``httpx.Client`` that keeps no cookies. The platform's API authenticates every call by
    its bearer token and the official SDKs keep none either; httpx has no switch for it
    (encode/httpx#2992) and reads every response for cookies, about a twentieth of a PATCH's
    CPU in a worker's profile."""

    _none = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._none

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        if cookies:
            raise ValueError("this client keeps no cookies")


def http_client(settings: Settings, limits: httpx.Limits | None = None) -> httpx.Client:
    """The HTTP client of Genesys calls: the settings' timeout, ``limits`` (httpx's default
    pool when None), no cookies."""
    return CookielessClient(timeout=settings.http_timeout_s, limits=limits or httpx.Limits())


def missing_settings(settings: Settings) -> list[str]:
    """The variables still needed before Genesys can be called (empty: ready)."""
    missing = []
    if not (settings.genesys_api_url or settings.genesys_region):
        missing.append("GENESYS_REGION or GENESYS_API_URL")
    if not settings.genesys_client_id:
        missing.append("GENESYS_CLIENT_ID")
    if not settings.genesys_client_secret.get_secret_value():
        missing.append("GENESYS_CLIENT_SECRET")
    return missing


def budget_key(settings: Settings) -> str:
    """The key the limiter and the channel slots share among processes of one OAuth client."""
    return settings.genesys_client_id or "default"


def genesys_client(
    settings: Settings,
    r: redis.Redis,
    http: httpx.Client,
    *,
    prefix: str = "presence",
    org: str = DEFAULT_ORG,
) -> GenesysClient:
    """A client of ``org`` spending its OAuth client's shared budget and token, like every
    worker (``prefix``: the org's key prefix, under which both are kept). Its API calls go
    through a :class:`~worker.genesys.http.PlatformHttp` of its own; ``http`` fetches the
    token."""
    limiter = SharedRateLimiter(
        r,
        key=budget_key(settings),
        limit_per_minute=settings.effective_rate_per_minute,
        provisional_s=settings.http_timeout_s + 5,
        prefix=prefix,
        org=org,
    )
    tokens = TokenProvider(
        r,
        http,
        login_base=settings.login_base,
        client_id=settings.genesys_client_id,
        client_secret=settings.genesys_client_secret.get_secret_value(),
        timeout_s=settings.http_timeout_s,
        prefix=prefix,
    )
    return GenesysClient(
        PlatformHttp(),
        tokens,
        limiter,
        api_base=settings.api_base,
        timeout_s=settings.http_timeout_s,
        max_inline_wait_s=settings.limiter_max_inline_wait_s,
        presence_source=settings.presence_source,
        org=org,
    )
