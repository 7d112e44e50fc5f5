"""Notification channels, subscriptions and sockets (reference §4), over real HTTP and WebSocket."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from emulator.launcher import EmulatorProcess
from tests.conftest import Api
from tests.emulator.streaming import (
    CLOSED,
    HEARTBEAT,
    PONG,
    Stream,
    create_channel,
    listen,
    offline_users,
    presence_topic,
    routing_topic,
    set_presence,
    subscribe,
)

CHANNELS = "/api/v2/notifications/channels"

Settings = Callable[..., dict[str, Any]]


# -- helpers --------------------------------------------------------------------------------
@pytest.fixture
def settings(api: Api) -> Iterator[Settings]:
    """Change emulator settings for one test; they survive a reset, so restore them after."""
    original = api.admin("GET", "/settings").json()
    changed: set[str] = set()

    def change(**values: Any) -> dict[str, Any]:
        changed.update(values)
        result: dict[str, Any] = api.admin("PUT", "/settings", values).json()
        return result

    yield change
    if changed:
        api.admin("PUT", "/settings", {name: original[name] for name in changed})


def correlation_id(response: httpx.Response) -> str:
    return response.headers["inin-correlation-id"]


def head(api: Api, channel_id: str) -> int:
    return api.http.head(f"{CHANNELS}/{channel_id}").status_code


def listed_channel_ids(http: httpx.Client) -> list[str]:
    response = http.get(CHANNELS)
    assert response.status_code == 200
    return [c["id"] for c in response.json()["entities"]]


def second_client(api: Api, client_id: str = "other-app") -> httpx.Client:
    api.admin(
        "POST",
        "/clients",
        {"client_id": client_id, "client_secret": "other-secret", "permissions": ["*"]},
    )
    token = api.fetch_token(client_id, "other-secret")
    return httpx.Client(
        base_url=api.emulator.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


# -- channels -------------------------------------------------------------------------------
def test_creating_a_channel_returns_its_connect_uri_id_and_expiry(api: Api) -> None:
    channel = create_channel(api.http)

    assert set(channel) == {"connectUri", "id", "expires"}
    assert channel["id"].startswith("streaming-")
    assert channel["connectUri"].startswith("ws://")
    assert channel["connectUri"].endswith(f"/channels/{channel['id']}")
    assert abs(epoch(channel["expires"]) - (time.time() + 24 * 3600)) < 60  # channels live 24 h


def test_listing_channels_returns_the_clients_channels(api: Api) -> None:
    first, second = create_channel(api.http), create_channel(api.http)

    listing = api.http.get(CHANNELS, params={"includechannels": "oauthclient"}).json()

    assert {c["id"]: c for c in listing["entities"]} == {first["id"]: first, second["id"]: second}


def test_head_answers_200_for_a_channel_and_404_for_an_unknown_one(api: Api) -> None:
    channel = create_channel(api.http)

    assert head(api, channel["id"]) == 200
    assert head(api, "streaming-0-doesnotexist") == 404


def test_the_21st_channel_evicts_the_oldest_channel_without_a_connection(
    api: Api, streams: list[Stream]
) -> None:
    channels = [create_channel(api.http) for _ in range(20)]
    for channel in channels[:2]:  # the two oldest are in use
        streams.append(Stream.open(channel["connectUri"]))

    newest = create_channel(api.http)

    remaining = listed_channel_ids(api.http)
    assert len(remaining) == 20
    assert channels[2]["id"] not in remaining  # oldest unconnected one went
    assert {channels[0]["id"], channels[1]["id"], newest["id"]} <= set(remaining)
    assert head(api, channels[2]["id"]) == 404


def test_connected_channels_survive_eviction_while_unconnected_ones_exist(
    api: Api, streams: list[Stream]
) -> None:
    channels = [create_channel(api.http) for _ in range(20)]
    connected = channels[:19]
    for channel in connected:
        streams.append(Stream.open(channel["connectUri"]))

    newer = create_channel(api.http)  # evicts the only unconnected channel, though it is newest
    newest = create_channel(api.http)  # evicts `newer`: still the only unconnected one

    remaining = set(listed_channel_ids(api.http))
    assert remaining == {c["id"] for c in connected} | {newest["id"]}
    assert channels[19]["id"] not in remaining
    assert newer["id"] not in remaining


def test_channels_of_another_oauth_client_are_invisible(api: Api) -> None:
    other = second_client(api)
    try:
        foreign = create_channel(other)
        path = f"{CHANNELS}/{foreign['id']}"

        assert api.http.head(path).status_code == 404
        assert api.http.get(f"{path}/subscriptions").status_code == 404
        assert subscribe(api.http, foreign["id"], []).status_code == 404
        assert api.http.delete(f"{path}/subscriptions").status_code == 404
        assert foreign["id"] not in listed_channel_ids(api.http)
        assert other.head(path).status_code == 200
    finally:
        other.close()


def test_the_channel_limit_counts_each_oauth_client_separately(api: Api) -> None:
    other = second_client(api)
    try:
        foreign = create_channel(other)
        for _ in range(21):
            create_channel(api.http)

        assert other.head(f"{CHANNELS}/{foreign['id']}").status_code == 200
        assert len(listed_channel_ids(api.http)) == 20
    finally:
        other.close()


# -- subscriptions --------------------------------------------------------------------------
def topics_of(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [entity["id"] for entity in response.json()["entities"]]


def test_post_adds_put_replaces_get_lists_and_delete_removes_all_topics(api: Api) -> None:
    a, b = offline_users(api, 2)
    channel = create_channel(api.http)
    path = f"{CHANNELS}/{channel['id']}/subscriptions"

    assert topics_of(subscribe(api.http, channel["id"], [presence_topic(a)], method="POST")) == [
        presence_topic(a)
    ]
    added = subscribe(api.http, channel["id"], [routing_topic(a)], method="POST")
    assert topics_of(added) == [presence_topic(a), routing_topic(a)]
    assert topics_of(api.http.get(path)) == [presence_topic(a), routing_topic(a)]

    replaced = subscribe(api.http, channel["id"], [presence_topic(b)], method="PUT")
    assert topics_of(replaced) == [presence_topic(b)]
    assert topics_of(api.http.get(path)) == [presence_topic(b)]

    assert api.http.delete(path).status_code == 200
    assert topics_of(api.http.get(path)) == []


def test_subscribed_topics_are_permitted_channel_topics(api: Api) -> None:
    (user,) = offline_users(api, 1)
    channel = create_channel(api.http)

    response = subscribe(api.http, channel["id"], [presence_topic(user), routing_topic(user)])

    for entity in response.json()["entities"]:
        assert entity["state"] == "Permitted"
        assert entity["selfUri"]


@pytest.mark.parametrize(
    "topic",
    [
        "v2.users.{user}.conversations",
        "v2.routing.queues.{user}.conversations",
        "v2.users.00000000-0000-4000-8000-000000000000.presence",
        "not a topic",
    ],
    ids=["unsupported-kind", "other-family", "unknown-user", "garbage"],
)
def test_an_unknown_topic_or_user_is_rejected_with_400(api: Api, topic: str) -> None:
    (user,) = offline_users(api, 1)
    channel = create_channel(api.http)
    bad = topic.format(user=user)

    response = subscribe(api.http, channel["id"], [presence_topic(user), bad])

    assert response.status_code == 400
    assert response.json()["code"] == "bad.request"
    assert topics_of(api.http.get(f"{CHANNELS}/{channel['id']}/subscriptions")) == []


def test_ignore_errors_subscribes_the_good_topics_and_marks_the_bad_ones_rejected(
    api: Api,
) -> None:
    (user,) = offline_users(api, 1)
    channel = create_channel(api.http)
    unknown_user = presence_topic("00000000-0000-4000-8000-000000000000")

    response = api.http.post(
        f"{CHANNELS}/{channel['id']}/subscriptions",
        params={"ignoreErrors": "true"},
        json=[{"id": presence_topic(user)}, {"id": "v2.nonsense"}, {"id": unknown_user}],
    )

    assert response.status_code == 200
    by_id = {e["id"]: e for e in response.json()["entities"]}
    assert by_id[presence_topic(user)]["state"] == "Permitted"
    for rejected in ("v2.nonsense", unknown_user):
        assert by_id[rejected]["state"] == "Rejected"
        assert by_id[rejected]["rejectionReason"]
    listing = api.http.get(f"{CHANNELS}/{channel['id']}/subscriptions")
    assert topics_of(listing) == [presence_topic(user)]


def test_subscribing_beyond_max_topics_is_a_400(api: Api, settings: Settings) -> None:
    settings(max_topics=5)
    users = offline_users(api, 3)
    channel = create_channel(api.http)
    topics = [presence_topic(u) for u in users] + [routing_topic(u) for u in users]

    assert subscribe(api.http, channel["id"], topics[:5]).status_code == 200
    too_many = subscribe(api.http, channel["id"], topics[5:], method="POST")
    assert too_many.status_code == 400
    assert too_many.json()["code"] == "bad.request"
    assert subscribe(api.http, channel["id"], topics).status_code == 400
    # Replacing with at most five is fine again; the failed calls changed nothing.
    assert len(topics_of(api.http.get(f"{CHANNELS}/{channel['id']}/subscriptions"))) == 5
    assert subscribe(api.http, channel["id"], topics[1:6]).status_code == 200


@pytest.fixture(scope="module")
def large_org() -> Iterator[EmulatorProcess]:
    """An org big enough for more than 1000 distinct user topics (the shared one has 200 users)."""
    with EmulatorProcess(args=["--users", "600", "--queues", "1", "--rate-limit", "0"]) as proc:
        yield proc


def test_a_channel_holds_at_most_1000_topics(large_org: EmulatorProcess) -> None:
    base = large_org.base_url
    token = httpx.post(
        f"{base}/oauth/token",
        auth=(large_org.client_id, large_org.client_secret),
        data={"grant_type": "client_credentials"},
    ).json()["access_token"]
    users = httpx.get(f"{base}/__emulator/users").json()
    ids = [u["id"] for u in users if u["state"] == "active"][:501]
    topics = [presence_topic(u) for u in ids] + [routing_topic(u) for u in ids]
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http:
        channel = create_channel(http)

        assert subscribe(http, channel["id"], topics[:1000]).status_code == 200
        beyond = subscribe(http, channel["id"], topics[1000:], method="POST")
        assert beyond.status_code == 400
        assert subscribe(http, channel["id"], topics).status_code == 400
        listing = http.get(f"{CHANNELS}/{channel['id']}/subscriptions")
        assert len(topics_of(listing)) == 1000


def epoch(iso_date: str) -> float:
    return datetime.fromisoformat(iso_date.replace("Z", "+00:00")).timestamp()


def test_subscribing_extends_the_channels_life(api: Api, settings: Settings) -> None:
    settings(channel_ttl_s=1)
    (user,) = offline_users(api, 1)
    channel = create_channel(api.http)
    time.sleep(0.5)

    subscribe(api.http, channel["id"], [presence_topic(user)])

    (listed,) = api.http.get(CHANNELS).json()["entities"]
    assert epoch(listed["expires"]) > epoch(channel["expires"])
    time.sleep(max(0.0, epoch(channel["expires"]) + 0.05 - time.time()))
    assert head(api, channel["id"]) == 200  # past the first expiry, alive thanks to the second


# -- events ---------------------------------------------------------------------------------
def test_a_presence_patch_produces_a_presence_event(
    api: Api, streams: list[Stream], definitions: dict[str, str]
) -> None:
    (user,) = offline_users(api, 1)
    _, stream = listen(api.http, streams, [presence_topic(user)])

    response = set_presence(api.http, user, definitions["On Queue"])

    event = stream.next_event()
    assert event["topicName"] == presence_topic(user)
    assert event["version"] == "2"
    body = event["eventBody"]
    assert body["source"] == "PURECLOUD"
    assert body["primary"] is True
    assert body["presenceDefinition"] == {
        "id": definitions["On Queue"],
        "systemPresence": "ON_QUEUE",
    }
    assert body["modifiedDate"] == response.json()["modifiedDate"]
    assert event["metadata"]["CorrelationId"] == correlation_id(response)


def test_system_presences_are_spelled_upper_case_with_underscores_in_events(
    api: Api, streams: list[Stream], definitions: dict[str, str]
) -> None:
    (user,) = offline_users(api, 1)
    _, stream = listen(api.http, streams, [presence_topic(user)])
    expected = {"Available": "AVAILABLE", "Meal": "MEAL", "Offline": "OFFLINE"}

    for name in expected:
        set_presence(api.http, user, definitions[name])

    seen = [stream.next_event()["eventBody"]["presenceDefinition"] for _ in expected]
    assert seen == [{"id": definitions[n], "systemPresence": s} for n, s in expected.items()]


def test_going_on_queue_and_off_again_produces_routing_status_events(
    api: Api, streams: list[Stream], definitions: dict[str, str]
) -> None:
    (user,) = offline_users(api, 1)
    _, stream = listen(api.http, streams, [routing_topic(user)])

    on = set_presence(api.http, user, definitions["On Queue"])
    idle = stream.next_event()
    off = set_presence(api.http, user, definitions["Available"])
    off_queue = stream.next_event()

    assert idle["topicName"] == routing_topic(user)
    assert idle["eventBody"]["id"] == user
    assert idle["eventBody"]["routingStatus"]["status"] == "IDLE"
    assert idle["eventBody"]["routingStatus"]["startTime"].endswith("Z")
    assert idle["metadata"]["CorrelationId"] == correlation_id(on)
    assert off_queue["eventBody"]["routingStatus"]["status"] == "OFF_QUEUE"
    assert off_queue["metadata"]["CorrelationId"] == correlation_id(off)


def test_a_change_that_keeps_routing_status_produces_no_routing_event(
    api: Api, streams: list[Stream], definitions: dict[str, str]
) -> None:
    (user,) = offline_users(api, 1)
    _, stream = listen(api.http, streams, [presence_topic(user), routing_topic(user)])

    set_presence(api.http, user, definitions["Available"])  # Offline → Available: still OFF_QUEUE
    marker = set_presence(api.http, user, definitions["Busy"])

    assert stream.next_event()["topicName"] == presence_topic(user)
    # Events reach a socket in order: had a routing event been sent, it would come next.
    assert stream.next_event()["metadata"]["CorrelationId"] == correlation_id(marker)


def test_a_bulk_update_produces_an_event_per_user(
    api: Api, streams: list[Stream], definitions: dict[str, str]
) -> None:
    a, b = offline_users(api, 2)
    _, stream = listen(api.http, streams, [presence_topic(a), presence_topic(b)])

    response = api.http.put(
        "/api/v2/users/presences/bulk",
        json=[
            {"id": a, "presenceDefinition": {"id": definitions["Busy"]}},
            {"id": b, "presenceDefinition": {"id": definitions["Away"]}},
        ],
    )
    assert response.status_code == 200, response.text

    events = {e["topicName"]: e for e in (stream.next_event(), stream.next_event())}
    assert events[presence_topic(a)]["eventBody"]["presenceDefinition"]["systemPresence"] == "BUSY"
    assert events[presence_topic(b)]["eventBody"]["presenceDefinition"]["systemPresence"] == "AWAY"
    cid = correlation_id(response)
    assert {e["metadata"]["CorrelationId"] for e in events.values()} == {cid}


def test_setting_routing_status_off_queue_produces_presence_and_routing_events(
    api: Api, streams: list[Stream], definitions: dict[str, str]
) -> None:
    (user,) = offline_users(api, 1)
    set_presence(api.http, user, definitions["On Queue"])
    _, stream = listen(api.http, streams, [presence_topic(user), routing_topic(user)])

    response = api.http.put(f"/api/v2/users/{user}/routingstatus", json={"status": "OFF_QUEUE"})
    assert response.status_code == 200, response.text

    events = {e["topicName"]: e for e in (stream.next_event(), stream.next_event())}
    presence = events[presence_topic(user)]["eventBody"]["presenceDefinition"]
    assert presence["systemPresence"] == "AVAILABLE"
    assert events[routing_topic(user)]["eventBody"]["routingStatus"]["status"] == "OFF_QUEUE"
    cid = correlation_id(response)
    assert {e["metadata"]["CorrelationId"] for e in events.values()} == {cid}


def test_a_change_through_the_admin_api_produces_events(
    api: Api, streams: list[Stream], definitions: dict[str, str]
) -> None:
    (user,) = offline_users(api, 1)
    _, stream = listen(api.http, streams, [presence_topic(user), routing_topic(user)])

    response = api.admin("PUT", f"/users/{user}/presence", {"presence": "On Queue"})

    events = {e["topicName"]: e for e in (stream.next_event(), stream.next_event())}
    presence = events[presence_topic(user)]["eventBody"]["presenceDefinition"]
    assert presence == {"id": definitions["On Queue"], "systemPresence": "ON_QUEUE"}
    assert events[routing_topic(user)]["eventBody"]["routingStatus"]["status"] == "IDLE"
    cid = correlation_id(response)
    assert {e["metadata"]["CorrelationId"] for e in events.values()} == {cid}


def test_work_assigned_through_the_admin_api_produces_a_routing_event(
    api: Api, streams: list[Stream], definitions: dict[str, str]
) -> None:
    (user,) = offline_users(api, 1)
    set_presence(api.http, user, definitions["On Queue"])
    _, stream = listen(api.http, streams, [presence_topic(user), routing_topic(user)])

    response = api.admin("PUT", f"/users/{user}/work", {"interactions": 1})

    marker = api.admin("PUT", f"/users/{user}/work", {"interactions": 0})

    event = stream.next_event()
    assert event["topicName"] == routing_topic(user)
    assert event["eventBody"]["routingStatus"]["status"] == "INTERACTING"
    assert event["metadata"]["CorrelationId"] == correlation_id(response)
    # No presence event in between: presence did not move.
    assert stream.next_event()["metadata"]["CorrelationId"] == correlation_id(marker)


def test_a_secondary_presence_carries_its_own_definition_id(
    api: Api, streams: list[Stream], definitions: dict[str, str]
) -> None:
    (user,) = offline_users(api, 1)
    _, stream = listen(api.http, streams, [presence_topic(user)])
    coffee = definitions["Coffee"]
    assert coffee != definitions["Break"]

    set_presence(api.http, user, coffee)

    body = stream.next_event()["eventBody"]
    assert body["presenceDefinition"] == {"id": coffee, "systemPresence": "BREAK"}


def test_no_events_arrive_for_users_the_channel_is_not_subscribed_to(
    api: Api, streams: list[Stream], definitions: dict[str, str]
) -> None:
    watched, other = offline_users(api, 2)
    _, stream = listen(api.http, streams, [presence_topic(watched)])

    set_presence(api.http, other, definitions["On Queue"])
    set_presence(api.http, watched, definitions["Busy"])

    assert stream.next_event()["topicName"] == presence_topic(watched)


def test_events_reach_every_channel_subscribed_to_the_topic(
    api: Api, streams: list[Stream], definitions: dict[str, str]
) -> None:
    (user,) = offline_users(api, 1)
    _, first = listen(api.http, streams, [presence_topic(user)])
    _, second = listen(api.http, streams, [presence_topic(user)])

    response = set_presence(api.http, user, definitions["Busy"])

    cid = correlation_id(response)
    assert first.next_event()["metadata"]["CorrelationId"] == cid
    assert second.next_event()["metadata"]["CorrelationId"] == cid


def test_events_stop_after_unsubscribing(
    api: Api, streams: list[Stream], definitions: dict[str, str]
) -> None:
    (user,) = offline_users(api, 1)
    channel, stream = listen(api.http, streams, [presence_topic(user)])

    api.http.delete(f"{CHANNELS}/{channel['id']}/subscriptions")
    set_presence(api.http, user, definitions["Busy"])
    subscribe(api.http, channel["id"], [presence_topic(user)])
    resubscribed = set_presence(api.http, user, definitions["Away"])

    assert stream.next_event()["metadata"]["CorrelationId"] == correlation_id(resubscribed)


# -- heartbeats, ping, socket lifecycle -----------------------------------------------------
def test_heartbeats_arrive_about_every_heartbeat_interval(api: Api, streams: list[Stream]) -> None:
    # The session emulator runs with --heartbeat 0.5.
    _, stream = listen(api.http, streams, [])

    heartbeats = [m for m in stream.messages_within(1.4) if m == HEARTBEAT]

    assert 2 <= len(heartbeats) <= 4


def test_a_ping_is_answered_with_a_pong_on_channel_metadata(
    api: Api, streams: list[Stream]
) -> None:
    channel = create_channel(api.http)
    stream = Stream.open(channel["connectUri"], sync=False)
    streams.append(stream)

    stream.send({"message": "ping"})

    assert stream.wait_for(lambda m: m != HEARTBEAT) == PONG


def test_arbitrary_client_text_is_tolerated(
    api: Api, streams: list[Stream], definitions: dict[str, str]
) -> None:
    (user,) = offline_users(api, 1)
    _, stream = listen(api.http, streams, [presence_topic(user)])

    stream.ws.send("2024-05-14T09:03:17Z")
    stream.send({"message": "something else"})
    set_presence(api.http, user, definitions["Busy"])

    assert stream.next_event()["topicName"] == presence_topic(user)


def test_a_second_connection_on_a_channel_drops_the_first(
    api: Api, streams: list[Stream], definitions: dict[str, str]
) -> None:
    (user,) = offline_users(api, 1)
    channel, first = listen(api.http, streams, [presence_topic(user)])

    second = Stream.open(channel["connectUri"])
    streams.append(second)

    how, _ = first.wait_end()
    assert how == CLOSED
    set_presence(api.http, user, definitions["Busy"])
    assert second.next_event()["topicName"] == presence_topic(user)


def test_connecting_to_an_unknown_channel_yields_a_404_message_then_close(api: Api) -> None:
    stream = Stream.open(f"{api.emulator.ws_url}/channels/streaming-0-doesnotexist", sync=False)

    how, messages = stream.wait_end()

    assert how == CLOSED
    assert [m["result"] for m in messages] == ["404"]


def test_an_expired_channel_closes_its_socket_and_is_gone(
    api: Api, streams: list[Stream], settings: Settings
) -> None:
    settings(channel_ttl_s=1)
    channel, stream = listen(api.http, streams, [])

    how, messages = stream.wait_end(timeout=3)

    assert how == CLOSED
    assert [m["result"] for m in messages] == ["404"]
    assert head(api, channel["id"]) == 404
    assert channel["id"] not in listed_channel_ids(api.http)


def test_evicting_a_connected_channel_closes_its_socket(
    api: Api, streams: list[Stream], settings: Settings
) -> None:
    settings(max_channels=2)
    first, first_stream = listen(api.http, streams, [])
    listen(api.http, streams, [])

    create_channel(api.http)

    how, messages = first_stream.wait_end()
    assert how == CLOSED
    assert [m["result"] for m in messages] == ["404"]
    assert head(api, first["id"]) == 404


def test_events_published_while_no_socket_is_open_are_lost(
    api: Api, streams: list[Stream], definitions: dict[str, str]
) -> None:
    (user,) = offline_users(api, 1)
    channel = create_channel(api.http)
    subscribe(api.http, channel["id"], [presence_topic(user)])

    set_presence(api.http, user, definitions["Busy"])
    stream = Stream.open(channel["connectUri"])
    streams.append(stream)
    later = set_presence(api.http, user, definitions["Away"])

    event = stream.next_event()
    assert event["metadata"]["CorrelationId"] == correlation_id(later)
