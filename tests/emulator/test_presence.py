"""Presence definitions and user presence reads and writes, single and bulk (reference §2)."""

from __future__ import annotations

import time

import pytest

from emulator.sources import TEAMS_SOURCE_ID
from tests.emulator._rest import (
    AVAILABLE_ID,
    BREAK_ID,
    OFFLINE_ID,
    ON_QUEUE_ID,
    UNKNOWN_ID,
    assert_error,
    changed_settings,
    client_with,
    field_names,
    history,
    set_presence,
    users_in_state,
)

LEGACY = "/api/v2/presencedefinitions"
DEFINITIONS = "/api/v2/presence/definitions"
BULK = "/api/v2/users/presences/bulk"
BULK_GET = "/api/v2/users/presences/purecloud/bulk"
# The integration every seeded org has registered (not primary).
INTEGRATION = TEAMS_SOURCE_ID
SYSTEM_PRESENCES = {
    "Available", "Away", "Busy", "Offline", "Idle", "On Queue", "Meal", "Training", "Meeting",
    "Break",
}  # fmt: skip


def presence_path(user_id: str, source: str = "purecloud") -> str:
    return f"/api/v2/users/{user_id}/presences/{source}"


def active_ids(api, count: int) -> list[str]:
    return [u["id"] for u in users_in_state(api, "active")[:count]]


def definitions_by_label(api, *, deactivated: bool = False) -> dict[str, dict]:
    listing = api.http.get(DEFINITIONS, params={"deactivated": str(deactivated).lower()}).json()
    return {d["name"]: d for d in listing["entities"]}


def a_deactivated_definition(api) -> dict:
    listing = api.http.get(DEFINITIONS, params={"deactivated": "true"}).json()
    return next(d for d in listing["entities"] if d["deactivated"])


def current_definition_id(api, user_id: str) -> str:
    return api.http.get(presence_path(user_id)).json()["presenceDefinition"]["id"]


def patch(api, user_id: str, body, source: str = "purecloud"):
    return api.http.patch(presence_path(user_id, source), json=body)


def to(definition_id: str) -> dict:
    return {"presenceDefinition": {"id": definition_id}}


# -- legacy definitions: /api/v2/presencedefinitions ------------------------------------------
def test_legacy_listing_is_paged_and_lists_active_definitions(api):
    listing = api.http.get(LEGACY).json()

    assert listing["pageNumber"] == 1
    assert listing["pageSize"] == 25
    assert listing["total"] == len(listing["entities"])
    assert listing["pageCount"] == 1
    assert listing["selfUri"].startswith(LEGACY)
    assert all(d["deactivated"] is False for d in listing["entities"])


def test_legacy_listing_spells_system_presences_in_title_case_with_primary_flags(api):
    entities = api.http.get(LEGACY).json()["entities"]

    primary = {d["systemPresence"]: d for d in entities if d["primary"]}
    secondary = [d for d in entities if not d["primary"]]

    assert set(primary) == SYSTEM_PRESENCES
    assert primary["On Queue"]["id"] == ON_QUEUE_ID
    assert primary["On Queue"]["languageLabels"] == {"en_US": "On Queue"}
    assert primary["Available"]["id"] == AVAILABLE_ID
    assert secondary
    assert {d["systemPresence"] for d in secondary} <= SYSTEM_PRESENCES
    assert all("type" not in d for d in entities)


