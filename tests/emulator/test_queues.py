"""GET /api/v2/routing/queues, /queues/{id} and /queues/{id}/members (reference §6.2)."""

from __future__ import annotations

import pytest

from tests.emulator._rest import (
    UNKNOWN_ID,
    admin_users,
    all_pages,
    assert_error,
    client_with,
    field_names,
    set_presence,
)

QUEUES = "/api/v2/routing/queues"


def queue_ids(api) -> list[str]:
    return [q["id"] for q in all_pages(api.http, QUEUES)]


def members_path(queue_id: str) -> str:
    return f"{QUEUES}/{queue_id}/members"


def members(api, queue_id: str, **params) -> list[dict]:
    return all_pages(api.http, members_path(queue_id), pageSize=100, **params)


def live_members_of(api, queue_id: str) -> set[str]:
    """Members per the emulator's own data: users (not deleted) listing the queue."""
    return {
        u["id"] for u in admin_users(api) if queue_id in u["queues"] and u["state"] != "deleted"
    }


# -- queue listing and single queue -----------------------------------------------------------
def test_queue_listing_is_paged_with_totals(api):
    seeded = api.admin("GET", "/settings").json()["queues"]

    listing = api.http.get(QUEUES).json()

    assert listing["total"] == seeded
    assert len(listing["entities"]) == seeded
    assert listing["pageNumber"] == 1
    assert listing["pageCount"] == 1
    for queue in listing["entities"]:
        assert queue["selfUri"] == f"{QUEUES}/{queue['id']}"
        assert queue["name"]
        assert queue["joinedMemberCount"] <= queue["memberCount"]


def test_queue_listing_pages_by_page_size(api):
    first = api.http.get(QUEUES, params={"pageSize": 4}).json()
    second = api.http.get(first["nextUri"]).json()

    assert len(first["entities"]) == 4
    assert second["pageNumber"] == 2
    assert len(first["entities"]) + len(second["entities"]) == first["total"]


def test_queue_listing_filters_by_name(api):
    name = api.http.get(QUEUES).json()["entities"][0]["name"]

    listing = api.http.get(QUEUES, params={"name": f"{name[:4]}*"}).json()

    assert listing["entities"]
    assert all(q["name"].lower().startswith(name[:4].lower()) for q in listing["entities"])


def test_single_queue_equals_its_listing_entry(api):
    entry = api.http.get(QUEUES).json()["entities"][0]

    assert api.http.get(f"{QUEUES}/{entry['id']}").json() == entry


def test_an_unknown_queue_is_404(api):
    assert_error(api.http.get(f"{QUEUES}/{UNKNOWN_ID}"), 404, "not.found")


def test_member_counts_match_the_member_listing(api):
    for queue_id in queue_ids(api):
        queue = api.http.get(f"{QUEUES}/{queue_id}").json()
        listed = members(api, queue_id)

        assert queue["memberCount"] == len(listed)
        assert queue["joinedMemberCount"] == sum(1 for m in listed if m["joined"])


# -- members ----------------------------------------------------------------------------------
def test_members_listing_has_paging_links_but_no_total(api):
    queue_id = queue_ids(api)[0]

    listing = api.http.get(members_path(queue_id), params={"pageSize": 10}).json()

    assert listing["pageSize"] == 10
    assert listing["pageNumber"] == 1
    assert listing["firstUri"].startswith(members_path(queue_id))
    assert listing["selfUri"].startswith(members_path(queue_id))
    assert "nextUri" in listing
    for absent in ("total", "pageCount", "lastUri"):
        assert absent not in listing


def test_member_entries_are_queue_members(api):
    queue_id = queue_ids(api)[0]

    member = api.http.get(members_path(queue_id)).json()["entities"][0]

    assert member["user"]["id"] == member["id"]
    assert member["name"] == member["user"]["name"]
    assert member["memberBy"] == "user"
    assert member["ringNumber"] == 1
    assert isinstance(member["joined"], bool)
    assert member["selfUri"] == f"{members_path(queue_id)}/{member['id']}"


