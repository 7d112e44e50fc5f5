"""The pre-flight checks against the real emulator, a real Redis and real audit databases: every
failure they detect, each missing permission, and that they change nothing."""

from __future__ import annotations

import socket
import sqlite3

import httpx
import pytest

import migrations
from worker.preflight import Finding, Verdict, run_checks
from worker.settings import Settings

SECRET = "doctor-secret-0123456789"  # a client secret no finding may show, not even in part
NEEDED = (
    "presence:presenceDefinition:view",
    "presence:userPresence:edit",
    "routing:queue:view",
    "analytics:queueObservation:view",
)


@pytest.fixture
def database_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    migrations.upgrade(url)
    return url


@pytest.fixture
def setup(api, redis_url, database_url):
    """Settings for a narrow client of its own (every permission the worker needs)."""
    add_client(api, "doctor", SECRET, list(NEEDED))

    def make(**values) -> Settings:
        base = {
            "genesys_api_url": api.emulator.base_url,
            "genesys_client_id": "doctor",
            "genesys_client_secret": SECRET,
            "redis_url": redis_url,
            "database_url": database_url,
        }
        return Settings(_env_file=None, **{**base, **values})

    return make


def add_client(api, client_id: str, secret: str, permissions: list[str]) -> None:
    api.admin(
        "POST",
        "/clients",
        {"client_id": client_id, "client_secret": secret, "permissions": permissions},
    )


def checks(settings: Settings) -> dict[str, Finding]:
    findings = run_checks(settings, timeout_s=3)
    for finding in findings:
        assert SECRET not in finding.line
        assert SECRET[-8:] not in finding.line
    return {f.check: f for f in findings}


def failed(found: dict[str, Finding]) -> set[str]:
    return {name for name, f in found.items() if f.verdict is Verdict.FAIL}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def api_requests(api) -> int:
    requests = api.admin("GET", "/stats").json()["requests"]
    return sum(
        sum(statuses.values())
        for route, statuses in requests.items()
        if route not in ("oauth.token", "unmatched") and not route.startswith("admin.")
    )


# -- a healthy setup ----------------------------------------------------------------------------
def test_a_healthy_setup_passes_every_check_and_changes_nothing(api, setup):
    before = api.admin("GET", "/users").json()

    found = checks(setup())

    assert failed(found) == set()
    assert [name for name, f in found.items() if f.verdict is Verdict.OK] == [
        "settings",
        "Redis",
        "database",
        "Genesys reachable",
        "credentials",
        "read presence definitions",
        "read agents and presence",
        "edit presence",
        "notifications",
        "read queues and members",
        "queue observations",
        "API budget",
    ]
    assert found["WFM endpoint"].verdict is Verdict.SKIP
    assert api.admin("GET", "/history").json() == {}, "no presence was written"
    assert api.admin("GET", "/users").json() == before
    assert api_requests(api) <= 9


def test_repeated_runs_hold_one_notification_channel(api, setup):
    for _ in range(3):
        assert failed(checks(setup())) == set()

    channels = api.admin("GET", "/channels").json()
    assert len([c for c in channels if c["clientId"] == "doctor"]) == 1


# -- the OAuth client's permissions -------------------------------------------------------------
@pytest.mark.parametrize(
    ("missing", "check"),
    [
        ("presence:presenceDefinition:view", "read presence definitions"),
        ("presence:userPresence:edit", "edit presence"),
        ("routing:queue:view", "read queues and members"),
        ("analytics:queueObservation:view", "queue observations"),
    ],
)
def test_each_missing_permission_fails_its_check_and_names_it(api, setup, missing, check):
    add_client(api, "narrow", "narrow-secret", [p for p in NEEDED if p != missing])

    found = checks(setup(genesys_client_id="narrow", genesys_client_secret="narrow-secret"))

    assert failed(found) == {check}
    assert missing in found[check].fix
    assert found[check].fatal


def test_a_refused_notification_channel_fails_the_notification_check(api, setup):
    # The emulator grants channels to every client; the platform's refusal is injected.
    api.admin(
        "POST",
        "/faults/errors",
        {"endpoint": "notifications.channels.create", "status": 403, "count": 1},
    )

    found = checks(setup())

    assert failed(found) == {"notifications"}
    assert "HTTP 403" in found["notifications"].detail


# -- Genesys ------------------------------------------------------------------------------------
def test_a_bad_secret_fails_the_credentials_and_skips_the_permissions(setup):
    found = checks(setup(genesys_client_secret="not-" + SECRET))

    assert failed(found) == {"credentials"}
    assert "GENESYS_CLIENT_SECRET" in found["credentials"].fix
    assert "edit presence" not in found
    assert "not-" not in found["credentials"].line


def test_an_unreachable_url_is_named_and_skips_the_rest(setup):
    url = f"http://127.0.0.1:{free_port()}"

    found = checks(setup(genesys_api_url=url))

    assert failed(found) == {"Genesys reachable"}
    assert url in found["Genesys reachable"].detail
    assert "GENESYS_API_URL" in found["Genesys reachable"].fix
    assert "credentials" not in found


def test_a_budget_below_the_configured_rate_is_a_warning_with_the_number(api, setup):
    api.admin("PUT", "/settings", {"rate_limit_per_minute": 120})

    found = checks(setup(rate_limit_per_minute=300))

    assert failed(found) == set()
    budget = found["API budget"]
    assert budget.verdict is Verdict.WARN
    assert "120/min allowed" in budget.detail
    assert budget.fix == "set RATE_LIMIT_PER_MINUTE=120"