def test_legacy_listing_pages_with_page_size(api):
    first = api.http.get(LEGACY, params={"pageSize": 5}).json()
    second = api.http.get(first["nextUri"]).json()

    assert len(first["entities"]) == 5
    assert first["pageCount"] == -(-first["total"] // 5)
    assert second["pageNumber"] == 2
    assert not {d["id"] for d in first["entities"]} & {d["id"] for d in second["entities"]}


@pytest.mark.parametrize(("deleted", "deactivated"), [("true", {True}), ("false", {False})])
def test_legacy_deleted_parameter_selects_deactivated_definitions(api, deleted, deactivated):
    entities = api.http.get(LEGACY, params={"deleted": deleted}).json()["entities"]

    assert entities
    assert {d["deactivated"] for d in entities} == deactivated


def test_legacy_deleted_all_lists_both(api):
    every = api.http.get(LEGACY, params={"deleted": "all", "pageSize": 100}).json()
    active = api.http.get(LEGACY, params={"deleted": "false", "pageSize": 100}).json()
    gone = api.http.get(LEGACY, params={"deleted": "true", "pageSize": 100}).json()

    assert every["total"] == active["total"] + gone["total"]


def test_legacy_deleted_with_a_bad_value_is_400(api):
    body = assert_error(api.http.get(LEGACY, params={"deleted": "maybe"}), 400, "bad.request")

    assert field_names(body) == ["deleted"]


def test_legacy_single_definition(api):
    body = api.http.get(f"{LEGACY}/{ON_QUEUE_ID}").json()

    assert body["id"] == ON_QUEUE_ID
    assert body["systemPresence"] == "On Queue"
    assert body["primary"] is True
    assert body["selfUri"] == f"{LEGACY}/{ON_QUEUE_ID}"


def test_legacy_single_unknown_definition_is_404(api):
    assert_error(api.http.get(f"{LEGACY}/{UNKNOWN_ID}"), 404, "not.found")


# -- new definitions: /api/v2/presence/definitions --------------------------------------------
def test_definitions_listing_has_total_and_entities_but_no_paging(api):
    listing = api.http.get(DEFINITIONS).json()

    assert listing["total"] == len(listing["entities"])
    assert listing["selfUri"] == DEFINITIONS
    assert "pageSize" not in listing
    assert all(d["deactivated"] is False for d in listing["entities"])


def test_definitions_are_typed_system_or_user_and_spell_on_queue_as_one_word(api):
    entities = api.http.get(DEFINITIONS).json()["entities"]

    system = {d["systemPresence"]: d for d in entities if d["type"] == "System"}
    user = [d for d in entities if d["type"] == "User"]

    assert set(system) == {p.replace(" ", "") for p in SYSTEM_PRESENCES}
    assert system["OnQueue"]["id"] == ON_QUEUE_ID
    assert user
    assert all(d["divisionId"] for d in user)
    assert {d["type"] for d in entities} == {"System", "User"}
    assert all("primary" not in d for d in entities)


def test_definitions_deactivated_true_adds_the_deactivated_ones(api):
    active = api.http.get(DEFINITIONS).json()
    every = api.http.get(DEFINITIONS, params={"deactivated": "true"}).json()

    added = [d for d in every["entities"] if d["id"] not in {e["id"] for e in active["entities"]}]

    assert added
    assert all(d["deactivated"] is True for d in added)
    assert every["total"] == active["total"] + len(added)


def test_definitions_deactivated_with_a_bad_value_is_400(api):
    assert_error(api.http.get(DEFINITIONS, params={"deactivated": "yes"}), 400, "bad.request")


def test_single_definition(api):
    body = api.http.get(f"{DEFINITIONS}/{ON_QUEUE_ID}").json()

    assert body["type"] == "System"
    assert body["systemPresence"] == "OnQueue"
    assert body["selfUri"] == f"{DEFINITIONS}/{ON_QUEUE_ID}"


def test_single_unknown_definition_is_404(api):
    assert_error(api.http.get(f"{DEFINITIONS}/{UNKNOWN_ID}"), 404, "not.found")


def test_definitions_need_presence_definition_view(api):
    with client_with(api, ["presence:userPresence:edit"]) as limited:
        listing = limited.get(DEFINITIONS)
        single = limited.get(f"{DEFINITIONS}/{ON_QUEUE_ID}")
        legacy = limited.get(LEGACY)

    assert_error(listing, 403, "missing.any.permissions")
    assert_error(single, 403, "missing.any.permissions")
    assert legacy.status_code == 200, "the deprecated listing lists no permission"


# -- one user's presence ----------------------------------------------------------------------
def test_get_purecloud_presence_is_a_user_presence(api):
    user_id = active_ids(api, 1)[0]
    set_presence(api, user_id, "On Queue")

    body = api.http.get(presence_path(user_id)).json()

    assert body["id"] == user_id
    assert body["source"] == "PURECLOUD"
    assert body["primary"] is True
    assert body["presenceDefinition"] == {
        "id": ON_QUEUE_ID,
        "systemPresence": "On Queue",
        "selfUri": f"{LEGACY}/{ON_QUEUE_ID}",
    }
    assert body["modifiedDate"].endswith("Z")
    assert body["selfUri"] == f"/api/v2/users/{user_id}/presences"


def test_get_presence_source_name_is_case_insensitive(api):
    user_id = active_ids(api, 1)[0]

    assert api.http.get(presence_path(user_id, "PURECLOUD")).json()["source"] == "PURECLOUD"


def test_get_presence_of_an_unknown_user_is_404(api):
    assert_error(api.http.get(presence_path(UNKNOWN_ID)), 404, "not.found")


def test_get_presence_of_a_deleted_user_is_404(api):
    user_id = users_in_state(api, "deleted")[0]["id"]

    assert_error(api.http.get(presence_path(user_id)), 404, "not.found")


def test_get_presence_for_a_source_the_user_never_had_is_404(api):
    user_id = active_ids(api, 1)[0]

    assert_error(api.http.get(presence_path(user_id, INTEGRATION)), 404, "not.found")


def test_patch_definition_sets_the_presence(api):
    user_id = active_ids(api, 1)[0]
    set_presence(api, user_id, "Offline")

    response = patch(api, user_id, to(ON_QUEUE_ID))

    assert response.status_code == 200
    assert response.json()["presenceDefinition"]["id"] == ON_QUEUE_ID
    assert response.json()["presenceDefinition"]["systemPresence"] == "On Queue"
    assert current_definition_id(api, user_id) == ON_QUEUE_ID


def test_patch_is_recorded_with_its_correlation_id(api):
    user_id = active_ids(api, 1)[0]

    response = patch(api, user_id, to(BREAK_ID))

    last = history(api, user_id)[-1]
    assert last["path"] == "patch"
    assert last["definitionId"] == BREAK_ID
    assert last["correlationId"] == response.headers["inin-correlation-id"]
    assert last["clientId"] == api.emulator.client_id


def test_patch_a_secondary_definition_reports_its_system_presence(api):
    user_id = active_ids(api, 1)[0]
    lunch = definitions_by_label(api)["Lunch"]

    body = patch(api, user_id, to(lunch["id"])).json()

    assert body["presenceDefinition"]["id"] == lunch["id"]
    assert body["presenceDefinition"]["systemPresence"] == "Meal"
    assert body["name"] == "Lunch"


def test_patch_message_only_keeps_the_definition(api):
    user_id = active_ids(api, 1)[0]
    set_presence(api, user_id, "Break")

    body = patch(api, user_id, {"message": "back at 3"}).json()

    assert body["presenceDefinition"]["id"] == BREAK_ID
    assert body["message"] == "back at 3"
    assert api.http.get(presence_path(user_id)).json()["message"] == "back at 3"


def test_patch_definition_and_message_together(api):
    user_id = active_ids(api, 1)[0]

    body = patch(api, user_id, {**to(AVAILABLE_ID), "message": "hello"}).json()

    assert body["presenceDefinition"]["id"] == AVAILABLE_ID
    assert body["message"] == "hello"


def test_patch_ignores_unknown_fields(api):
    user_id = active_ids(api, 1)[0]

    response = patch(api, user_id, {**to(AVAILABLE_ID), "futureField": {"x": 1}})

    assert response.status_code == 200


def test_patch_a_custom_source_creates_it_without_touching_purecloud(api):
    user_id = active_ids(api, 1)[0]
    set_presence(api, user_id, "Available")

    body = patch(api, user_id, to(BREAK_ID), source=INTEGRATION).json()

    assert body["sourceId"] == INTEGRATION
    assert "source" not in body
    assert body["primary"] is False
    assert body["presenceDefinition"]["id"] == BREAK_ID
    read = api.http.get(presence_path(user_id, INTEGRATION)).json()
    assert read["presenceDefinition"]["id"] == BREAK_ID
    assert current_definition_id(api, user_id) == AVAILABLE_ID


def test_patch_primary_true_makes_a_custom_source_the_effective_presence(api):
    user_id = active_ids(api, 1)[0]
    set_presence(api, user_id, "Available")

    body = patch(api, user_id, {**to(ON_QUEUE_ID), "primary": True}, source=INTEGRATION).json()

    assert body["primary"] is True
    user = api.http.get(
        f"/api/v2/users/{user_id}", params={"expand": "presence,routingStatus"}
    ).json()
    assert user["presence"]["sourceId"] == INTEGRATION
    assert user["presence"]["presenceDefinition"]["id"] == ON_QUEUE_ID
    assert user["routingStatus"]["status"] == "IDLE"
    assert api.http.get(presence_path(user_id)).json()["primary"] is False


def test_patch_primary_alone_switches_the_primary_source_back(api):
    user_id = active_ids(api, 1)[0]
    patch(api, user_id, {**to(BREAK_ID), "primary": True}, source=INTEGRATION)

    body = patch(api, user_id, {"primary": True}).json()

    assert body["primary"] is True
    assert body["source"] == "PURECLOUD"
    user = api.http.get(f"/api/v2/users/{user_id}", params={"expand": "presence"}).json()
    assert user["presence"]["source"] == "PURECLOUD"


def test_patch_an_unknown_definition_is_400_and_changes_nothing(api):
    user_id = active_ids(api, 1)[0]
    before = current_definition_id(api, user_id)

    body = assert_error(patch(api, user_id, to(UNKNOWN_ID)), 400, "bad.request")

    assert body["details"] == [
        {"errorCode": "bad.request", "fieldName": "presenceDefinition.id", "entityId": UNKNOWN_ID}
    ]
    assert current_definition_id(api, user_id) == before


def test_patch_a_deactivated_definition_is_400(api):
    user_id = active_ids(api, 1)[0]
    deactivated = a_deactivated_definition(api)

    body = assert_error(patch(api, user_id, to(deactivated["id"])), 400, "bad.request")

    assert "deactivated" in body["message"]
    assert field_names(body) == ["presenceDefinition.id"]


def test_patch_an_unknown_user_is_404(api):
    assert_error(patch(api, UNKNOWN_ID, to(AVAILABLE_ID)), 404, "not.found")


def test_patch_a_deleted_user_is_404(api):
    user_id = users_in_state(api, "deleted")[0]["id"]

    assert_error(patch(api, user_id, to(AVAILABLE_ID)), 404, "not.found")


def test_patch_an_inactive_user_is_400(api):
    user_id = users_in_state(api, "inactive")[0]["id"]

    body = assert_error(patch(api, user_id, to(AVAILABLE_ID)), 400, "bad.request")

    assert "inactive" in body["message"]


def test_patch_an_empty_body_is_400(api):
    user_id = active_ids(api, 1)[0]

    assert_error(patch(api, user_id, {}), 400, "bad.request")


def test_patch_a_definition_without_id_is_400_naming_the_field(api):
    user_id = active_ids(api, 1)[0]

    body = assert_error(patch(api, user_id, {"presenceDefinition": {}}), 400, "bad.request")

    assert field_names(body) == ["presenceDefinition.id"]


def test_patch_needs_user_presence_edit_and_changes_nothing_without_it(api):
    user_id = active_ids(api, 1)[0]
    set_presence(api, user_id, "Offline")

    with client_with(api, ["presence:presenceDefinition:view"]) as limited:
        body = assert_error(
            limited.patch(presence_path(user_id), json=to(ON_QUEUE_ID)),
            403,
            "missing.any.permissions",
        )
        reading = limited.get(presence_path(user_id))

    assert body["messageParams"] == {"0": "presence:userPresence:edit"}
    assert reading.status_code == 200, "reading a presence needs no permission"
    assert current_definition_id(api, user_id) == OFFLINE_ID


# -- bulk GET ---------------------------------------------------------------------------------
def test_bulk_get_returns_one_presence_per_known_user(api):
    a, b = active_ids(api, 2)
    set_presence(api, a, "On Queue")
    set_presence(api, b, "Break")

    body = api.http.get(BULK_GET, params={"id": f"{a},{b},{UNKNOWN_ID}"}).json()

    by_user = {p["userId"]: p for p in body}
    assert set(by_user) == {a, b}
    assert by_user[a]["presenceDefinition"]["id"] == ON_QUEUE_ID
    assert by_user[b]["presenceDefinition"]["id"] == BREAK_ID
    assert by_user[a]["source"] == "PURECLOUD"


def test_bulk_get_accepts_repeated_id_parameters(api):
    a, b = active_ids(api, 2)

    body = api.http.get(BULK_GET, params=[("id", a), ("id", b)]).json()

    assert {p["userId"] for p in body} == {a, b}


def test_bulk_get_reads_50_users(api):
    wanted = active_ids(api, 50)

    body = api.http.get(BULK_GET, params={"id": ",".join(wanted)}).json()

    assert {p["userId"] for p in body} == set(wanted)


def test_bulk_get_over_50_ids_is_400(api):
    wanted = active_ids(api, 51)

    body = assert_error(api.http.get(BULK_GET, params={"id": ",".join(wanted)}), 400, "bad.request")

    assert field_names(body) == ["id"]


def test_bulk_get_without_ids_is_400(api):
    assert_error(api.http.get(BULK_GET), 400, "bad.request")


def test_bulk_get_for_a_custom_source_lists_only_users_with_that_source(api):
    a, b = active_ids(api, 2)
    patch(api, a, to(BREAK_ID), source=INTEGRATION)

    body = api.http.get(
        f"/api/v2/users/presences/{INTEGRATION}/bulk", params={"id": f"{a},{b}"}
    ).json()

    assert [p["userId"] for p in body] == [a]
    assert body[0]["sourceId"] == INTEGRATION


# -- bulk PUT ---------------------------------------------------------------------------------
def test_bulk_put_sets_every_listed_presence_and_returns_them(api):
    users = active_ids(api, 3)
    targets = dict(zip(users, [ON_QUEUE_ID, BREAK_ID, AVAILABLE_ID], strict=True))
    body = [{"id": u, "source": "PURECLOUD", **to(d)} for u, d in targets.items()]

    response = api.http.put(BULK, json=body)

    assert response.status_code == 200
    returned = response.json()
    assert isinstance(returned, list)
    assert [p["id"] for p in returned] == users
    assert [p["presenceDefinition"]["id"] for p in returned] == list(targets.values())
    for user_id, definition_id in targets.items():
        assert current_definition_id(api, user_id) == definition_id


def test_bulk_put_history_records_the_bulk_path_and_the_correlation_id(api):
    users = active_ids(api, 2)

    response = api.http.put(BULK, json=[{"id": u, **to(BREAK_ID)} for u in users])

    for user_id in users:
        last = history(api, user_id)[-1]
        assert last["path"] == "bulk"
        assert last["definitionId"] == BREAK_ID
        assert last["correlationId"] == response.headers["inin-correlation-id"]


def test_bulk_put_with_message_and_source_id(api):
    user_id = active_ids(api, 1)[0]

    body = api.http.put(
        BULK,
        json=[{"id": user_id, "sourceId": INTEGRATION, "message": "hi", **to(BREAK_ID)}],
    ).json()

    assert body[0]["sourceId"] == INTEGRATION
    assert body[0]["message"] == "hi"
    read = api.http.get(presence_path(user_id, INTEGRATION)).json()
    assert read["presenceDefinition"]["id"] == BREAK_ID


def test_bulk_put_accepts_exactly_bulk_max_users(api):
    users = active_ids(api, 50)

    response = api.http.put(BULK, json=[{"id": u, **to(AVAILABLE_ID)} for u in users])

    assert response.status_code == 200
    assert len(response.json()) == 50


def test_bulk_put_over_bulk_max_is_400_and_applies_nothing(api):
    users = active_ids(api, 51)
    for user_id in users:
        set_presence(api, user_id, "Offline")

    response = api.http.put(BULK, json=[{"id": u, **to(AVAILABLE_ID)} for u in users])

    body = assert_error(response, 400, "bad.request")
    assert "50" in body["message"]
    assert {current_definition_id(api, u) for u in users} == {OFFLINE_ID}


def test_bulk_max_setting_changes_the_cap(api):
    users = active_ids(api, 6)

    with changed_settings(api, bulk_max=5):
        too_many = api.http.put(BULK, json=[{"id": u, **to(AVAILABLE_ID)} for u in users])
        just_right = api.http.put(BULK, json=[{"id": u, **to(AVAILABLE_ID)} for u in users[:5]])

    assert_error(too_many, 400, "bad.request")
    assert just_right.status_code == 200


def test_bulk_put_is_all_or_nothing_and_names_every_bad_index(api):
    users = active_ids(api, 4)
    for user_id in users:
        set_presence(api, user_id, "Offline")
    body = [
        {"id": users[0], **to(ON_QUEUE_ID)},
        {"id": UNKNOWN_ID, **to(ON_QUEUE_ID)},
        {"id": users[2], **to(UNKNOWN_ID)},
        {"id": users[3], **to(ON_QUEUE_ID)},
    ]

    error = assert_error(api.http.put(BULK, json=body), 400, "bad.request")

    assert error["details"] == [
        {"errorCode": "not.found", "fieldName": "[1].id", "entityId": UNKNOWN_ID},
        {
            "errorCode": "bad.request",
            "fieldName": "[2].presenceDefinition.id",
            "entityId": UNKNOWN_ID,
        },
    ]
    assert {current_definition_id(api, u) for u in users} == {OFFLINE_ID}
    assert all(history(api, u)[-1]["path"] == "admin" for u in users)


def test_bulk_put_rejects_duplicate_users(api):
    user_id = active_ids(api, 1)[0]
    set_presence(api, user_id, "Offline")

    body = assert_error(
        api.http.put(BULK, json=[{"id": user_id, **to(AVAILABLE_ID)}] * 2), 400, "bad.request"
    )

    assert field_names(body) == ["[1].id"]
    assert current_definition_id(api, user_id) == OFFLINE_ID


def test_bulk_put_rejects_a_deactivated_definition(api):
    user_id = active_ids(api, 1)[0]
    deactivated = a_deactivated_definition(api)

    body = assert_error(
        api.http.put(BULK, json=[{"id": user_id, **to(deactivated["id"])}]), 400, "bad.request"
    )

    assert field_names(body) == ["[0].presenceDefinition.id"]


def test_bulk_put_rejects_inactive_and_deleted_users(api):
    inactive = users_in_state(api, "inactive")[0]["id"]
    deleted = users_in_state(api, "deleted")[0]["id"]

    body = assert_error(
        api.http.put(
            BULK, json=[{"id": inactive, **to(AVAILABLE_ID)}, {"id": deleted, **to(AVAILABLE_ID)}]
        ),
        400,
        "bad.request",
    )

    assert field_names(body) == ["[0].id", "[1].id"]


def test_bulk_put_names_the_element_with_a_wrong_type(api):
    user_id = active_ids(api, 1)[0]

    body = assert_error(
        api.http.put(BULK, json=[{"id": user_id, **to(AVAILABLE_ID)}, {"id": user_id}]),
        400,
        "bad.request",
    )

    assert field_names(body) == ["[1].presenceDefinition"]


@pytest.mark.parametrize("payload", [[], {"id": "x"}, "users"])
def test_bulk_put_needs_a_non_empty_array(api, payload):
    assert_error(api.http.put(BULK, json=payload), 400, "bad.request")


def test_bulk_put_needs_user_presence_edit(api):
    user_id = active_ids(api, 1)[0]

    with client_with(api, ["presence:presenceDefinition:view"]) as limited:
        response = limited.put(BULK, json=[{"id": user_id, **to(AVAILABLE_ID)}])

    assert_error(response, 403, "missing.any.permissions")


def test_a_deferred_change_shows_as_future_presence_then_applies(api):
    api.admin("PUT", "/settings", {"presence_defer_s": 0.5})
    user_id = active_ids(api, 1)[0]
    set_presence(api, user_id, "Available")

    body = patch(api, user_id, to(BREAK_ID)).json()

    assert body["futurePresenceDefinition"]["id"] == BREAK_ID
    assert body["presenceDefinition"]["id"] != BREAK_ID
    time.sleep(0.8)
    after = api.http.get(presence_path(user_id)).json()
    assert after["presenceDefinition"]["id"] == BREAK_ID
    assert "futurePresenceDefinition" not in after
