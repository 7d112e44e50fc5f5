"""Channels bound to their token, system messages, per-topic permissions and the topic
catalogue, over real HTTP and WebSocket. The bodies' SDK fidelity is in test_sdk_fidelity."""

from __future__ import annotations

import httpx

from tests.conftest import Api
from tests.emulator.streaming import (
    CLOSED,
    Stream,
    create_channel,
    listen,
    offline_users,
    presence_topic,
    routing_topic,
    subscribe,
)

CHANNELS = "/api/v2/notifications/channels"


def head(http: httpx.Client, channel_id: str) -> int:
    return http.head(f"{CHANNELS}/{channel_id}").status_code


def client_with(api: Api, client_id: str, permissions: list[str]) -> httpx.Client:
    api.admin(
        "POST",
        "/clients",
        {"client_id": client_id, "client_secret": "s3cret", "permissions": permissions},
    )
    token = api.fetch_token(client_id, "s3cret")
    return httpx.Client(
        base_url=api.emulator.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def system_kinds(messages: list[dict]) -> list[str | None]:
    return [
        m["eventBody"].get("systemTopicType")
        for m in messages
        if str(m.get("topicName", "")).startswith("v2.system.")
    ]


# -- token-bound channels -------------------------------------------------------------------
def test_revoking_the_token_sends_token_revoked_then_closes_the_channel(
    api: Api, streams: list[Stream]
) -> None:
    channel, stream = listen(api.http, streams, [])

    api.admin("POST", "/tokens/revoke", {})

    how, messages = stream.wait_end()
    assert how == CLOSED
    assert system_kinds(messages) == ["token_revoked"]
    assert messages[0]["topicName"] == f"v2.system.token_revoked.{channel['id']}"
    assert messages[0]["eventBody"]["reason"] == "user_tokens_revoked"
    assert messages[-1]["result"] == "404", "the close comes after the system message"
    fresh = httpx.Client(
        base_url=api.emulator.base_url,
        headers={"Authorization": f"Bearer {api.fetch_token()}"},
        timeout=10,
    )
    assert head(fresh, channel["id"]) == 404, "the channel is gone for any token"


def test_a_token_that_runs_out_closes_its_channels_on_its_own(
    api: Api, streams: list[Stream]
) -> None:
    api.admin("PUT", "/settings", {"token_lifetime_s": 1})
    short = httpx.Client(
        base_url=api.emulator.base_url,
        headers={"Authorization": f"Bearer {api.fetch_token()}"},
        timeout=10,
    )
    _, stream = listen(short, streams, [])

    how, messages = stream.wait_end(timeout=4)

    assert how == CLOSED
    assert system_kinds(messages) == ["token_revoked"]
    assert "reason" not in messages[0]["eventBody"], "expiry is no revocation"


def test_with_binding_off_a_channel_outlives_its_token(api: Api, streams: list[Stream]) -> None:
    api.admin("PUT", "/settings", {"token_bound_channels": False})
    channel, stream = listen(api.http, streams, [])

    api.admin("POST", "/tokens/expire", {})

    assert [m for m in stream.messages_within(0.5) if "eventBody" in m and
            "systemTopicType" in m["eventBody"]] == []  # fmt: skip
    fresh = httpx.Client(
        base_url=api.emulator.base_url,
        headers={"Authorization": f"Bearer {api.fetch_token()}"},
        timeout=10,
    )
    assert head(fresh, channel["id"]) == 200


def test_a_channel_made_with_another_token_survives_the_first_tokens_end(
    api: Api, streams: list[Stream]
) -> None:
    """Channels are bound to their own token, not to every token of the client."""
    old_channel, _old_stream = listen(api.http, streams, [])
    api.admin("PUT", "/settings", {"token_lifetime_s": 1})
    short_token = api.fetch_token()
    api.admin("PUT", "/settings", {"token_lifetime_s": 3600})
    long = httpx.Client(
        base_url=api.emulator.base_url,
        headers={"Authorization": f"Bearer {api.fetch_token()}"},
        timeout=10,
    )
    short = httpx.Client(
        base_url=api.emulator.base_url,
        headers={"Authorization": f"Bearer {short_token}"},
        timeout=10,
    )
    short_channel, short_stream = listen(short, streams, [])

    how, _ = short_stream.wait_end(timeout=4)

    assert how == CLOSED
    assert head(long, old_channel["id"]) == 200
    assert head(long, short_channel["id"]) == 404


# -- other system messages ------------------------------------------------------------------
def test_no_longer_subscribed_is_sent_then_the_channel_closes(
    api: Api, streams: list[Stream]
) -> None:
    channel, stream = listen(api.http, streams, [])

    assert api.admin("POST", "/sockets/system", {"kind": "no_longer_subscribed"}).json() == {
        "notified": 1
    }

    how, messages = stream.wait_end()
    assert how == CLOSED
    assert system_kinds(messages) == ["no_longer_subscribed"]
    assert head(api.http, channel["id"]) == 404


def test_subscription_changed_without_close_leaves_the_channel_open(
    api: Api, streams: list[Stream]
) -> None:
    channel, stream = listen(api.http, streams, [])

    api.admin("POST", "/sockets/system", {"kind": "subscription_changed", "close": False})

    message = stream.next_event()
    assert message["eventBody"]["systemTopicType"] == "subscription_changed"
    assert head(api.http, channel["id"]) == 200


def test_a_second_socket_tells_the_first_why_it_closes(api: Api, streams: list[Stream]) -> None:
    channel, first = listen(api.http, streams, [])
    second = Stream.open(channel["connectUri"])
    streams.append(second)

    how, messages = first.wait_end()

    assert how == CLOSED
    assert system_kinds(messages) == ["no_longer_subscribed"]
    assert messages[0]["eventBody"]["reason"] == "another_channel_subscribed"


# -- permissions per topic ------------------------------------------------------------------
def test_a_topic_the_client_may_not_read_is_a_403_for_the_whole_call(api: Api) -> None:
    (user,) = offline_users(api, 1)
    narrow = client_with(api, "queues-only", ["routing:queue:view"])
    channel = create_channel(narrow)

    response = subscribe(narrow, channel["id"], [presence_topic(user)])

    assert response.status_code == 403
    assert response.json()["code"] == "missing.any.permissions"
    assert narrow.get(f"{CHANNELS}/{channel['id']}/subscriptions").json()["entities"] == []


def test_with_ignore_errors_a_forbidden_topic_is_rejected_and_the_rest_permitted(
    api: Api,
) -> None:
    (user,) = offline_users(api, 1)
    narrow = client_with(api, "routing-only", ["routing:agent:view"])
    channel = create_channel(narrow)

    response = narrow.put(
        f"{CHANNELS}/{channel['id']}/subscriptions",
        params={"ignoreErrors": "true"},
        json=[{"id": presence_topic(user)}, {"id": routing_topic(user)}],
    )

    assert response.status_code == 200, response.text
    states = {e["id"]: e["state"] for e in response.json()["entities"]}
    assert states == {routing_topic(user): "Permitted", presence_topic(user): "Rejected"}


def test_available_topics_list_what_the_emulator_serves_with_their_permissions(
    api: Api,
) -> None:
    response = api.http.get("/api/v2/notifications/availabletopics")

    assert response.status_code == 200
    topics = {t["id"]: t for t in response.json()["entities"]}
    assert set(topics) == {
        "v2.users.{id}.presence",
        "v2.users.{id}.routingStatus",
        "v2.users.{id}.activity",
    }
    assert "presence:userPresence:view" in topics["v2.users.{id}.presence"]["requiresPermissions"]
