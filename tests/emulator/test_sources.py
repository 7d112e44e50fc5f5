"""Registered presence sources, the org's primary source and writes through a source that is not
primary (they change that source only, with no event)."""

from __future__ import annotations

from emulator.sources import TEAMS_SOURCE_ID
from tests.conftest import Api
from tests.emulator._rest import assert_error
from tests.emulator.streaming import Stream, listen, offline_users, presence_topic

BREAK_ID = "227b37e2-f1d0-4dd0-8f50-badd7cf6d158"
SETTINGS = "/api/v2/presence/settings"


def make_primary(api: Api, source_id: str | None) -> None:
    response = api.http.put(SETTINGS, json={"defaultPrimaryPresenceRegisteredSourceId": source_id})
    assert response.status_code == 200, response.text


def effective(api: Api, user_id: str) -> dict:
    return api.http.get(f"/api/v2/users/{user_id}", params={"expand": "presence"}).json()[
        "presence"
    ]


def test_the_seeded_org_has_one_registered_source_and_purecloud_primary(api: Api) -> None:
    sources = api.http.get("/api/v2/presence/sources").json()
    assert [s["id"] for s in sources["entities"]] == [TEAMS_SOURCE_ID]
    assert "defaultPrimaryPresenceRegisteredSourceId" not in api.http.get(SETTINGS).json()


def test_a_registered_source_can_be_added_and_read(api: Api) -> None:
    added = api.http.post("/api/v2/presence/sources", json={"name": "Custom app"}).json()

    read = api.http.get(f"/api/v2/presence/sources/{added['id']}").json()

    assert read["name"] == "Custom app"


def test_writing_an_unregistered_source_is_a_400(api: Api) -> None:
    (user,) = offline_users(api, 1)

    response = api.http.patch(
        f"/api/v2/users/{user}/presences/not-registered",
        json={"presenceDefinition": {"id": BREAK_ID}},
    )

    assert_error(response, 400, "bad.request")


def test_purecloud_writes_where_an_integration_is_primary_change_nothing_effective(
    api: Api, streams: list[Stream]
) -> None:
    (user,) = offline_users(api, 1)
    make_primary(api, TEAMS_SOURCE_ID)
    _, stream = listen(api.http, streams, [presence_topic(user)])

    answer = api.http.patch(
        f"/api/v2/users/{user}/presences/purecloud", json={"presenceDefinition": {"id": BREAK_ID}}
    ).json()

    assert answer["primary"] is False
    assert answer["presenceDefinition"]["id"] == BREAK_ID, "the PURECLOUD presence changed"
    assert effective(api, user)["presenceDefinition"]["id"] != BREAK_ID
    assert [m for m in stream.messages_within(0.5) if m["topicName"] != "channel.metadata"] == []
    primary = api.http.get(f"/api/v2/presence/users/{user}/primarysource").json()
    assert primary["sourceId"] == TEAMS_SOURCE_ID


def test_writes_through_the_primary_source_are_effective_and_send_an_event(
    api: Api, streams: list[Stream]
) -> None:
    (user,) = offline_users(api, 1)
    make_primary(api, TEAMS_SOURCE_ID)
    _, stream = listen(api.http, streams, [presence_topic(user)])

    answer = api.http.patch(
        f"/api/v2/users/{user}/presences/{TEAMS_SOURCE_ID}",
        json={"presenceDefinition": {"id": BREAK_ID}},
    ).json()

    assert answer["primary"] is True
    assert answer["sourceId"] == TEAMS_SOURCE_ID
    assert effective(api, user)["presenceDefinition"]["id"] == BREAK_ID
    assert stream.next_event()["eventBody"]["source"] == TEAMS_SOURCE_ID


def test_bulk_put_takes_source_id_and_the_deprecated_source_alias(api: Api) -> None:
    a, b = offline_users(api, 2)
    make_primary(api, TEAMS_SOURCE_ID)

    answer = api.http.put(
        "/api/v2/users/presences/bulk",
        json=[
            {"id": a, "sourceId": TEAMS_SOURCE_ID, "presenceDefinition": {"id": BREAK_ID}},
            {"id": b, "source": TEAMS_SOURCE_ID, "presenceDefinition": {"id": BREAK_ID}},
        ],
    )

    assert answer.status_code == 200, answer.text
    assert [p["sourceId"] for p in answer.json()] == [TEAMS_SOURCE_ID, TEAMS_SOURCE_ID]
    assert effective(api, a)["presenceDefinition"]["id"] == BREAK_ID
    assert effective(api, b)["presenceDefinition"]["id"] == BREAK_ID


def test_bulk_put_with_an_unregistered_source_changes_no_one(api: Api) -> None:
    a, b = offline_users(api, 2)

    answer = api.http.put(
        "/api/v2/users/presences/bulk",
        json=[
            {"id": a, "presenceDefinition": {"id": BREAK_ID}},
            {"id": b, "sourceId": "nope", "presenceDefinition": {"id": BREAK_ID}},
        ],
    )

    body = assert_error(answer, 400, "bad.request")
    assert body["details"][0]["fieldName"] == "[1].sourceId"
    assert effective(api, a)["presenceDefinition"]["id"] != BREAK_ID


def test_a_users_primary_source_can_be_set_back_to_purecloud(api: Api) -> None:
    (user,) = offline_users(api, 1)
    make_primary(api, TEAMS_SOURCE_ID)

    answer = api.http.put(
        f"/api/v2/presence/users/{user}/primarysource", json={"sourceId": "PURECLOUD"}
    ).json()

    assert answer == {
        "id": user,
        "name": "PURECLOUD",
        "sourceId": "PURECLOUD",
        "registered": False,
        "selfUri": f"/api/v2/presence/users/{user}/primarysource",
    }
