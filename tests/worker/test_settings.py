"""Settings: where the worker finds Genesys, and secrets that never show."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from worker.settings import REGION_DOMAINS, Settings, get_settings


def settings(**values) -> Settings:
    return Settings(_env_file=None, **values)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No GENESYS_* variables leak in from the shell; the cached settings are dropped."""
    for name in ("GENESYS_REGION", "GENESYS_API_URL", "GENESYS_CLIENT_ID", "GENESYS_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("region", "api", "login"),
    [
        ("us_east_1", "https://api.mypurecloud.com", "https://login.mypurecloud.com"),
        ("eu_west_1", "https://api.mypurecloud.ie", "https://login.mypurecloud.ie"),
        ("ap_southeast_2", "https://api.mypurecloud.com.au", "https://login.mypurecloud.com.au"),
        ("eu_west_2", "https://api.euw2.pure.cloud", "https://login.euw2.pure.cloud"),
    ],
)
def test_a_region_names_the_api_and_login_hosts(region, api, login):
    configured = settings(genesys_region=region)

    assert configured.api_base == api
    assert configured.login_base == login


def test_every_known_region_has_api_and_login_hosts():
    for region, domain in REGION_DOMAINS.items():
        configured = settings(genesys_region=region)
        assert configured.api_base == f"https://api.{domain}"
        assert configured.login_base == f"https://login.{domain}"


def test_an_explicit_api_url_overrides_the_region():
    configured = settings(genesys_region="eu_west_1", genesys_api_url="http://127.0.0.1:8080/")

    assert configured.api_base == "http://127.0.0.1:8080"
    assert configured.login_base == "http://127.0.0.1:8080", "the emulator serves its own token"


def test_a_gateway_url_with_an_api_host_gets_the_matching_login_host():
    configured = settings(genesys_api_url="https://api.example.test")

    assert configured.login_base == "https://login.example.test"


def test_an_unknown_region_is_refused_with_the_known_ones():
    with pytest.raises(ValidationError) as caught:
        settings(genesys_region="mars_north_1")

    message = str(caught.value)
    assert "GENESYS_REGION is not a known region" in message
    assert "eu_west_1" in message


def test_neither_region_nor_url_is_a_clear_error():
    with pytest.raises(ValueError, match="Set GENESYS_REGION"):
        _ = settings().api_base


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("GENESYS_REGION", "eu_central_1")
    monkeypatch.setenv("RATE_LIMIT_PER_MINUTE", "600")
    monkeypatch.setenv("RATE_LIMIT_HEADROOM", "0.25")

    configured = get_settings()

    assert configured.api_base == "https://api.mypurecloud.de"
    assert configured.effective_rate_per_minute == 450
    assert get_settings() is configured, "read once per process"


def test_secrets_never_show_in_repr_or_str(monkeypatch):
    monkeypatch.setenv("GENESYS_CLIENT_SECRET", "very-secret-value")
    monkeypatch.setenv("SENTRY_DSN", "https://key-abc123@sentry.example/1")

    configured = settings(genesys_region="us_east_1")

    for text in (repr(configured), str(configured), configured.model_dump_json()):
        assert "very-secret-value" not in text
        assert "key-abc123" not in text
    assert configured.genesys_client_secret.get_secret_value() == "very-secret-value"
