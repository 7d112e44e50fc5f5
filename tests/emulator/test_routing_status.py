"""GET/PUT /api/v2/users/{id}/routingstatus and how routing status follows presence (§2.7).

Emulator choices (see the README's emulator section): On Queue presence ⇒ IDLE, INTERACTING with work, NOT_RESPONDING
after a missed alert; any other presence ⇒ OFF_QUEUE. PUT may take an agent off queue or clear
NOT_RESPONDING, but going on queue is done by presence.
"""

from __future__ import annotations

import pytest

from emulator.sources import TEAMS_SOURCE_ID
from tests.emulator._rest import (
    AVAILABLE_ID,
    BREAK_ID,
    ON_QUEUE_ID,
    UNKNOWN_ID,
    assert_error,
    client_with,
    field_names,
    history,
    set_presence,
    set_work,
    users_in_state,
)


def routing_path(user_id: str) -> str:
    return f"/api/v2/users/{user_id}/routingstatus"


def status_of(api, user_id: str) -> str:
    return api.http.get(routing_path(user_id)).json()["status"]


def put_status(api, user_id: str, status: str):
    return api.http.put(routing_path(user_id), json={"status": status})


def presence_id(api, user_id: str) -> str:
    body = api.http.get(f"/api/v2/users/{user_id}/presences/purecloud").json()
    return body["presenceDefinition"]["id"]


@pytest.fixture
def agent(api) -> str:
    """An active agent with no work, starting Available (off queue)."""
    user_id = users_in_state(api, "active")[0]["id"]
    set_work(api, user_id, interactions=0, not_responding=False)
    set_presence(api, user_id, "Available")
    return user_id


@pytest.fixture
def on_queue_agent(api, agent) -> str:
    set_presence(api, agent, "On Queue")
    return agent


# -- GET --------------------------------------------------------------------------------------
def test_get_returns_the_routing_status_model(api, on_queue_agent):
    body = api.http.get(routing_path(on_queue_agent)).json()

    assert body["userId"] == on_queue_agent
    assert body["status"] == "IDLE"
    assert body["startTime"].endswith("Z")


def test_get_for_an_unknown_user_is_off_queue_not_404(api):
    response = api.http.get(routing_path(UNKNOWN_ID))

    assert response.status_code == 200
    assert response.json()["status"] == "OFF_QUEUE"
    assert response.json()["userId"] == UNKNOWN_ID


def test_get_agrees_with_the_emulators_own_state_for_every_user(api):
    for user in users_in_state(api, "active")[:40]:
        assert status_of(api, user["id"]) == user["routingStatus"]


# -- routing status follows presence ----------------------------------------------------------
@pytest.mark.parametrize("presence", ["Available", "Break", "Offline", "Busy", "Lunch", "Coffee"])
def test_any_presence_but_on_queue_is_off_queue(api, on_queue_agent, presence):
    set_presence(api, on_queue_agent, presence)

    assert status_of(api, on_queue_agent) == "OFF_QUEUE"


def test_on_queue_presence_without_work_is_idle(api, agent):
    set_presence(api, agent, "On Queue")

    assert status_of(api, agent) == "IDLE"


def test_on_queue_via_the_public_patch_is_idle(api, agent):
    api.http.patch(
        f"/api/v2/users/{agent}/presences/purecloud",
        json={"presenceDefinition": {"id": ON_QUEUE_ID}},
    )

    assert status_of(api, agent) == "IDLE"


def test_interactions_while_on_queue_make_the_agent_interacting(api, on_queue_agent):
    set_work(api, on_queue_agent, interactions=2)

    assert status_of(api, on_queue_agent) == "INTERACTING"


def test_finishing_the_interactions_returns_to_idle(api, on_queue_agent):
    set_work(api, on_queue_agent, interactions=1)

    set_work(api, on_queue_agent, interactions=0)

    assert status_of(api, on_queue_agent) == "IDLE"


def test_interactions_while_off_queue_stay_off_queue(api, agent):
    set_work(api, agent, interactions=3)

    assert status_of(api, agent) == "OFF_QUEUE"


def test_a_missed_alert_makes_the_agent_not_responding(api, on_queue_agent):
    set_work(api, on_queue_agent, not_responding=True)

    assert status_of(api, on_queue_agent) == "NOT_RESPONDING"


def test_going_on_queue_again_clears_not_responding(api, on_queue_agent):
    set_work(api, on_queue_agent, not_responding=True)
    set_presence(api, on_queue_agent, "Available")

    set_presence(api, on_queue_agent, "On Queue")

    assert status_of(api, on_queue_agent) == "IDLE"


