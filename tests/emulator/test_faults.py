"""The admin API's injected faults and inspection: what a worker must survive, and what it did."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import Api
from tests.emulator.streaming import (
    CLOSED,
    DROPPED,
    HEARTBEAT,
    Stream,
    listen,
    offline_users,
    presence_topic,
    routing_topic,
    set_presence,
)

CHANNELS = "/api/v2/notifications/channels"


# -- helpers --------------------------------------------------------------------------------
def presence_path(user_id: str) -> str:
    return f"/api/v2/users/{user_id}/presences/purecloud"


def statuses(http: httpx.Client, path: str, times: int) -> list[int]:
    return [http.get(path).status_code for _ in range(times)]


def stats(api: Api) -> dict[str, Any]:
    result: dict[str, Any] = api.admin("GET", "/stats").json()
    return result


def history(api: Api, user_id: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = api.admin("GET", f"/history?user_id={user_id}").json()[user_id]
    return entries


# -- latency and error responses ------------------------------------------------------------
def test_latency_on_one_endpoint_delays_only_that_endpoint(
    api: Api, definitions: dict[str, str]
) -> None:
    (user,) = offline_users(api, 1)
    faults = api.admin(
        "POST", "/faults/latency", {"endpoint": "presence.patch", "latency_ms": 1000}
    ).json()
    assert faults["latency"] == [{"route": "presence.patch", "latency_ms": 1000, "jitter_ms": 0}]

    with (
        httpx.Client(base_url=api.emulator.base_url, headers=api.http.headers) as slow_client,
        ThreadPoolExecutor(1) as pool,
    ):
        began = time.monotonic()
        patch = pool.submit(set_presence, slow_client, user, definitions["Busy"])
        # Meanwhile another endpoint answers at once, before the delayed write is applied.
        read = api.http.get(presence_path(user))
        assert read.status_code == 200
        assert not patch.done()
        assert read.json()["presenceDefinition"]["systemPresence"] == "Offline"

        assert patch.result(timeout=5).status_code == 200
        assert time.monotonic() - began >= 0.95

    assert (
        api.http.get(presence_path(user)).json()["presenceDefinition"]["systemPresence"] == "Busy"
    )


def test_an_error_fault_with_a_count_fails_exactly_that_many_times(api: Api) -> None:
    (user,) = offline_users(api, 1)
    api.admin("POST", "/faults/errors", {"endpoint": "presence.get", "status": 500, "count": 2})

    failed = api.http.get(presence_path(user))
    assert failed.status_code == 500
    body = failed.json()
    assert body["code"] == "internal.server.error"
    assert body["status"] == 500
    assert body["contextId"] == failed.headers["inin-correlation-id"]
    assert api.http.get(f"/api/v2/users/{user}").status_code == 200  # other endpoints unaffected
    assert statuses(api.http, presence_path(user), 3) == [500, 200, 200]


def test_an_error_fault_with_a_rate_fails_some_requests_and_not_others(api: Api) -> None:
    (user,) = offline_users(api, 1)
    api.admin("POST", "/faults/errors", {"endpoint": "users.get", "status": 502, "rate": 0.5})

    seen = statuses(api.http, f"/api/v2/users/{user}", 40)

    assert set(seen) == {200, 502}


def test_a_503_fault_with_retry_after_sets_the_retry_after_header(api: Api) -> None:
    (user,) = offline_users(api, 1)
    api.admin(
        "POST",
        "/faults/errors",
        {"endpoint": "users.get", "status": 503, "count": 1, "retry_after_s": 7},
    )

    response = api.http.get(f"/api/v2/users/{user}")

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "7"
    assert response.json()["code"] == "service.unavailable"


def test_an_error_fault_can_carry_its_own_code_and_message(api: Api) -> None:
    api.admin(
        "POST",
        "/faults/errors",
        {"status": 409, "count": 1, "code": "general.conflict", "message": "Try again."},
    )

    response = api.http.get("/api/v2/users")

    assert response.status_code == 409
    assert response.json()["code"] == "general.conflict"
    assert response.json()["message"] == "Try again."


def test_a_rate_limit_storm_answers_every_api_call_with_429_until_it_ends(
    api: Api, definitions: dict[str, str]
) -> None:
    (user,) = offline_users(api, 1)
    storm = api.admin("POST", "/faults/rate-limit-storm", {"seconds": 1.5, "retry_after_s": 3})
    ends_at = storm.json()["stormUntil"]  # epoch seconds, on this machine's clock

    during = [
        api.http.get("/api/v2/users"),
        api.http.get(presence_path(user)),
        api.http.patch(
            presence_path(user), json={"presenceDefinition": {"id": definitions["Busy"]}}
        ),
        api.http.post(CHANNELS),
    ]
    for response in during:
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "3"
        assert response.json()["code"] == "too.many.requests.retry.after"
        assert response.headers["inin-ratelimit-reset"] == "3"
        assert int(response.headers["inin-ratelimit-count"]) >= 0
        assert "inin-ratelimit-allowed" in response.headers
    assert api.admin("GET", "/users").status_code == 200  # the admin API is never limited

    time.sleep(max(0.0, ends_at + 0.05 - time.time()))
    assert api.http.get("/api/v2/users").status_code == 200
    assert stats(api)["tooManyRequests"] == len(during)


def test_an_injected_429_carries_the_rate_limit_headers(api: Api) -> None:
    api.admin(
        "POST",
        "/faults/errors",
        {"endpoint": "users.list", "status": 429, "count": 1, "retry_after_s": 7},
    )

    response = api.http.get("/api/v2/users")

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.headers["inin-ratelimit-reset"] == "7"
    assert {"inin-ratelimit-allowed", "inin-ratelimit-count"} <= set(response.headers)


def test_clearing_faults_restores_normal_service(api: Api) -> None:
    api.admin("POST", "/faults/errors", {"status": 500})
    api.admin("POST", "/faults/latency", {"latency_ms": 50})
    api.admin("POST", "/faults/events", {"lose_next": 3})
    api.admin("POST", "/faults/heartbeats", {"paused": True})
    assert api.http.get("/api/v2/users").status_code == 500

    cleared = api.admin("DELETE", "/faults").json()

    assert cleared["latency"] == []
    assert cleared["errors"] == []
    assert cleared["events"]["lose_next"] == 0
    assert cleared["heartbeatsPaused"] is False
    assert api.admin("GET", "/faults").json() == cleared
    assert api.http.get("/api/v2/users").status_code == 200


# -- tokens ---------------------------------------------------------------------------------
@pytest.mark.parametrize("action", ["revoke", "expire"])
def test_a_revoked_or_expired_token_gets_401_and_a_new_token_works(api: Api, action: str) -> None:
    assert api.http.get("/api/v2/users").status_code == 200

    api.admin("POST", f"/tokens/{action}", {})

    refused = api.http.get("/api/v2/users")
    assert refused.status_code == 401
    assert refused.json()["code"] == "bad.credentials"
    fresh = api.fetch_token()
    response = api.http.get("/api/v2/users", headers={"Authorization": f"Bearer {fresh}"})
    assert response.status_code == 200


def test_revoking_one_clients_tokens_leaves_other_clients_alone(api: Api) -> None:
    api.admin(
        "POST", "/clients", {"client_id": "other-app", "client_secret": "s", "permissions": ["*"]}
    )
    other = api.fetch_token("other-app", "s")

    assert api.admin("POST", "/tokens/revoke", {"client_id": "other-app"}).json() == {"revoked": 1}

    assert api.http.get("/api/v2/users").status_code == 200
    refused = api.http.get("/api/v2/users", headers={"Authorization": f"Bearer {other}"})
    assert refused.status_code == 401


# -- sockets --------------------------------------------------------------------------------
def test_dropped_sockets_end_without_a_close_frame(
    api: Api, streams: list[Stream], definitions: dict[str, str]
) -> None:
    (user,) = offline_users(api, 1)
    channel, stream = listen(api.http, streams, [presence_topic(user)])

    assert api.admin("POST", "/sockets/drop", {}).json() == {"dropped": 1}

    how, _ = stream.wait_end()
    assert how == DROPPED
    # The channel itself is intact: a reconnect gets events again.
    assert api.http.head(f"{CHANNELS}/{channel['id']}").status_code == 200
    again = Stream.open(channel["connectUri"])
    streams.append(again)
    set_presence(api.http, user, definitions["Busy"])
    assert again.next_event()["topicName"] == presence_topic(user)


def test_dropping_one_channels_socket_leaves_the_others_open(
    api: Api, streams: list[Stream]
) -> None:
    target, doomed = listen(api.http, streams, [])
    _, survivor = listen(api.http, streams, [])

    api.admin("POST", "/sockets/drop", {"channel_id": target["id"]})

    assert doomed.wait_end()[0] == DROPPED
    survivor.sync()


def test_socket_closing_announces_closes_and_the_same_uri_reconnects(
    api: Api, streams: list[Stream], definitions: dict[str, str]
) -> None:
    (user,) = offline_users(api, 1)
    channel, stream = listen(api.http, streams, [presence_topic(user)])

    notified = api.admin("POST", "/sockets/closing", {"close_after_s": 0.3}).json()

    assert notified == {"notified": 1}
    how, messages = stream.wait_end()
    assert how == CLOSED
    (closing,) = messages
    assert closing["topicName"] == "v2.system.socket_closing"
    assert closing["eventBody"]["channelId"] == channel["id"]
    again = Stream.open(channel["connectUri"])
    streams.append(again)
    set_presence(api.http, user, definitions["Busy"])
    assert again.next_event()["topicName"] == presence_topic(user)


# -- event delivery -------------------------------------------------------------------------
def test_delayed_events_arrive_later(
    api: Api, streams: list[Stream], definitions: dict[str, str]
) -> None:
    (user,) = offline_users(api, 1)
    _, stream = listen(api.http, streams, [presence_topic(user)])
    api.admin("POST", "/faults/events", {"delay_ms": 300})

    began = time.monotonic()
    response = set_presence(api.http, user, definitions["Busy"])
    event = stream.next_event()

    assert time.monotonic() - began >= 0.29
    assert event["metadata"]["CorrelationId"] == response.headers["inin-correlation-id"]


def test_a_lost_event_never_arrives_and_the_next_one_does(
    api: Api, streams: list[Stream], definitions: dict[str, str]
) -> None:
    (user,) = offline_users(api, 1)
    _, stream = listen(api.http, streams, [presence_topic(user)])
    api.admin("POST", "/faults/events", {"lose_next": 1})

    set_presence(api.http, user, definitions["Busy"])
    second = set_presence(api.http, user, definitions["Away"])

    # Events reach a socket in order: the first would have come before the second.
    event = stream.next_event()
    assert event["metadata"]["CorrelationId"] == second.headers["inin-correlation-id"]


def test_paused_heartbeats_stop_for_more_than_two_intervals_and_resume(
    api: Api, streams: list[Stream]
) -> None:
    api.admin("POST", "/faults/heartbeats", {"paused": True})
    _, stream = listen(api.http, streams, [])

    assert HEARTBEAT not in stream.messages_within(1.2)  # interval is 0.5 s

    api.admin("POST", "/faults/heartbeats", {"paused": False})
    stream.wait_for(lambda m: m == HEARTBEAT, timeout=1.5)


# -- inspection -----------------------------------------------------------------------------
def test_stats_count_requests_by_route_and_status(api: Api) -> None:
    (user,) = offline_users(api, 1)
    api.http.get(f"/api/v2/users/{user}")
    api.http.get(f"/api/v2/users/{user}")
    api.http.get("/api/v2/users/00000000-0000-4000-8000-000000000000")
    api.http.get("/api/v2/users", headers={"Authorization": "Bearer nonsense"})

    requests = stats(api)["requests"]

    assert requests["users.get"] == {"200": 2, "404": 1}
    assert requests["users.list"] == {"401": 1}
    assert requests["oauth.token"] == {"200": 1}


def test_stats_count_events_published_delivered_and_lost(
    api: Api, streams: list[Stream], definitions: dict[str, str]
) -> None:
    watched, unwatched = offline_users(api, 2)
    _, stream = listen(api.http, streams, [presence_topic(watched), routing_topic(watched)])
    api.admin("POST", "/faults/events", {"lose_next": 1})

    set_presence(api.http, watched, definitions["On Queue"])  # presence (lost) + routing status
    set_presence(api.http, unwatched, definitions["Busy"])  # published, nobody listens
    stream.next_event()

    assert stats(api)["events"] == {"published": 3, "delivered": 1, "lost": 1}


def test_history_records_every_change_with_path_correlation_id_and_time(
    api: Api, definitions: dict[str, str]
) -> None:
    (user,) = offline_users(api, 1)
    writes = [
        ("patch", set_presence(api.http, user, definitions["On Queue"])),
        (
            "bulk",
            api.http.put(
                "/api/v2/users/presences/bulk",
                json=[{"id": user, "presenceDefinition": {"id": definitions["On Queue"]}}],
            ),
        ),
        ("admin", api.admin("PUT", f"/users/{user}/work", {"interactions": 1})),
        (
            "routing_status",
            api.http.put(f"/api/v2/users/{user}/routingstatus", json={"status": "OFF_QUEUE"}),
        ),
        ("admin", api.admin("PUT", f"/users/{user}/presence", {"presence": "Coffee"})),
    ]

    entries = history(api, user)

    assert [e["path"] for e in entries] == [path for path, _ in writes]
    assert [e["correlationId"] for e in entries] == [
        r.headers["inin-correlation-id"] for _, r in writes
    ]
    assert [(e["systemPresence"], e["routingStatus"]) for e in entries] == [
        ("On Queue", "IDLE"),
        ("On Queue", "IDLE"),
        ("On Queue", "INTERACTING"),
        ("Available", "OFF_QUEUE"),
        ("Break", "OFF_QUEUE"),
    ]
    assert entries[-1]["definitionId"] == definitions["Coffee"]
    assert entries[0]["request"] == f"PATCH {presence_path(user)}"
    assert entries[0]["clientId"] == api.emulator.client_id
    timestamps = [e["timestamp"] for e in entries]
    assert timestamps == sorted(timestamps)
    assert all(e["at"].endswith("Z") for e in entries)


def test_history_can_be_narrowed_to_one_user(api: Api, definitions: dict[str, str]) -> None:
    a, b = offline_users(api, 2)
    set_presence(api.http, a, definitions["Busy"])
    set_presence(api.http, b, definitions["Away"])

    assert set(api.admin("GET", f"/history?user_id={a}").json()) == {a}
    assert set(api.admin("GET", "/history").json()) == {a, b}


def test_reset_restores_the_seeded_state(
    api: Api, streams: list[Stream], definitions: dict[str, str]
) -> None:
    seeded = api.admin("GET", "/users").json()
    (user,) = offline_users(api, 1)
    _, stream = listen(api.http, streams, [presence_topic(user)])
    set_presence(api.http, user, definitions["On Queue"])
    api.admin("POST", "/faults/errors", {"endpoint": "users.get", "status": 500})

    api.admin("POST", "/reset")

    assert api.admin("GET", "/users").json() == seeded
    assert api.admin("GET", "/history").json() == {}
    assert api.admin("GET", "/channels").json() == []
    assert api.admin("GET", "/faults").json()["errors"] == []
    assert stats(api)["events"] == {"published": 0, "delivered": 0, "lost": 0}
    assert stream.wait_end()[0] == CLOSED
    assert api.http.get("/api/v2/users").status_code == 401  # tokens are gone too
    fresh = api.fetch_token()
    response = api.http.get(f"/api/v2/users/{user}", headers={"Authorization": f"Bearer {fresh}"})
    assert response.status_code == 200