def test_settings_without_credentials_fail_first(setup):
    found = checks(setup(genesys_client_id="", genesys_client_secret=""))

    assert failed(found) == {"settings"}
    assert "GENESYS_CLIENT_ID and GENESYS_CLIENT_SECRET empty" in found["settings"].detail


def test_unknown_region_settings_fail_without_their_values(monkeypatch):
    monkeypatch.setenv("GENESYS_REGION", "mars_north_1")
    monkeypatch.setenv("GENESYS_CLIENT_SECRET", SECRET)
    monkeypatch.delenv("GENESYS_API_URL", raising=False)

    findings = run_checks(timeout_s=1)

    assert [(f.check, f.verdict) for f in findings] == [("settings", Verdict.FAIL)]
    assert "GENESYS_REGION" in findings[0].detail
    assert "mars_north_1" not in findings[0].line
    assert SECRET[-6:] not in findings[0].line


# -- Redis and the database ---------------------------------------------------------------------
def test_redis_down_is_named_and_the_channel_check_waits_for_it(setup):
    url = f"redis://:redis-pass-word@127.0.0.1:{free_port()}/0"

    found = checks(setup(redis_url=url))

    assert failed(found) == {"Redis"}
    assert "REDIS_URL" in found["Redis"].detail
    assert "redis-pass-word" not in found["Redis"].line
    assert found["notifications"].verdict is Verdict.SKIP


def test_an_unmigrated_database_asks_for_presence_migrate(setup, tmp_path):
    empty = tmp_path / "empty.sqlite3"
    sqlite3.connect(empty).close()

    found = checks(setup(database_url=f"sqlite:///{empty}"))

    assert failed(found) == {"database"}
    assert found["database"].fix == "run `presence migrate`"


def test_an_absent_database_file_is_reported_not_created(setup, tmp_path):
    absent = tmp_path / "absent.sqlite3"

    found = checks(setup(database_url=f"sqlite:///{absent}"))

    assert failed(found) == {"database"}
    assert found["database"].fix == "run `presence migrate`"
    assert not absent.exists()


def test_a_database_behind_head_names_both_revisions(setup, tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    migrations.upgrade(url, "0002")

    found = checks(setup(database_url=url))

    assert failed(found) == {"database"}
    assert "revision 0002, not 0003" in found["database"].detail
    assert found["database"].fix == "run `presence migrate`"


def test_an_unreachable_postgres_is_named_with_its_password_masked(setup):
    url = f"postgresql+psycopg://presence:pg-pass-word@127.0.0.1:{free_port()}/presence"

    found = checks(setup(database_url=url))

    assert failed(found) == {"database"}
    assert "DATABASE_URL (postgresql+psycopg://presence:***@" in found["database"].detail
    assert "pg-pass-word" not in found["database"].line


# -- WFM ----------------------------------------------------------------------------------------
def test_a_reachable_wfm_endpoint_with_a_secret_passes(api, setup):
    found = checks(
        setup(
            wfm_webhook_url=f"{api.emulator.base_url}/__wfm/events",
            wfm_webhook_secret="wfm-secret",
        )
    )

    assert failed(found) == set()
    assert found["WFM endpoint"].verdict is Verdict.OK
    assert found["WFM secret"].verdict is Verdict.OK
    sink = httpx.get(f"{api.emulator.base_url}/__emulator/wfm/deliveries").json()
    assert sink["deliveries"] == [], "the check delivers nothing"


def test_an_unreachable_wfm_endpoint_and_an_empty_secret_fail_without_being_fatal(setup):
    url = f"http://127.0.0.1:{free_port()}/events"

    found = checks(setup(wfm_webhook_url=url))

    assert failed(found) == {"WFM endpoint", "WFM secret"}
    assert url in found["WFM endpoint"].detail
    assert "WFM_WEBHOOK_URL" in found["WFM endpoint"].fix
    assert "WFM_WEBHOOK_SECRET" in found["WFM secret"].detail
    assert not found["WFM endpoint"].fatal
    assert not found["WFM secret"].fatal


# -- files --------------------------------------------------------------------------------------
def test_an_unreadable_transition_matrix_file_is_named(setup, tmp_path):
    missing = tmp_path / "matrix.toml"

    found = checks(setup(transition_matrix_file=missing))

    assert failed(found) == {"files"}
    assert f"TRANSITION_MATRIX_FILE {missing}" in found["files"].detail


def test_a_malformed_capacity_overrides_file_is_named(setup, tmp_path):
    broken = tmp_path / "overrides.toml"
    broken.write_text("[queues.\n")

    found = checks(setup(capacity_overrides_file=broken))

    assert failed(found) == {"files"}
    assert f"CAPACITY_OVERRIDES_FILE {broken}" in found["files"].detail


def test_a_spent_budget_fails_the_check_it_hit_without_being_fatal(api, setup):
    api.admin(
        "POST",
        "/faults/errors",
        {"endpoint": "queues.list", "status": 429, "count": 1, "retry_after_s": 1},
    )

    found = checks(setup())

    assert failed(found) == {"read queues and members"}
    assert "HTTP 429" in found["read queues and members"].detail
    assert not found["read queues and members"].fatal


def test_a_fleet_holding_every_channel_leaves_the_check_a_warning_not_a_new_channel(api, setup):
    found = checks(setup(channel_slots=20))

    assert failed(found) == set()
    assert found["notifications"].verdict is Verdict.WARN
    assert found["notifications"].fix == "set CHANNEL_SLOTS below 20"
    assert api.admin("GET", "/channels").json() == []
