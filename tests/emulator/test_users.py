"""GET /api/v2/users, /users/{id} and /users/{id}/queues (reference §3.1, §3.2)."""

from __future__ import annotations

import math

import pytest

from tests.emulator._rest import (
    admin_users,
    all_pages,
    assert_error,
    client_with,
    field_names,
    users_in_state,
)

USERS = "/api/v2/users"


def ids(entities) -> list[str]:
    return [e["id"] for e in entities]


def queue_memberships(api, user_id: str) -> dict[str, bool]:
    """queue id → joined for one user, read from the queue members listings."""
    out: dict[str, bool] = {}
    for queue in all_pages(api.http, "/api/v2/routing/queues"):
        for member in all_pages(api.http, f"/api/v2/routing/queues/{queue['id']}/members"):
            if member["id"] == user_id:
                out[queue["id"]] = member["joined"]
    return out


def user_with_an_unjoined_queue(api) -> tuple[str, dict[str, bool]]:
    for user in users_in_state(api, "active"):
        memberships = queue_memberships(api, user["id"])
        if not all(memberships.values()) and any(memberships.values()):
            return user["id"], memberships
    pytest.fail("the seeded org has no active user with both joined and unjoined queues")


# -- listing and paging -----------------------------------------------------------------------
def test_listing_defaults_to_active_users_25_per_page(api):
    active = users_in_state(api, "active")

    listing = api.http.get(USERS).json()

    assert listing["pageSize"] == 25
    assert listing["pageNumber"] == 1
    assert listing["total"] == len(active)
    assert listing["pageCount"] == math.ceil(len(active) / 25)
    assert len(listing["entities"]) == 25
    assert {e["state"] for e in listing["entities"]} == {"active"}
    assert listing["firstUri"] == f"{USERS}?pageSize=25&pageNumber=1"
    assert listing["selfUri"] == f"{USERS}?pageSize=25&pageNumber=1"
    assert listing["nextUri"] == f"{USERS}?pageSize=25&pageNumber=2"
    assert listing["lastUri"] == f"{USERS}?pageSize=25&pageNumber={listing['pageCount']}"
    assert "previousUri" not in listing


def test_a_middle_page_links_both_ways(api):
    listing = api.http.get(USERS, params={"pageSize": 10, "pageNumber": 3}).json()

    assert listing["pageNumber"] == 3
    assert listing["previousUri"] == f"{USERS}?pageSize=10&pageNumber=2"
    assert listing["nextUri"] == f"{USERS}?pageSize=10&pageNumber=4"
    assert len(listing["entities"]) == 10


def test_the_last_page_has_no_next_link(api):
    first = api.http.get(USERS, params={"pageSize": 30}).json()

    last = api.http.get(USERS, params={"pageSize": 30, "pageNumber": first["pageCount"]}).json()

    assert "nextUri" not in last
    assert "previousUri" in last
    assert len(last["entities"]) == first["total"] - 30 * (first["pageCount"] - 1)


def test_walking_next_links_visits_every_active_user_once(api):
    active = {u["id"] for u in users_in_state(api, "active")}

    seen = ids(all_pages(api.http, USERS, pageSize=40))

    assert len(seen) == len(set(seen))
    assert set(seen) == active


def test_a_page_past_the_end_is_empty_not_an_error(api):
    listing = api.http.get(USERS, params={"pageSize": 100, "pageNumber": 50}).json()

    assert listing["entities"] == []
    assert listing["pageNumber"] == 50


def test_paging_links_keep_the_filters(api):
    listing = api.http.get(USERS, params={"state": "any", "pageSize": 5}).json()

    following = api.http.get(listing["nextUri"]).json()

    assert "state=any" in listing["nextUri"]
    assert following["total"] == listing["total"] == len(admin_users(api))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"pageSize": "abc"}, "pageSize"),
        ({"pageSize": 0}, "pageSize"),
        ({"pageSize": 501}, "pageSize"),
        ({"pageNumber": 0}, "pageNumber"),
        ({"pageNumber": "first"}, "pageNumber"),
    ],
)
def test_bad_paging_parameters_are_400_naming_the_parameter(api, params, field):
    body = assert_error(api.http.get(USERS, params=params), 400, "bad.request")

    assert field_names(body) == [field]


