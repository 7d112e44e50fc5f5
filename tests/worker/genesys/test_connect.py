"""worker/genesys/connect.py: when the settings are enough to call Genesys."""

from __future__ import annotations

import httpx
import pytest
import redis
from pydantic import SecretStr

from worker.genesys.connect import (
    CookielessClient,
    budget_key,
    genesys_client,
    http_client,
    missing_settings,
)
from worker.settings import Settings


def settings(**values: object) -> Settings:
    return Settings.model_validate(values)


def test_nothing_set_names_every_missing_variable(monkeypatch):
    for name in ("GENESYS_REGION", "GENESYS_API_URL", "GENESYS_CLIENT_ID", "GENESYS_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)

    assert missing_settings(settings(_env_file=None)) == [
        "GENESYS_REGION or GENESYS_API_URL",
        "GENESYS_CLIENT_ID",
        "GENESYS_CLIENT_SECRET",
    ]


def test_a_region_or_a_url_with_both_credentials_is_enough():
    for where in ({"genesys_region": "eu_west_1"}, {"genesys_api_url": "http://127.0.0.1:8080"}):
        ready = settings(
            **where, genesys_client_id="c", genesys_client_secret=SecretStr("s"), _env_file=None
        )
        assert missing_settings(ready) == []
        assert budget_key(ready) == "c"


def test_an_orgs_client_keeps_its_budget_and_token_under_the_orgs_prefix(redis_url):
    ready = settings(
        genesys_api_url="http://127.0.0.1:8080",
        genesys_client_id="c",
        genesys_client_secret=SecretStr("s"),
        redis_url=redis_url,
        _env_file=None,
    )
    r, http = redis.Redis.from_url(redis_url), httpx.Client()
    try:
        default = genesys_client(ready, r, http)
        acme = genesys_client(ready, r, http, prefix="presence:org:acme")

        assert (default.limiter.log_key, default.tokens.key) == (
            "presence:limiter:{c}:log",
            "presence:token:{c}",
        )
        assert (acme.limiter.log_key, acme.limiter.cooldown_key, acme.tokens.key) == (
            "presence:org:acme:limiter:{c}:log",
            "presence:org:acme:limiter:{c}:cooldown",
            "presence:org:acme:token:{c}",
        )
        acme.limiter.release(acme.limiter.acquire(max_wait_s=0))
        assert (default.limiter.in_window(), acme.limiter.in_window()) == (0, 1)
    finally:
        http.close()
        r.close()


def test_genesys_calls_keep_no_cookie_a_response_sets():
    sent: list[str | None] = []

    def platform(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"set-cookie": "AWSALB=sticky; Path=/"}, json={})

    with CookielessClient(transport=httpx.MockTransport(platform)) as http:
        http.get("https://api.example.test/api/v2/users/me")
        http.get("https://api.example.test/api/v2/users/me")

        assert sent == [None, None]
        assert not http.cookies
        with pytest.raises(ValueError, match="no cookies"):
            http.cookies = {"AWSALB": "sticky"}  # type: ignore[assignment]


def test_the_http_client_takes_the_settings_timeout():
    http = http_client(settings(http_timeout_s=7.5))

    assert isinstance(http, CookielessClient)
    assert http.timeout == httpx.Timeout(7.5)
