"""worker/genesys/connect.py: when the settings are enough to call Genesys."""

from __future__ import annotations

from pydantic import SecretStr

from worker.genesys.connect import budget_key, missing_settings
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
