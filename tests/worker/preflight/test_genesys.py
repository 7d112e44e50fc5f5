"""The Genesys checks against the real emulator: a healthy client changes nothing and spends a
handful of requests; each missing permission, a bad secret, an unreachable URL, a spent or
misconfigured budget fail the row they concern."""

from __future__ import annotations

import pytest
import redis

from emulator.sources import TEAMS_SOURCE_ID
from tests.worker.preflight.helpers import (
    NEEDED,
    SECRET,
    add_client,
    api_requests,
    checks,
    failed,
    free_port,
)
from worker.preflight import Verdict, run_checks


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
        "presence source",
        "notifications",
        "read queues and members",
        "queue observations",
        "API budget",
    ]
    assert found["WFM endpoint"].verdict is Verdict.SKIP
    assert api.admin("GET", "/history").json() == {}, "no presence was written"
    assert api.admin("GET", "/users").json() == before
    assert api_requests(api) <= 11


# -- the presence source -------------------------------------------------------------------------
def make_integration_primary(api) -> None:
    answer = api.http.put(
        "/api/v2/presence/settings",
        json={"defaultPrimaryPresenceRegisteredSourceId": TEAMS_SOURCE_ID},
    )
    assert answer.status_code == 200, answer.text


def test_writing_purecloud_where_an_integration_is_primary_is_a_warning_saying_what_it_means(
    api, setup
):
    make_integration_primary(api)

    found = checks(setup())

    source = found["presence source"]
    assert source.verdict is Verdict.WARN
    assert not source.fatal, "a worker still starts"
    assert f"primary presence source is {TEAMS_SOURCE_ID}" in source.detail
    assert "applied_unconfirmed" in source.detail
    assert (
        source.fix == f"set PRESENCE_SOURCE={TEAMS_SOURCE_ID}, or make PURECLOUD the primary source"
    )


def test_writing_through_the_primary_registered_source_passes(api, setup):
    make_integration_primary(api)

    found = checks(setup(presence_source=TEAMS_SOURCE_ID))

    assert found["presence source"].verdict is Verdict.OK


def test_a_registered_source_that_is_not_primary_is_a_warning(api, setup):
    found = checks(setup(presence_source=TEAMS_SOURCE_ID))

    assert found["presence source"].verdict is Verdict.WARN
    assert "primary presence source is PURECLOUD" in found["presence source"].detail


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

    # Presence topics need a presence permission too: without edit (and view) none is left.
    also = {"notifications"} if missing == "presence:userPresence:edit" else set()
    assert failed(found) == {check} | also
    assert missing in found[check].fix
    assert found[check].fatal


def test_an_orgs_checks_keep_their_channel_and_definitions_under_the_orgs_prefix(
    api, setup, redis_url
):
    settings, acme = setup(), "presence:org:acme"
    client = redis.Redis.from_url(redis_url)

    run_checks(settings, timeout_s=3, prefix=acme)
    run_checks(settings, timeout_s=3, prefix=acme)

    channels = [c for c in api.admin("GET", "/channels").json() if c["clientId"] == "doctor"]
    assert len(channels) == 1, "the org's channel is reused"
    assert client.get(f"{acme}:doctor:channel:{{doctor}}") == channels[0]["id"].encode()
    assert client.exists(f"{acme}:definitions")
    assert not client.exists("presence:doctor:channel:{doctor}", "presence:definitions")
    run_checks(settings, timeout_s=3)
    assert client.get("presence:doctor:channel:{doctor}") != channels[0]["id"].encode()


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


# -- what the checks spare the worker ------------------------------------------------------------
def test_the_definitions_read_serves_the_workers_catalog(api, setup, redis_url):
    import redis

    from worker.catalog import PresenceCatalog

    checks(setup())

    def fetch():
        raise AssertionError("the catalog fetched definitions the checks had read")

    catalog = PresenceCatalog(redis.Redis.from_url(redis_url), fetch)
    assert catalog.resolve("Break").primary


def test_the_agents_read_serves_the_first_page_of_the_fleets_listing(api, setup, redis_url):
    from worker.notifications.roster import Roster

    settings = setup()
    checks(settings)
    active = [u["id"] for u in api.admin("GET", "/users").json() if u["state"] == "active"]
    assert len(active) > 1

    def listing(limit, first):
        raise AssertionError("the fleet listed agents the checks had read")

    roster = Roster(redis.Redis.from_url(redis_url), key=settings.genesys_client_id)
    assert roster.active(len(active) + 5, listing) == active


def test_a_readable_primary_source_spares_the_org_settings_read(api, setup):
    add_client(api, "sources", SECRET, [*NEEDED, "presence:userPrimarySource:view"])

    found = checks(setup(genesys_client_id="sources"))

    requests = api.admin("GET", "/stats").json()["requests"]
    assert "presence.primarysource.get" in requests
    assert "presence.settings.get" not in requests
    assert found["presence source"].verdict is Verdict.OK