# -- filters ----------------------------------------------------------------------------------
@pytest.mark.parametrize("state", ["active", "inactive", "deleted"])
def test_state_filter_lists_exactly_the_users_in_that_state(api, state):
    expected = {u["id"] for u in users_in_state(api, state)}
    assert expected, f"the seeded org should have {state} users"

    listing = api.http.get(USERS, params={"state": state, "pageSize": 500}).json()

    assert set(ids(listing["entities"])) == expected
    assert listing["total"] == len(expected)
    assert {e["state"] for e in listing["entities"]} == {state}


def test_state_any_lists_every_user(api):
    listing = api.http.get(USERS, params={"state": "any", "pageSize": 500}).json()

    assert set(ids(listing["entities"])) == {u["id"] for u in admin_users(api)}


def test_an_unknown_state_is_400(api):
    body = assert_error(api.http.get(USERS, params={"state": "retired"}), 400, "bad.request")

    assert field_names(body) == ["state"]


def test_id_filter_accepts_comma_separated_and_repeated_ids(api):
    a, b, c = (u["id"] for u in users_in_state(api, "active")[:3])

    comma = api.http.get(USERS, params={"id": f"{a},{b}"}).json()
    repeated = api.http.get(USERS, params=[("id", a), ("id", b), ("id", c)]).json()

    assert set(ids(comma["entities"])) == {a, b}
    assert set(ids(repeated["entities"])) == {a, b, c}


def test_id_filter_skips_unknown_ids_and_respects_the_state_filter(api):
    active = users_in_state(api, "active")[0]["id"]
    deleted = users_in_state(api, "deleted")[0]["id"]
    unknown = "00000000-0000-4000-8000-000000000000"
    wanted = f"{active},{deleted},{unknown}"

    default = api.http.get(USERS, params={"id": wanted}).json()
    deleted_only = api.http.get(USERS, params={"id": wanted, "state": "deleted"}).json()
    any_state = api.http.get(USERS, params={"id": wanted, "state": "any"}).json()

    assert ids(default["entities"]) == [active]
    assert ids(deleted_only["entities"]) == [deleted]
    assert set(ids(any_state["entities"])) == {active, deleted}


def test_more_than_100_ids_is_400(api):
    many = ",".join(u["id"] for u in admin_users(api)[:101])

    body = assert_error(api.http.get(USERS, params={"id": many}), 400, "bad.request")

    assert field_names(body) == ["id"]


def test_listing_without_expand_has_no_presence_or_routing_status(api):
    entity = api.http.get(USERS, params={"pageSize": 1}).json()["entities"][0]

    assert "presence" not in entity
    assert "routingStatus" not in entity


def test_listing_expands_presence_and_routing_status_from_live_state(api):
    truth = {u["id"]: u for u in admin_users(api)}

    listing = api.http.get(
        USERS, params={"expand": "presence,routingStatus", "pageSize": 500}
    ).json()

    assert listing["entities"]
    for entity in listing["entities"]:
        expected = truth[entity["id"]]
        assert (
            entity["presence"]["presenceDefinition"]["systemPresence"]
            == (expected["systemPresence"])
        )
        assert entity["routingStatus"]["status"] == expected["routingStatus"]
        assert entity["routingStatus"]["userId"] == entity["id"]


# -- one user ---------------------------------------------------------------------------------
def test_get_user_returns_the_user_model_without_expandables(api):
    user = users_in_state(api, "active")[0]

    body = api.http.get(f"{USERS}/{user['id']}").json()

    assert body["id"] == user["id"]
    assert body["name"] == user["name"]
    assert body["state"] == "active"
    assert body["division"]["name"] == "Home"
    assert body["email"] == body["username"]
    assert isinstance(body["version"], int)
    assert body["selfUri"] == f"{USERS}/{user['id']}"
    assert "presence" not in body
    assert "routingStatus" not in body


def test_get_user_expands_presence_and_routing_status(api):
    user = users_in_state(api, "active")[0]

    body = api.http.get(f"{USERS}/{user['id']}", params={"expand": "presence,routingStatus"}).json()

    assert body["presence"]["source"] == "PURECLOUD"
    assert body["presence"]["presenceDefinition"]["systemPresence"] == user["systemPresence"]
    assert body["routingStatus"] == {
        "userId": user["id"],
        "status": user["routingStatus"],
        "startTime": body["routingStatus"]["startTime"],
    }
    assert body["routingStatus"]["startTime"].endswith("Z")


