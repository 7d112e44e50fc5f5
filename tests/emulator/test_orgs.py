"""Several Genesys orgs in one emulator: each its own world, client, budget and channels.

The module's emulator serves ``default`` (20 users) and ``b`` (30 users) with shared user ids:
b's first 20 users carry default's ids, its last 10 exist only in b — the case where a worker
could confuse orgs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from emulator.launcher import EmulatorProcess, EmulatorStartError
from tests.emulator._rest import assert_error
from tests.emulator.streaming import PONG, listen, presence_topic, subscribe

DEFAULT_USERS = 20
B_USERS = 30


@pytest.fixture(scope="module")
def two_orgs() -> Iterator[EmulatorProcess]:
    proc = EmulatorProcess(
        args=["--users", str(DEFAULT_USERS), "--queues", "3", "--heartbeat", "0.5"],
        orgs=[f"b,users={B_USERS}"],
        shared_user_ids=True,
    )
    with proc:
        yield proc


class Org:
    """One org as a worker sees it: a client holding its org's token, plus the admin API
    addressed to that org."""

    def __init__(self, emulator: EmulatorProcess, name: str) -> None:
        self.name = name
        self.base = emulator.base_url
        self.credentials = emulator.credentials(name)
        self.http = httpx.Client(base_url=self.base, timeout=10)
        self.http.headers["Authorization"] = f"Bearer {self.token()}"

    def token(self) -> str:
        response = httpx.post(
            f"{self.base}/oauth/token",
            auth=self.credentials,
            data={"grant_type": "client_credentials"},
        )
        response.raise_for_status()
        value: str = response.json()["access_token"]
        return value

    def admin(self, method: str, path: str, json: object = None) -> httpx.Response:
        """An admin call on this org (``?org=``; none for ``default``, as every caller did)."""
        params = {} if self.name == "default" else {"org": self.name}
        response = httpx.request(method, f"{self.base}/__emulator{path}", json=json, params=params)
        response.raise_for_status()
        return response

    def users(self) -> list[dict[str, Any]]:
        users: list[dict[str, Any]] = self.admin("GET", "/users").json()
        return users

    def presence(self, user_id: str) -> dict[str, Any]:
        response = self.http.get(f"/api/v2/users/{user_id}/presences/purecloud")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def patch(self, user_id: str, definition_id: str) -> httpx.Response:
        return self.http.patch(
            f"/api/v2/users/{user_id}/presences/purecloud",
            json={"presenceDefinition": {"id": definition_id}},
        )


@pytest.fixture
def orgs(two_orgs: EmulatorProcess) -> Iterator[tuple[Org, Org]]:
    """(default, b) after a full reset, each holding a fresh token of its own org."""
    httpx.post(f"{two_orgs.base_url}/__emulator/reset").raise_for_status()
    a, b = Org(two_orgs, "default"), Org(two_orgs, "b")
    yield a, b
    a.http.close()
    b.http.close()


def shared_active_user(a: Org, b: Org) -> str:
    """A user id active in both orgs."""
    active_b = {u["id"] for u in b.users() if u["state"] == "active"}
    return next(u["id"] for u in a.users() if u["state"] == "active" and u["id"] in active_b)


def definition_ids(org: Org) -> dict[str, str]:
    response = org.http.get("/api/v2/presence/definitions")
    assert response.status_code == 200, response.text
    return {d["name"]: d["id"] for d in response.json()["entities"]}


def other_definition(org: Org, user_id: str, *candidates: str) -> str:
    """The id of the first of ``candidates`` (labels) the user does not show now."""
    ids = definition_ids(org)
    current = org.presence(user_id)["presenceDefinition"]["id"]
    return next(ids[label] for label in candidates if ids[label] != current)


# -- the orgs and their credentials ---------------------------------------------------------
def test_orgs_are_listed_with_their_client_ids_and_shapes(two_orgs, orgs):
    listing = httpx.get(f"{two_orgs.base_url}/__emulator/orgs").json()

    assert [o["name"] for o in listing] == ["default", "b"]
    assert [o["clientIds"] for o in listing] == [["presence-worker"], ["presence-worker-b"]]
    assert [o["users"] for o in listing] == [DEFAULT_USERS, B_USERS]
    assert listing[0]["organizationId"] != listing[1]["organizationId"]
    assert "presence-worker-b" in two_orgs.output
    assert "emulator-secret-b" in two_orgs.output


def test_shared_user_ids_repeat_defaults_ids_and_the_rest_are_bs_own(orgs):
    a, b = orgs
    a_ids = [u["id"] for u in a.users()]
    b_ids = [u["id"] for u in b.users()]

    assert len(a_ids) == DEFAULT_USERS
    assert len(b_ids) == B_USERS
    assert b_ids[:DEFAULT_USERS] == a_ids
    assert not set(b_ids[DEFAULT_USERS:]) & set(a_ids)


def test_a_client_secret_of_one_org_does_not_open_another(two_orgs, orgs):
    response = httpx.post(
        f"{two_orgs.base_url}/oauth/token",
        auth=("presence-worker-b", two_orgs.client_secret),
        data={"grant_type": "client_credentials"},
    )

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_secondary_definitions_have_their_orgs_own_ids_and_system_ones_are_global(orgs):
    a, b = orgs
    a_ids, b_ids = definition_ids(a), definition_ids(b)

    assert a_ids.keys() == b_ids.keys()
    assert a_ids["Available"] == b_ids["Available"]
    assert a_ids["On Queue"] == b_ids["On Queue"]
    assert a_ids["Coffee"] != b_ids["Coffee"]
    assert b.patch(shared_active_user(a, b), a_ids["Coffee"]).status_code == 400


# -- a token only sees its org --------------------------------------------------------------
def test_a_patch_with_one_orgs_token_changes_only_that_orgs_agent(orgs):
    a, b = orgs
    user_id = shared_active_user(a, b)
    b_before = b.presence(user_id)
    target = other_definition(a, user_id, "Available", "Busy")

    response = a.patch(user_id, target)

    assert response.status_code == 200, response.text
    assert a.presence(user_id)["presenceDefinition"]["id"] == target
    assert b.presence(user_id) == b_before
    assert user_id in a.admin("GET", "/history").json()
    assert b.admin("GET", "/history").json() == {}


def test_a_user_of_another_org_only_is_404_to_this_orgs_token(orgs):
    a, b = orgs
    b_only = b.users()[-1]["id"]
    available = definition_ids(a)["Available"]

    assert_error(a.http.get(f"/api/v2/users/{b_only}"), 404, "not.found")
    assert_error(a.http.get(f"/api/v2/users/{b_only}/presences/purecloud"), 404, "not.found")
    assert_error(a.patch(b_only, available), 404, "not.found")
    assert b.http.get(f"/api/v2/users/{b_only}").status_code == 200


def test_each_token_lists_its_own_orgs_users(orgs):
    a, b = orgs
    a_total = a.http.get("/api/v2/users", params={"pageSize": 1}).json()["total"]
    b_total = b.http.get("/api/v2/users", params={"pageSize": 1}).json()["total"]

    assert a_total == sum(1 for u in a.users() if u["state"] != "deleted")
    assert b_total == sum(1 for u in b.users() if u["state"] != "deleted")
    assert b_total > a_total


def test_a_channel_never_gets_another_orgs_events_for_the_same_user_id(orgs, streams):
    a, b = orgs
    user_id = shared_active_user(a, b)
    _, a_stream = listen(a.http, streams, [presence_topic(user_id)])
    _, b_stream = listen(b.http, streams, [presence_topic(user_id)])

    assert b.patch(user_id, other_definition(b, user_id, "Available", "Busy")).status_code == 200
    b_event = b_stream.next_event()
    a_stream.sync()

    assert b_event["topicName"] == presence_topic(user_id)
    assert [m for m in a_stream.received if "version" in m] == []

    a.admin("PUT", f"/users/{user_id}/presence", {"presence": "Meal"})
    a_event = a_stream.next_event()
    b_stream.sync()

    assert a_event["eventBody"]["presenceDefinition"]["systemPresence"] == "MEAL"
    assert [m for m in b_stream.received if "version" in m] == [b_event]


def test_a_channel_cannot_subscribe_to_a_user_of_another_org_only(orgs):
    a, b = orgs
    b_only = b.users()[-1]["id"]
    channel = a.http.post("/api/v2/notifications/channels").json()

    response = subscribe(a.http, channel["id"], [presence_topic(b_only)])

    assert response.status_code == 400, response.text


def test_a_channel_is_not_reachable_with_another_orgs_token(orgs):
    a, b = orgs
    channel = a.http.post("/api/v2/notifications/channels").json()

    assert b.http.head(f"/api/v2/notifications/channels/{channel['id']}").status_code == 404
    assert a.http.head(f"/api/v2/notifications/channels/{channel['id']}").status_code == 200


def test_channel_limits_count_per_org(orgs):
    a, b = orgs
    a.admin("PUT", "/settings", {"max_channels": 2})
    b.admin("PUT", "/settings", {"max_channels": 2})
    b_channels = [b.http.post("/api/v2/notifications/channels").json()["id"] for _ in range(2)]

    for _ in range(3):
        a.http.post("/api/v2/notifications/channels").raise_for_status()

    listed = [c["id"] for c in b.http.get("/api/v2/notifications/channels").json()["entities"]]
    assert listed == b_channels
    assert len(a.http.get("/api/v2/notifications/channels").json()["entities"]) == 2


def test_system_messages_name_the_channels_org(orgs, streams):
    a, b = orgs
    _, b_stream = listen(b.http, streams, [])
    _, a_stream = listen(a.http, streams, [])
    b_org_id = next(o["organizationId"] for o in b.admin("GET", "/orgs").json() if o["name"] == "b")

    assert b.admin("POST", "/sockets/system", {"kind": "subscription_changed"}).json() == {
        "notified": 1
    }
    message = b_stream.next_event()
    a_stream.sync()

    assert message["eventBody"]["organizationId"] == b_org_id
    assert message["eventBody"]["oauthClientId"] == "presence-worker-b"
    assert [m for m in a_stream.received if m != PONG] == []


# -- budgets --------------------------------------------------------------------------------
def test_one_org_out_of_budget_leaves_the_other_answering(orgs):
    a, b = orgs
    a.admin("PUT", "/settings", {"rate_limit_per_minute": 3})
    b.admin("PUT", "/settings", {"rate_limit_per_minute": 5})
    probe = "/api/v2/users?pageSize=1"

    spent = [a.http.get(probe).status_code for _ in range(3)]
    rejected = a.http.get(probe)
    answered = b.http.get(probe)

    assert spent == [200, 200, 200]
    assert_error(rejected, 429, "too.many.requests.retry.after")
    assert int(rejected.headers["Retry-After"]) >= 1
    assert rejected.headers["inin-ratelimit-allowed"] == "3"
    assert rejected.headers["inin-ratelimit-count"] == "3"
    assert answered.status_code == 200
    assert answered.headers["inin-ratelimit-allowed"] == "5"
    assert answered.headers["inin-ratelimit-count"] == "1"


def test_a_storm_injected_in_one_org_leaves_the_other_alone(orgs):
    a, b = orgs
    b.admin("POST", "/faults/rate-limit-storm", {"seconds": 30})

    assert b.http.get("/api/v2/users?pageSize=1").status_code == 429
    assert a.http.get("/api/v2/users?pageSize=1").status_code == 200


def test_stats_count_each_orgs_requests_and_429s_apart(orgs):
    a, b = orgs
    b.admin("PUT", "/settings", {"rate_limit_per_minute": 1})
    for _ in range(3):
        b.http.get("/api/v2/users?pageSize=1")
    a.http.get("/api/v2/users?pageSize=1")

    a_stats, b_stats = a.admin("GET", "/stats").json(), b.admin("GET", "/stats").json()

    assert (a_stats["org"], b_stats["org"]) == ("default", "b")
    assert a_stats["requests"]["users.list"] == {"200": 1}
    assert b_stats["requests"]["users.list"] == {"200": 1, "429": 2}
    assert (a_stats["tooManyRequests"], b_stats["tooManyRequests"]) == (0, 2)
    assert [t["clientId"] for t in b_stats["tokens"]] == ["presence-worker-b"]


# -- the admin API selects an org -----------------------------------------------------------
def test_admin_calls_act_on_default_unless_an_org_is_named(orgs):
    a, b = orgs
    user_id = shared_active_user(a, b)
    a_before = a.presence(user_id)
    b_before = b.presence(user_id)["presenceDefinition"]["id"]
    if b.presence(user_id)["presenceDefinition"]["systemPresence"] == "Training":
        b.admin("PUT", f"/users/{user_id}/presence", {"presence": "Available"})
        b_before = b.presence(user_id)["presenceDefinition"]["id"]

    b.admin("PUT", f"/users/{user_id}/presence", {"presence": "Training"})

    assert b.presence(user_id)["presenceDefinition"]["systemPresence"] == "Training"
    assert b.presence(user_id)["presenceDefinition"]["id"] != b_before
    assert a.presence(user_id) == a_before
    assert b.admin("GET", "/history").json()[user_id][-1]["systemPresence"] == "Training"
    assert user_id not in a.admin("GET", "/history").json()


def test_settings_of_one_org_leave_the_others(orgs):
    a, b = orgs

    b.admin("PUT", "/settings", {"bulk_max": 7})

    assert b.admin("GET", "/settings").json()["bulk_max"] == 7
    assert a.admin("GET", "/settings").json()["bulk_max"] == 50
    assert b.admin("GET", "/settings").json()["users"] == B_USERS


def test_an_unknown_org_is_404_naming_the_known_ones(two_orgs, orgs):
    response = httpx.get(f"{two_orgs.base_url}/__emulator/users", params={"org": "nope"})

    body = assert_error(response, 404, "not.found")
    assert "default, b" in body["message"]


def test_resetting_one_org_leaves_the_others(orgs):
    a, b = orgs
    a_user, b_user = a.users()[0]["id"], b.users()[0]["id"]
    a.admin("PUT", f"/users/{a_user}/presence", {"presence": "Meal"})
    b.admin("PUT", f"/users/{b_user}/presence", {"presence": "Meal"})

    b.admin("POST", "/reset")

    assert b.admin("GET", "/history").json() == {}
    assert a_user in a.admin("GET", "/history").json()
    assert b.http.get("/api/v2/users?pageSize=1").status_code == 401  # b's tokens are gone
    assert a.http.get("/api/v2/users?pageSize=1").status_code == 200


def test_an_org_added_at_run_time_serves_until_the_next_full_reset(two_orgs, orgs):
    base = two_orgs.base_url
    added = httpx.post(
        f"{base}/__emulator/orgs", json={"name": "c", "users": 4, "rate_limit_per_minute": 1}
    )
    assert added.status_code == 200, added.text
    c = added.json()
    token = httpx.post(
        f"{base}/oauth/token",
        auth=(c["clientIds"][0], c["clientSecret"]),
        data={"grant_type": "client_credentials"},
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}

    first = httpx.get(f"{base}/api/v2/users", headers=headers)
    second = httpx.get(f"{base}/api/v2/users", headers=headers)
    again = httpx.post(f"{base}/__emulator/orgs", json={"name": "c"})
    httpx.post(f"{base}/__emulator/reset").raise_for_status()

    assert first.json()["total"] <= 4
    assert second.status_code == 429
    assert_error(again, 409, "general.conflict")
    assert [o["name"] for o in httpx.get(f"{base}/__emulator/orgs").json()] == ["default", "b"]


def test_a_client_id_of_another_org_cannot_be_added_again(two_orgs, orgs):
    response = httpx.post(
        f"{two_orgs.base_url}/__emulator/clients",
        json={"client_id": "presence-worker-b", "client_secret": "x", "permissions": ["*"]},
    )

    assert_error(response, 409, "general.conflict")


# -- start-up -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "reason"),
    [("default", "is taken"), ("B", "lowercase"), ("c,users=0", "at least 1"), ("c,x=1", "x=1")],
)
def test_a_bad_org_flag_stops_the_start_with_its_reason(spec, reason):
    with pytest.raises(EmulatorStartError, match=reason):
        EmulatorProcess(orgs=[spec]).start(timeout_s=15)


def test_orgs_n_adds_numbered_orgs_with_their_own_ids():
    with EmulatorProcess(args=["--users", "5", "--queues", "1", "--orgs", "2"]) as proc:
        listing = httpx.get(f"{proc.base_url}/__emulator/orgs").json()
        ids = [
            {u["id"] for u in httpx.get(f"{proc.base_url}/__emulator/users", params=p).json()}
            for p in ({}, {"org": "org1"}, {"org": "org2"})
        ]

    assert [o["name"] for o in listing] == ["default", "org1", "org2"]
    assert len(ids[0] | ids[1] | ids[2]) == sum(len(i) for i in ids) == 15