# -- PUT --------------------------------------------------------------------------------------
def test_put_idle_clears_not_responding(api, on_queue_agent):
    set_work(api, on_queue_agent, not_responding=True)

    response = put_status(api, on_queue_agent, "IDLE")

    assert response.status_code == 200
    assert response.json()["status"] == "IDLE"
    assert response.json()["userId"] == on_queue_agent
    assert status_of(api, on_queue_agent) == "IDLE"
    assert presence_id(api, on_queue_agent) == ON_QUEUE_ID


def test_put_idle_is_recorded_as_a_routing_status_change(api, on_queue_agent):
    set_work(api, on_queue_agent, not_responding=True)

    response = put_status(api, on_queue_agent, "IDLE")

    last = history(api, on_queue_agent)[-1]
    assert last["path"] == "routing_status"
    assert last["routingStatus"] == "IDLE"
    assert last["correlationId"] == response.headers["inin-correlation-id"]


def test_put_idle_while_idle_is_accepted_and_changes_nothing(api, on_queue_agent):
    response = put_status(api, on_queue_agent, "IDLE")

    assert response.status_code == 200
    assert response.json()["status"] == "IDLE"


def test_put_off_queue_while_on_queue_makes_the_agent_available(api, on_queue_agent):
    response = put_status(api, on_queue_agent, "OFF_QUEUE")

    assert response.status_code == 200
    assert response.json()["status"] == "OFF_QUEUE"
    assert presence_id(api, on_queue_agent) == AVAILABLE_ID
    assert history(api, on_queue_agent)[-1]["path"] == "routing_status"


def test_put_off_queue_while_interacting_takes_the_agent_off_queue(api, on_queue_agent):
    set_work(api, on_queue_agent, interactions=1)

    response = put_status(api, on_queue_agent, "OFF_QUEUE")

    assert response.json()["status"] == "OFF_QUEUE"
    assert presence_id(api, on_queue_agent) == AVAILABLE_ID


def test_put_off_queue_while_off_queue_leaves_the_presence_alone(api, agent):
    set_presence(api, agent, "Break")

    response = put_status(api, agent, "OFF_QUEUE")

    assert response.status_code == 200
    assert response.json()["status"] == "OFF_QUEUE"
    assert presence_id(api, agent) == BREAK_ID


def test_put_off_queue_follows_a_custom_primary_source(api, agent):
    api.http.patch(
        f"/api/v2/users/{agent}/presences/{TEAMS_SOURCE_ID}",  # a registered source
        json={"presenceDefinition": {"id": ON_QUEUE_ID}, "primary": True},
    )
    assert status_of(api, agent) == "IDLE"

    response = put_status(api, agent, "OFF_QUEUE")

    assert response.json()["status"] == "OFF_QUEUE"
    assert status_of(api, agent) == "OFF_QUEUE"


def test_put_idle_while_off_queue_is_400(api, agent):
    body = assert_error(put_status(api, agent, "IDLE"), 400, "bad.request")

    assert field_names(body) == ["status"]
    assert status_of(api, agent) == "OFF_QUEUE"
    assert presence_id(api, agent) == AVAILABLE_ID


@pytest.mark.parametrize("status", ["INTERACTING", "NOT_RESPONDING", "COMMUNICATING"])
def test_put_statuses_only_the_platform_sets_are_400(api, on_queue_agent, status):
    assert_error(put_status(api, on_queue_agent, status), 400, "bad.request")
    assert status_of(api, on_queue_agent) == "IDLE"


@pytest.mark.parametrize("body", [{"status": "BUSY"}, {"status": "idle"}, {"status": 1}, {}])
def test_put_with_a_bad_status_value_is_400_naming_status(api, on_queue_agent, body):
    response = api.http.put(routing_path(on_queue_agent), json=body)

    assert field_names(assert_error(response, 400, "bad.request")) == ["status"]


def test_put_for_an_unknown_user_is_404(api):
    assert_error(put_status(api, UNKNOWN_ID, "OFF_QUEUE"), 404, "not.found")


def test_put_needs_agent_state_edit(api, on_queue_agent):
    with client_with(api, ["presence:userPresence:edit"]) as limited:
        body = assert_error(
            limited.put(routing_path(on_queue_agent), json={"status": "OFF_QUEUE"}),
            403,
            "missing.any.permissions",
        )
        reading = limited.get(routing_path(on_queue_agent))

    assert body["messageParams"] == {"0": "routing:agentState:edit"}
    assert reading.status_code == 200
    assert status_of(api, on_queue_agent) == "IDLE"