def test_get_user_expand_accepts_repeated_parameters(api):
    user_id = users_in_state(api, "active")[0]["id"]

    body = api.http.get(
        f"{USERS}/{user_id}", params=[("expand", "presence"), ("expand", "routingStatus")]
    ).json()

    assert "presence" in body
    assert "routingStatus" in body


def test_an_inactive_user_is_still_readable(api):
    user_id = users_in_state(api, "inactive")[0]["id"]

    body = api.http.get(f"{USERS}/{user_id}").json()

    assert body["state"] == "inactive"


def test_a_deleted_user_is_404_unless_state_deleted_is_asked(api):
    user_id = users_in_state(api, "deleted")[0]["id"]

    assert_error(api.http.get(f"{USERS}/{user_id}"), 404, "not.found")
    response = api.http.get(f"{USERS}/{user_id}", params={"state": "deleted"})

    assert response.status_code == 200
    assert response.json()["state"] == "deleted"


def test_an_unknown_user_is_404_not_found(api):
    body = assert_error(
        api.http.get(f"{USERS}/00000000-0000-4000-8000-000000000000"), 404, "not.found"
    )

    assert "00000000-0000-4000-8000-000000000000" in body["message"]


# -- a user's queues --------------------------------------------------------------------------
def test_user_queues_default_to_the_joined_ones(api):
    user_id, memberships = user_with_an_unjoined_queue(api)

    listing = api.http.get(f"{USERS}/{user_id}/queues").json()

    assert set(ids(listing["entities"])) == {q for q, joined in memberships.items() if joined}
    assert all(e["joined"] is True for e in listing["entities"])
    assert listing["total"] == len(listing["entities"])
    assert listing["pageNumber"] == 1


def test_user_queues_joined_false_lists_every_membership(api):
    user_id, memberships = user_with_an_unjoined_queue(api)

    listing = api.http.get(f"{USERS}/{user_id}/queues", params={"joined": "false"}).json()

    assert {e["id"]: e["joined"] for e in listing["entities"]} == memberships


def test_user_queues_match_the_emulators_membership_list(api):
    user = users_in_state(api, "active")[0]

    listing = api.http.get(f"{USERS}/{user['id']}/queues", params={"joined": "false"}).json()

    assert sorted(ids(listing["entities"])) == sorted(user["queues"])


def test_user_queue_entries_carry_the_queue_fields(api):
    user = users_in_state(api, "active")[0]

    entry = api.http.get(f"{USERS}/{user['id']}/queues", params={"joined": "false"}).json()[
        "entities"
    ][0]
    queue = api.http.get(f"/api/v2/routing/queues/{entry['id']}").json()

    assert {k: entry[k] for k in queue} == queue
    assert isinstance(entry["joined"], bool)


def test_user_queues_with_a_bad_joined_value_is_400(api):
    user_id = users_in_state(api, "active")[0]["id"]

    body = assert_error(
        api.http.get(f"{USERS}/{user_id}/queues", params={"joined": "maybe"}), 400, "bad.request"
    )

    assert field_names(body) == ["joined"]


def test_user_queues_of_an_unknown_user_is_404(api):
    assert_error(
        api.http.get(f"{USERS}/00000000-0000-4000-8000-000000000000/queues"), 404, "not.found"
    )


def test_user_queues_of_a_deleted_user_is_404(api):
    user_id = users_in_state(api, "deleted")[0]["id"]

    assert_error(api.http.get(f"{USERS}/{user_id}/queues"), 404, "not.found")


def test_user_queues_need_routing_queue_view(api):
    user_id = users_in_state(api, "active")[0]["id"]

    with client_with(api, ["presence:userPresence:edit"]) as limited:
        body = assert_error(
            limited.get(f"{USERS}/{user_id}/queues"), 403, "missing.any.permissions"
        )

    assert "routing:queue:view" in body["message"]
    assert body["messageParams"] == {"0": "routing:queue:view"}


def test_user_queues_are_readable_with_routing_queue_view_alone(api):
    user_id = users_in_state(api, "active")[0]["id"]

    with client_with(api, ["routing:queue:view"]) as limited:
        assert limited.get(f"{USERS}/{user_id}/queues").status_code == 200
