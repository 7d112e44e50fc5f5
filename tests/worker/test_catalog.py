"""PresenceCatalog: request names → presence definition ids, from the org's real definitions.

Definitions come from the emulator through the runtime's client and are shared in Redis.
"""

from __future__ import annotations

import pytest

from tests.worker.conftest import SYSTEM_IDS, route_count
from worker import catalog as catalog_module
from worker.catalog import PresenceCatalog, UnknownPresence


@pytest.fixture
def catalog(runtime) -> PresenceCatalog:
    return runtime.catalog


@pytest.fixture
def labels(api) -> dict[str, str]:
    """Definition label → id, as the org serves them."""
    answer = api.http.get("/api/v2/presence/definitions", params={"deactivated": "true"})
    return {d["name"]: d["id"] for d in answer.json()["entities"]}


@pytest.mark.parametrize(
    ("spelling", "system"),
    [
        ("On Queue", "On Queue"),
        ("OnQueue", "On Queue"),
        ("ON_QUEUE", "On Queue"),
        ("on queue", "On Queue"),
        ("on-queue", "On Queue"),
        ("available", "Available"),
        ("AVAILABLE", "Available"),
        ("Break", "Break"),
        ("offline", "Offline"),
    ],
)
def test_system_presences_resolve_in_every_spelling(catalog, spelling, system):
    definition = catalog.resolve(spelling)

    assert definition.id == SYSTEM_IDS[system]
    assert definition.primary


def test_org_labels_resolve_to_their_secondary_presence(catalog, labels):
    coffee = catalog.resolve("Coffee")
    team_meeting = catalog.resolve("team meeting")

    assert coffee.id == labels["Coffee"]
    assert coffee.system == "break"
    assert not coffee.primary
    assert team_meeting.id == labels["Team Meeting"]


def test_definition_ids_resolve_to_themselves(catalog, labels):
    assert catalog.resolve(labels["Lunch"]).label == "Lunch"
    assert catalog.resolve(SYSTEM_IDS["On Queue"]).label == "On Queue"


def test_state_plus_reason_picks_the_secondary_presence_of_that_state(catalog, labels):
    assert catalog.resolve("Break", "Coffee").id == labels["Coffee"]
    assert catalog.resolve("MEAL", "lunch").id == labels["Lunch"]


def test_an_unknown_state_names_the_options(catalog):
    with pytest.raises(UnknownPresence) as caught:
        catalog.resolve("Brake")

    message = str(caught.value)
    assert "Unknown state 'Brake'" in message
    for option in ("Available", "Break", "On Queue", "Coffee", "Lunch"):
        assert option in message
    assert "Smoke Break" not in message, "deactivated presences are not offered"


def test_an_unknown_reason_names_the_reasons_of_that_state(catalog):
    with pytest.raises(UnknownPresence) as caught:
        catalog.resolve("Break", "Tea")

    message = str(caught.value)
    assert "Unknown reason 'Tea' for state 'Break'" in message
    assert "reasons for Break: Coffee" in message
    assert "Smoke Break" not in message
    assert "Lunch" not in message, "only reasons of Break are offered"


def test_a_reason_for_a_state_without_reasons_says_so(catalog):
    with pytest.raises(UnknownPresence, match="Offline has no reasons"):
        catalog.resolve("Offline", "Coffee")


@pytest.mark.parametrize(
    ("state", "reason"), [("Smoke Break", None), ("Break", "Smoke Break"), ("Legacy Lunch", None)]
)
def test_a_deactivated_presence_is_refused(catalog, state, reason):
    with pytest.raises(UnknownPresence, match="is deactivated in this org"):
        catalog.resolve(state, reason)


def test_definitions_are_fetched_once_and_shared_through_redis(api, runtime):
    first_process = runtime.catalog
    second_process = PresenceCatalog(runtime.redis, runtime.client.presence_definitions)

    first_process.resolve("Available")
    first_process.resolve("Coffee")
    second_process.resolve("Break", "Coffee")
    assert second_process.by_id(SYSTEM_IDS["Offline"]) is not None

    assert route_count(api, "presence.definitions.list") == 1


def test_definitions_are_fetched_again_once_the_shared_copy_expires(api, runtime):
    now = [0.0]
    catalog = PresenceCatalog(
        runtime.redis, runtime.client.presence_definitions, ttl_s=600, clock=lambda: now[0]
    )
    catalog.resolve("Available")
    runtime.redis.delete("presence:definitions")  # what the Redis TTL does after ttl_s

    now[0] += 30  # within the in-process cache
    catalog.resolve("Available")
    assert route_count(api, "presence.definitions.list") == 1

    now[0] += 60  # the in-process copy is stale and Redis has none: fetch again
    catalog.resolve("Available")
    assert route_count(api, "presence.definitions.list") == 2


def entity(definition_id: str, system: str, label: str) -> dict[str, object]:
    return {
        "id": definition_id,
        "type": "User",
        "systemPresence": system,
        "languageLabels": {"en_US": label},
        "deactivated": False,
    }


def test_two_orgs_keep_their_own_definitions(api, runtime):
    acme_prefix = "presence:org:acme"

    def never() -> list[object]:
        raise AssertionError("the seeded definitions were not used")

    assert catalog_module.seed(
        runtime.redis, [entity("acme-coffee", "Break", "Espresso")], prefix=acme_prefix
    )
    acme = PresenceCatalog(runtime.redis, never, prefix=acme_prefix)

    assert [d.label for d in acme.definitions()] == ["Espresso"]
    assert runtime.catalog.resolve("Coffee").id != "acme-coffee", "read from the default org"
    assert route_count(api, "presence.definitions.list") == 1
    assert not catalog_module.seed(runtime.redis, [], prefix=acme_prefix), "one stored already"
    with pytest.raises(UnknownPresence):
        acme.resolve("Coffee")
    assert runtime.redis.exists("presence:definitions", f"{acme_prefix}:definitions") == 2
