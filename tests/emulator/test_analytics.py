"""POST /api/v2/analytics/queues/observations/query, computed from live state (reference §6.1).

Every count is cross-checked against the emulator's own data: members and joined flags from
the members listing, presence and routing status from ``GET /__emulator/users``.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.emulator._rest import (
    ON_QUEUE_ID,
    UNKNOWN_ID,
    admin_users,
    all_pages,
    assert_error,
    client_with,
    field_names,
    set_presence,
    set_work,
)

QUERY = "/api/v2/analytics/queues/observations/query"
USER_METRICS = ["oOnQueueUsers", "oOffQueueUsers", "oActiveUsers", "oMemberUsers"]
ON_QUEUE_STATUSES = {"IDLE", "INTERACTING", "NOT_RESPONDING", "COMMUNICATING"}


def query_body(queue_ids: list[str], metrics: list[str]) -> dict:
    predicates = [
        {"type": "dimension", "dimension": "queueId", "operator": "matches", "value": q}
        for q in queue_ids
    ]
    return {"filter": {"type": "or", "predicates": predicates}, "metrics": metrics}


def observe(api, queue_id: str, metrics: list[str]) -> dict:
    response = api.http.post(QUERY, json=query_body([queue_id], metrics))
    assert response.status_code == 200, response.text
    return response.json()


def data_of(response: dict, *, media: bool = False) -> list[dict]:
    """The data rows of the (single queue's) user group, or its mediaType group."""
    groups = [r for r in response["results"] if ("mediaType" in r["group"]) is media]
    assert len(groups) <= 1
    return groups[0]["data"] if groups else []


def count(rows: list[dict], metric: str, qualifier: str | None = None) -> int:
    """Sum of a metric's counts (over every qualifier unless one is named); 0 if omitted."""
    return sum(
        r["stats"]["count"]
        for r in rows
        if r["metric"] == metric and (qualifier is None or r.get("qualifier") == qualifier)
    )


def on_queue_total(api, queue_id: str) -> int:
    return count(data_of(observe(api, queue_id, ["oOnQueueUsers"])), "oOnQueueUsers")


class Truth:
    """What the observation counts must be, from the emulator's own member data."""

    def __init__(self, api, queue_id: str) -> None:
        listed = all_pages(api.http, f"/api/v2/routing/queues/{queue_id}/members", pageSize=100)
        users = {u["id"]: u for u in admin_users(api)}
        self.members = [users[m["id"]] for m in listed]
        self.joined = [users[m["id"]] for m in listed if m["joined"]]
        self.member_ids_by_admin = {
            u["id"] for u in users.values() if queue_id in u["queues"] and u["state"] != "deleted"
        }

    def on_queue(self) -> Counter[str]:
        return Counter(u["routingStatus"] for u in self.joined if u["routingStatus"] != "OFF_QUEUE")

    def logged_in(self) -> list[dict]:
        return [u for u in self.joined if u["systemPresence"] != "Offline"]


@pytest.fixture
def queue_id(api) -> str:
    """The seeded queue with the most joined members."""
    best, best_joined = "", -1
    for queue in all_pages(api.http, "/api/v2/routing/queues"):
        if queue["joinedMemberCount"] > best_joined:
            best, best_joined = queue["id"], queue["joinedMemberCount"]
    return best


def off_queue_joined_member(api, queue_id: str) -> str:
    truth = Truth(api, queue_id)
    return next(u["id"] for u in truth.joined if u["routingStatus"] == "OFF_QUEUE")


# -- counts from live state -------------------------------------------------------------------
def test_on_queue_users_per_qualifier_match_joined_members_routing_statuses(api, queue_id):
    truth = Truth(api, queue_id)
    assert truth.on_queue(), "the seeded queue should have agents on queue"

    rows = data_of(observe(api, queue_id, ["oOnQueueUsers"]))

    assert {r["qualifier"] for r in rows} <= ON_QUEUE_STATUSES
    assert {r["qualifier"]: r["stats"]["count"] for r in rows} == dict(truth.on_queue())
    assert count(rows, "oOnQueueUsers") == sum(truth.on_queue().values())


def test_member_users_counts_every_member_joined_or_not(api, queue_id):
    truth = Truth(api, queue_id)

    rows = data_of(observe(api, queue_id, ["oMemberUsers"]))

    assert count(rows, "oMemberUsers") == len(truth.members) == len(truth.member_ids_by_admin)


def test_member_users_do_not_count_deleted_users(api):
    deleted = [u for u in admin_users(api) if u["state"] == "deleted" and u["queues"]]
    assert deleted, "the seeded org should have a deleted user with queue memberships"
    queue_id = deleted[0]["queues"][0]

    rows = data_of(observe(api, queue_id, ["oMemberUsers"]))

    assert count(rows, "oMemberUsers") == len(Truth(api, queue_id).members)


def test_active_and_off_queue_users_count_logged_in_joined_members(api, queue_id):
    truth = Truth(api, queue_id)

    rows = data_of(observe(api, queue_id, USER_METRICS))

    logged_in = truth.logged_in()
    assert count(rows, "oActiveUsers") == len(logged_in)
    assert count(rows, "oOffQueueUsers") == sum(
        1 for u in logged_in if u["routingStatus"] == "OFF_QUEUE"
    )


def test_user_presences_are_qualified_by_organization_presence_id(api, queue_id):
    set_presence(api, off_queue_joined_member(api, queue_id), "On Queue")

    rows = data_of(observe(api, queue_id, ["oUserPresences"]))

    assert ON_QUEUE_ID in {r["qualifier"] for r in rows}
    assert count(rows, "oUserPresences") == len(Truth(api, queue_id).logged_in())


def test_user_routing_statuses_cover_logged_in_joined_members(api, queue_id):
    truth = Truth(api, queue_id)

    rows = data_of(observe(api, queue_id, ["oUserRoutingStatuses"]))

    assert {r["qualifier"]: r["stats"]["count"] for r in rows} == dict(
        Counter(u["routingStatus"] for u in truth.logged_in())
    )


def test_waiting_follows_the_admin_setting_in_the_voice_group(api, queue_id):
    api.admin("PUT", f"/queues/{queue_id}/waiting", {"waiting": 7})

    response = observe(api, queue_id, ["oWaiting"])

    media_groups = [r["group"] for r in response["results"] if "mediaType" in r["group"]]
    assert media_groups == [{"queueId": queue_id, "mediaType": "voice"}]
    assert count(data_of(response, media=True), "oWaiting") == 7


def test_no_waiting_conversations_means_no_waiting_row(api, queue_id):
    api.admin("PUT", f"/queues/{queue_id}/waiting", {"waiting": 0})

    assert count(data_of(observe(api, queue_id, ["oWaiting"]), media=True), "oWaiting") == 0


def test_interacting_counts_the_interactions_of_joined_agents(api, queue_id):
    before = count(data_of(observe(api, queue_id, ["oInteracting"]), media=True), "oInteracting")
    agent = off_queue_joined_member(api, queue_id)
    set_presence(api, agent, "On Queue")

    set_work(api, agent, interactions=3)

    rows = data_of(observe(api, queue_id, ["oInteracting", "oOnQueueUsers"]))
    media_rows = data_of(observe(api, queue_id, ["oInteracting"]), media=True)
    assert count(media_rows, "oInteracting") == before + 3
    assert (
        count(rows, "oOnQueueUsers", "INTERACTING")
        == Truth(api, queue_id).on_queue()["INTERACTING"]
    )


def test_system_to_organization_mappings_name_the_on_queue_definition(api, queue_id):
    mappings = observe(api, queue_id, ["oOnQueueUsers"])["systemToOrganizationMappings"]

    assert mappings["ON_QUEUE"] == [ON_QUEUE_ID]
    assert "6a3af858-942f-489d-9700-5f9bcdcdae9b" in mappings["AVAILABLE"]


# -- changes are reflected --------------------------------------------------------------------
def test_patching_an_agent_on_queue_raises_the_on_queue_count(api, queue_id):
    agent = off_queue_joined_member(api, queue_id)
    before = on_queue_total(api, queue_id)

    api.http.patch(
        f"/api/v2/users/{agent}/presences/purecloud",
        json={"presenceDefinition": {"id": ON_QUEUE_ID}},
    )

    assert on_queue_total(api, queue_id) == before + 1


def test_patching_an_agent_off_queue_lowers_the_on_queue_count(api, queue_id):
    agent = off_queue_joined_member(api, queue_id)
    set_presence(api, agent, "On Queue")
    before = on_queue_total(api, queue_id)

    api.http.patch(
        f"/api/v2/users/{agent}/presences/purecloud",
        json={"presenceDefinition": {"id": "6a3af858-942f-489d-9700-5f9bcdcdae9b"}},
    )

    assert on_queue_total(api, queue_id) == before - 1


def test_an_unjoined_member_going_on_queue_does_not_count(api, queue_id):
    truth = Truth(api, queue_id)
    unjoined = next(u for u in truth.members if u not in truth.joined and u["state"] == "active")
    set_presence(api, unjoined["id"], "Available")
    before = on_queue_total(api, queue_id)

    set_presence(api, unjoined["id"], "On Queue")

    assert on_queue_total(api, queue_id) == before


# -- query shapes -----------------------------------------------------------------------------
def test_several_queues_give_one_group_each(api):
    ids = [q["id"] for q in all_pages(api.http, "/api/v2/routing/queues")][:3]

    response = api.http.post(QUERY, json=query_body(ids, ["oMemberUsers"])).json()

    assert [r["group"]["queueId"] for r in response["results"]] == ids


def test_queue_ids_inside_clauses_are_honoured(api, queue_id):
    body = {
        "filter": {
            "type": "or",
            "clauses": [
                {
                    "type": "or",
                    "predicates": [{"dimension": "queueId", "value": queue_id}],
                }
            ],
        },
        "metrics": ["oMemberUsers"],
    }

    response = api.http.post(QUERY, json=body).json()

    assert [r["group"] for r in response["results"]] == [{"queueId": queue_id}]


def test_an_unknown_queue_gives_no_group(api):
    response = api.http.post(QUERY, json=query_body([UNKNOWN_ID], ["oOnQueueUsers"]))

    assert response.status_code == 200
    assert response.json()["results"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"filter": {"type": "or", "predicates": []}}, "metrics"),
        ({"filter": {"type": "or", "predicates": []}, "metrics": []}, "metrics"),
        ({"filter": {"type": "or", "predicates": []}, "metrics": ["oBogus"]}, "metrics[0]"),
        ({"filter": {"type": "or", "predicates": []}, "metrics": "oWaiting"}, "metrics"),
        ({"metrics": ["oWaiting"]}, "filter"),
        ({"filter": {"type": "xor"}, "metrics": ["oWaiting"]}, "filter.type"),
        (
            {
                "filter": {"type": "or", "predicates": [{"operator": "like"}]},
                "metrics": ["oWaiting"],
            },
            "filter.predicates[0].operator",
        ),
    ],
)
def test_an_invalid_query_is_400_naming_the_field(api, body, field):
    error = assert_error(api.http.post(QUERY, json=body), 400, "bad.request")

    assert field in field_names(error)


def test_observations_need_queue_observation_view(api, queue_id):
    with client_with(api, ["routing:queue:view"]) as limited:
        response = limited.post(QUERY, json=query_body([queue_id], ["oWaiting"]))

    body = assert_error(response, 403, "missing.any.permissions")
    assert body["messageParams"] == {"0": "analytics:queueObservation:view"}