def test_members_are_the_emulators_members_of_the_queue(api):
    for queue_id in queue_ids(api):
        assert {m["id"] for m in members(api, queue_id)} == live_members_of(api, queue_id)


def test_walking_member_pages_visits_each_member_once(api):
    queue_id = queue_ids(api)[0]

    walked = [m["id"] for m in all_pages(api.http, members_path(queue_id), pageSize=7)]

    assert len(walked) == len(set(walked))
    assert set(walked) == live_members_of(api, queue_id)


def test_members_page_size_allows_100(api):
    queue_id = queue_ids(api)[0]

    assert api.http.get(members_path(queue_id), params={"pageSize": 100}).status_code == 200


def test_members_page_size_over_100_is_400(api):
    queue_id = queue_ids(api)[0]

    body = assert_error(
        api.http.get(members_path(queue_id), params={"pageSize": 101}), 400, "bad.request"
    )

    assert field_names(body) == ["pageSize"]


@pytest.mark.parametrize("joined", [True, False])
def test_members_joined_filter(api, joined):
    queue_id = queue_ids(api)[0]
    every = members(api, queue_id)

    filtered = members(api, queue_id, joined=str(joined).lower())

    assert filtered
    assert {m["joined"] for m in filtered} == {joined}
    assert {m["id"] for m in filtered} == {m["id"] for m in every if m["joined"] is joined}


def test_members_joined_filter_survives_paging(api):
    queue_id = queue_ids(api)[0]

    walked = all_pages(api.http, members_path(queue_id), pageSize=3, joined="false")

    assert walked
    assert {m["joined"] for m in walked} == {False}


def test_members_with_a_bad_joined_value_is_400(api):
    queue_id = queue_ids(api)[0]

    assert_error(api.http.get(members_path(queue_id), params={"joined": "1"}), 400, "bad.request")


def test_members_without_expand_carry_no_presence_or_routing_status(api):
    member = api.http.get(members_path(queue_ids(api)[0])).json()["entities"][0]

    assert "presence" not in member["user"]
    assert "routingStatus" not in member


def test_members_expand_presence_on_the_user_and_routing_status_on_the_member(api):
    queue_id = queue_ids(api)[0]
    truth = {u["id"]: u for u in admin_users(api)}

    listed = members(api, queue_id, expand="presence,routingStatus")

    for member in listed:
        expected = truth[member["id"]]
        definition = member["user"]["presence"]["presenceDefinition"]
        assert definition["systemPresence"] == expected["systemPresence"]
        assert member["routingStatus"]["status"] == expected["routingStatus"]
        assert member["routingStatus"]["userId"] == member["id"]


def test_members_expanded_presence_follows_changes(api):
    queue_id = queue_ids(api)[0]
    member_id = members(api, queue_id, joined="true")[0]["id"]
    set_presence(api, member_id, "On Queue")

    listed = {m["id"]: m for m in members(api, queue_id, expand="presence,routingStatus")}

    assert listed[member_id]["user"]["presence"]["presenceDefinition"]["systemPresence"] == (
        "On Queue"
    )
    assert listed[member_id]["routingStatus"]["status"] in ("IDLE", "INTERACTING")


def test_members_of_an_unknown_queue_is_404(api):
    assert_error(api.http.get(members_path(UNKNOWN_ID)), 404, "not.found")


def test_queue_endpoints_need_routing_queue_view(api):
    queue_id = queue_ids(api)[0]

    with client_with(api, ["presence:userPresence:edit"]) as limited:
        responses = [
            limited.get(QUEUES),
            limited.get(f"{QUEUES}/{queue_id}"),
            limited.get(members_path(queue_id)),
        ]

    for response in responses:
        body = assert_error(response, 403, "missing.any.permissions")
        assert body["messageParams"] == {"0": "routing:queue:view"}
