"""The orgs a fleet serves: the environment's ``default`` org, and more from an orgs file.

A usable file gives each org its own settings (address, OAuth client, budget, slots, rules
files, WFM webhook) over the global ones; an unusable one is refused in one line that names the
file, the org and the field, and never prints a value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker.orgs import (
    DEFAULT_ORG,
    MULTI_ORG_INLINE_WAIT_S,
    OrgsError,
    UnknownOrg,
    load_orgs,
)
from worker.settings import Settings

SECRET = "acme-secret-value-1234567"
WFM_SECRET = "acme-wfm-secret-value-99"


def base(**values: Any) -> Settings:
    return Settings(
        genesys_api_url="http://127.0.0.1:9",
        genesys_client_id="env-client",
        genesys_client_secret="env-secret-value-123456",
        **values,
    )


def orgs_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "orgs.toml"
    path.write_text(text)
    return path


ACME = """
[orgs.acme]
region = "eu_west_1"
client_id = "acme-client"
client_secret_env = "ACME_SECRET"
rate_limit_per_minute = 120
channel_slots = 3
wfm_webhook_url = "https://wfm.example/acme"
wfm_webhook_secret_env = "ACME_WFM_SECRET"
"""


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_SECRET", SECRET)
    monkeypatch.setenv("ACME_WFM_SECRET", WFM_SECRET)


def test_without_an_orgs_file_the_environment_is_the_one_default_org() -> None:
    settings = base()
    orgs = load_orgs(settings)
    assert list(orgs) == [DEFAULT_ORG]
    assert orgs[DEFAULT_ORG].settings is settings  # unchanged, inline waits included
    assert orgs[DEFAULT_ORG].prefix == "presence"
    assert orgs[DEFAULT_ORG].queue == "presence"


def test_an_orgs_file_adds_orgs_with_their_own_fields_over_the_global_settings(
    tmp_path: Path,
) -> None:
    settings = base(orgs_file=orgs_file(tmp_path, ACME), rate_limit_headroom=0.1)
    orgs = load_orgs(settings)
    assert list(orgs) == [DEFAULT_ORG, "acme"]
    acme = orgs["acme"]
    assert acme.settings.api_base == "https://api.mypurecloud.ie"
    assert acme.settings.genesys_client_id == "acme-client"
    assert acme.settings.genesys_client_secret.get_secret_value() == SECRET
    assert acme.settings.effective_rate_per_minute == 108  # its budget, the global headroom
    assert acme.settings.channel_slots == 3
    assert acme.settings.wfm_webhook_url == "https://wfm.example/acme"
    assert acme.settings.wfm_webhook_secret.get_secret_value() == WFM_SECRET
    assert acme.settings.redis_url == settings.redis_url  # one Redis and database for all
    assert acme.prefix == "presence:org:acme"
    assert acme.queue == "presence.acme"
    default = orgs[DEFAULT_ORG].settings
    assert default.genesys_client_id == "env-client"
    assert default.rate_limit_per_minute == settings.rate_limit_per_minute


def test_several_orgs_never_park_a_thread_on_one_orgs_budget(tmp_path: Path) -> None:
    orgs = load_orgs(base(orgs_file=orgs_file(tmp_path, ACME), limiter_max_inline_wait_s=5))
    assert {o.settings.limiter_max_inline_wait_s for o in orgs.values()} == {
        MULTI_ORG_INLINE_WAIT_S
    }


def test_an_orgs_own_webhook_is_never_signed_with_another_endpoints_key(tmp_path: Path) -> None:
    text = ACME.replace('wfm_webhook_secret_env = "ACME_WFM_SECRET"\n', "")
    settings = base(orgs_file=orgs_file(tmp_path, text), wfm_webhook_secret="global-key-123456")
    orgs = load_orgs(settings)
    assert orgs["acme"].settings.wfm_webhook_secret.get_secret_value() == ""
    assert orgs["default"].settings.wfm_webhook_secret.get_secret_value() == "global-key-123456"


def test_the_file_may_replace_the_default_org(tmp_path: Path) -> None:
    text = ACME.replace("[orgs.acme]", "[orgs.default]")
    orgs = load_orgs(base(orgs_file=orgs_file(tmp_path, text)))
    assert list(orgs) == [DEFAULT_ORG]
    assert orgs[DEFAULT_ORG].settings.genesys_client_id == "acme-client"


def test_without_an_environment_client_only_the_files_orgs_are_served(tmp_path: Path) -> None:
    settings = Settings(orgs_file=orgs_file(tmp_path, ACME), genesys_client_id="")
    assert list(load_orgs(settings)) == ["acme"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[orgs.Acme]\nregion='eu_west_1'\nclient_id='c'\nclient_secret_env='ACME_SECRET'\n",
         "org name 'Acme' must be lower-case"),
        ("[orgs.acme]\nclient_id='c'\nclient_secret_env='ACME_SECRET'\n",
         "org acme: set exactly one of region and api_url"),
        ("[orgs.acme]\nregion='eu_west_1'\napi_url='http://x'\nclient_id='c'\n"
         "client_secret_env='ACME_SECRET'\n", "org acme: set exactly one of region and api_url"),
        ("[orgs.acme]\nregion='eu_west_1'\nclient_id='c'\nclient_secret_env='NOT_SET_ANYWHERE'\n",
         "org acme: client_secret_env names NOT_SET_ANYWHERE, which is not set"),
        ("[orgs.acme]\nregion='eu_west_1'\nclient_id='c'\nclient_secret_env='ACME_SECRET'\n"
         "client_secret='inline'\n", "org acme: client_secret: Extra inputs are not permitted"),
        ("[orgs.acme]\nregion='mars_1'\nclient_id='c'\nclient_secret_env='ACME_SECRET'\n",
         "org acme: region is not a known region"),
        ("[orgs.acme]\nregion='eu_west_1'\nclient_id='c'\nclient_secret_env='ACME_SECRET'\n"
         "rate_limit_per_minute=0\n", "org acme: rate_limit_per_minute: Input should be greater"),
        ("[orgs.other]\nregion='eu_west_1'\nclient_id='c'\nclient_secret_env='ACME_SECRET'\n",
         "the org name 'other' is reserved"),
        ("[orgs]\n", "must hold [orgs.NAME] tables"),
        ("title = 'x'\n[orgs.acme]\n", "must hold [orgs.NAME] tables and nothing else"),
        ("[orgs.acme\n", "is not valid TOML"),
    ],
)  # fmt: skip
def test_an_unusable_orgs_file_is_refused_in_one_line_without_values(
    tmp_path: Path, text: str, says: str
) -> None:
    with pytest.raises(OrgsError) as refused:
        load_orgs(base(orgs_file=orgs_file(tmp_path, text)))
    line = str(refused.value)
    assert line.startswith("ORGS_FILE: ")
    assert says in line
    assert "\n" not in line
    assert SECRET not in line
    assert "inline" not in line


def test_two_orgs_on_one_oauth_client_are_refused(tmp_path: Path) -> None:
    text = ACME + ACME.replace("[orgs.acme]", "[orgs.acme-eu]").replace("rate_limit", "#")
    with pytest.raises(OrgsError, match="orgs acme and acme-eu use the same OAuth client"):
        load_orgs(base(orgs_file=orgs_file(tmp_path, text)))


def test_a_missing_orgs_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(OrgsError, match=r"ORGS_FILE: .*nowhere\.toml does not exist"):
        load_orgs(base(orgs_file=tmp_path / "nowhere.toml"))


def test_an_unknown_org_names_the_known_ones() -> None:
    assert str(UnknownOrg("zeta", ["default", "acme"])) == (
        "org 'zeta' is not configured here; known orgs: default, acme"
    )
