"""The official Genesys Cloud Python SDK as an oracle for the emulator's JSON (reference §9).

The SDK's generated models mirror the live swagger, so every response the emulator sends must
deserialize through them. The SDK is lenient (unknown keys dropped, a bad enum value silently
becomes ``"outdated_sdk_version"``, a missing key becomes ``None``), so each test also checks:

- no ``outdated_sdk_version`` anywhere in the deserialized model;
- no ``None`` where the platform always sends a value;
- every key the emulator sent is known to the SDK model (a misspelt key would be dropped
  silently and read back as ``None`` by a real client);
- ids, system presences, labels and counts are the expected ones.

The SDK's urllib3 pool retries everything (429 included, sleeping on ``Retry-After``), so each
client gets a pool with ``Retry(total=0)`` and timeouts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import PureCloudPlatformClientV2 as sdk
import pytest
import urllib3
import websocket
from PureCloudPlatformClientV2.rest import ApiException
from urllib3.util import Retry

from emulator.launcher import EmulatorProcess

pytestmark = pytest.mark.sdk

OUTDATED = "outdated_sdk_version"
# Primary presence ids seen across unrelated real orgs (reference §2.2).
AVAILABLE_ID = "6a3af858-942f-489d-9700-5f9bcdcdae9b"
ON_QUEUE_ID = "e08eaf1b-ee47-4fa9-a231-1200e284798f"
BREAK_ID = "227b37e2-f1d0-4dd0-8f50-badd7cf6d158"
SYSTEM_PRESENCES = {
    "Available", "Away", "Busy", "Offline", "Idle",
    "OnQueue", "Meal", "Training", "Meeting", "Break",
}  # fmt: skip
UNKNOWN_USER = "00000000-0000-4000-8000-000000000000"


# -- helpers --------------------------------------------------------------------------------
def outdated_paths(value: Any, path: str = "$") -> list[str]:
    """Paths in a deserialized model (or its ``to_dict()``) holding ``outdated_sdk_version``."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in outdated_paths(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in outdated_paths(v, f"{path}[{i}]")]
    return [path] if value == OUTDATED else []


def unknown_keys(data: Any, swagger_type: str, path: str = "$") -> list[str]:
    """Paths of JSON keys that the SDK model for ``swagger_type`` does not know.

    Walks the raw JSON alongside the SDK's own type strings (``list[X]``, ``dict(str, X)``,
    model names, primitives).
    """
    if data is None:
        return []
    if swagger_type.startswith("list["):
        inner = swagger_type[5:-1]
        return [p for i, v in enumerate(data) for p in unknown_keys(v, inner, f"{path}[{i}]")]
    if swagger_type.startswith("dict("):
        inner = swagger_type[5:-1].split(", ", 1)[1]
        return [p for k, v in data.items() for p in unknown_keys(v, inner, f"{path}.{k}")]
    if not swagger_type[:1].isupper():  # str, int, bool, datetime, object …
        return []
    if not isinstance(data, dict):
        return [f"{path} (a {type(data).__name__} where the SDK expects {swagger_type})"]
    model = getattr(sdk.models, swagger_type)()
    by_json_name = {
        json_name: model.swagger_types[attr] for attr, json_name in model.attribute_map.items()
    }
    out: list[str] = []
    for key, value in data.items():
        if key not in by_json_name:
            out.append(f"{path}.{key}")
        else:
            out.extend(unknown_keys(value, by_json_name[key], f"{path}.{key}"))
    return out


class _Raw:
    """A response-like object so ``ApiClient.deserialize`` can read a WebSocket event body."""

    def __init__(self, data: Any) -> None:
        self.data = json.dumps(data)

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return "application/json" if name.lower() == "content-type" else default


class Sdk:
    """An SDK ``ApiClient`` logged in against the emulator, with the APIs used here."""

    def __init__(self, emulator: EmulatorProcess) -> None:
        self.client = sdk.ApiClient(host=emulator.base_url)
        rest = self.client.get_http_client().rest_client
        rest.pool_manager = urllib3.PoolManager(
            retries=Retry(total=0), timeout=urllib3.Timeout(connect=3, read=10)
        )
        self.client.get_client_credentials_token(emulator.client_id, emulator.client_secret)
        self.presence = sdk.PresenceApi(self.client)
        self.users = sdk.UsersApi(self.client)
        self.notifications = sdk.NotificationsApi(self.client)
        self.analytics = sdk.AnalyticsApi(self.client)

    @property
    def last_json(self) -> Any:
        """The raw JSON of the last successful response."""
        return json.loads(self.client.last_response.data)

    @property
    def last_correlation_id(self) -> str:
        value: str = self.client.last_response.getheader("inin-correlation-id")
        return value

    def check(self, model: Any, swagger_type: str) -> dict[str, Any] | list[Any]:
        """Fidelity checks shared by every call; returns ``to_dict()`` of the result."""
        assert outdated_paths(model) == [], (
            f"enum values the SDK does not know: {outdated_paths(model)}"
        )
        unknown = unknown_keys(self.last_json, swagger_type)
        assert unknown == [], f"keys the SDK model {swagger_type} drops: {unknown}"
        if isinstance(model, list):
            return [m.to_dict() for m in model]
        result: dict[str, Any] = model.to_dict()
        return result

    def event(self, body: Any, swagger_type: str) -> Any:
        """Deserialize a notification ``eventBody`` through the SDK's event model."""
        assert unknown_keys(body, swagger_type) == [], unknown_keys(body, swagger_type)
        model = self.client.deserialize(_Raw(body), swagger_type)
        assert outdated_paths(model) == [], outdated_paths(model)
        return model


# The paging fields of every *EntityListing that carries a total.
PAGED_LISTING = (
    "entities", "page_size", "page_number", "total", "page_count", "self_uri", "first_uri",
    "last_uri",
)  # fmt: skip


def assert_present(obj: dict[str, Any], *names: str, where: str = "") -> None:
    missing = [n for n in names if obj.get(n) is None]
    assert not missing, f"{where or 'object'} lacks {missing}: {obj}"


def presence_body(definition_id: str, message: str | None = None) -> Any:
    body = sdk.UserPresence()
    ref = sdk.PresenceDefinition()
    ref.id = definition_id
    body.presence_definition = ref
    if message is not None:
        body.message = message
    return body


def assert_user_presence(
    presence: dict[str, Any], user_id: str, definition_id: str, system: str
) -> None:
    """A ``UserPresence`` for the PURECLOUD source, as REST reads spell it (reference §2.4)."""
    assert_present(
        presence,
        "source",
        "presence_definition",
        "modified_date",
        "self_uri",
        "primary",
        where="UserPresence",
    )
    assert presence["source"] == "PURECLOUD"
    assert presence["primary"] is True
    assert presence["self_uri"] == f"/api/v2/users/{user_id}/presences"
    ref = presence["presence_definition"]
    assert_present(ref, "id", "system_presence", "self_uri", where="presenceDefinition")
    assert ref["id"] == definition_id
    assert ref["system_presence"] == system


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture
def client(api: Any) -> Sdk:
    """The SDK, logged in against a freshly reset emulator."""
    return Sdk(api.emulator)


@pytest.fixture
def agent(api: Any) -> str:
    """An active agent who is a joined member of at least one queue."""
    for user in api.active_users():
        if user["queues"]:
            queues = api.http.get(f"/api/v2/users/{user['id']}/queues").json()
            if queues["entities"]:
                return str(user["id"])
    pytest.fail("the seeded org has no active agent joined to a queue")


@pytest.fixture
def socket_factory() -> Iterator[Any]:
    opened: list[websocket.WebSocket] = []

    def connect(uri: str) -> websocket.WebSocket:
        ws = websocket.create_connection(uri, timeout=5)
        opened.append(ws)
        return ws

    yield connect
    for ws in opened:
        ws.close()


# -- tests ----------------------------------------------------------------------------------
def test_the_oracle_sees_what_the_sdk_hides(client: Sdk) -> None:
    """The helpers catch what the lenient SDK swallows; otherwise every check here is vacuous."""
    wrong = {"userId": "u", "status": "On Queue", "startTme": "2026-01-01T00:00:00.000Z"}
    model = client.client.deserialize(_Raw(wrong), "RoutingStatus")
    assert model.status == OUTDATED  # no error raised: the bad enum value is simply replaced
    assert model.start_time is None  # and the misspelt key is simply dropped
    assert outdated_paths(model) == ["$.status"]
    assert unknown_keys(wrong, "RoutingStatus") == ["$.startTme"]
    assert unknown_keys(
        {"entities": [{"id": "t", "state": 1, "x": {}}]}, "ChannelTopicEntityListing"
    ) == ["$.entities[0].x"]


def test_token_is_read_from_the_oauth_response(emulator: EmulatorProcess, api: Any) -> None:
    client = Sdk(emulator)
    token = client.client.access_token
    assert token
    # The token the SDK stored works for a plain request too.
    response = httpx.get(
        f"{emulator.base_url}/api/v2/users/{api.active_users()[0]['id']}/routingstatus",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200


def test_legacy_presencedefinitions_listing(client: Sdk) -> None:
    # The SDK forces its DeprecationWarning through (simplefilter "always"): catch it here.
    with pytest.deprecated_call():
        listing = client.presence.get_presencedefinitions(page_size=100)
    data = client.check(listing, "OrganizationPresenceEntityListing")
    assert isinstance(data, dict)
    assert_present(data, *PAGED_LISTING)
    assert data["page_number"] == 1
    assert data["total"] == len(data["entities"])
    for entity in data["entities"]:
        assert_present(
            entity,
            "id",
            "name",
            "language_labels",
            "system_presence",
            "deactivated",
            "primary",
            "self_uri",
        )
        assert entity["deactivated"] is False  # the default is deleted=false
        assert entity["self_uri"] == f"/api/v2/presencedefinitions/{entity['id']}"
        assert entity["language_labels"]["en_US"] == entity["name"]
    primary = {e["id"]: e for e in data["entities"] if e["primary"]}
    # Title case with a space on this surface (captured payload in reference §2.2).
    assert {e["system_presence"] for e in primary.values()} == (SYSTEM_PRESENCES - {"OnQueue"}) | {
        "On Queue"
    }
    assert primary[ON_QUEUE_ID]["system_presence"] == "On Queue"
    assert primary[ON_QUEUE_ID]["language_labels"] == {"en_US": "On Queue"}
    assert primary[AVAILABLE_ID]["system_presence"] == "Available"
    secondary = [e for e in data["entities"] if not e["primary"]]
    assert secondary, "the seeded org has org-defined (secondary) presences"
    # Each secondary presence maps onto one of the system presences.
    assert {e["system_presence"] for e in secondary} <= {
        e["system_presence"] for e in primary.values()
    }


def test_presence_definitions_listing(client: Sdk) -> None:
    listing = client.presence.get_presence_definitions()
    data = client.check(listing, "OrganizationPresenceDefinitionEntityListing")
    assert isinstance(data, dict)
    assert_present(data, "total", "entities", "self_uri")
    assert data["total"] == len(data["entities"])
    by_id = {e["id"]: e for e in data["entities"]}
    for entity in data["entities"]:
        assert_present(
            entity, "id", "type", "language_labels", "system_presence", "deactivated", "self_uri"
        )
        assert entity["type"] in ("System", "User")
        assert entity["system_presence"] in SYSTEM_PRESENCES
        assert entity["deactivated"] is False
        assert entity["self_uri"] == f"/api/v2/presence/definitions/{entity['id']}"
        if entity["type"] == "User":
            assert entity["division_id"], "an org-defined presence belongs to a division"
    system = [e for e in data["entities"] if e["type"] == "System"]
    assert {e["system_presence"] for e in system} == SYSTEM_PRESENCES
    # Enum spelling on this surface is "OnQueue" (reference §2.2 / §2.3).
    assert by_id[ON_QUEUE_ID]["system_presence"] == "OnQueue"
    assert by_id[ON_QUEUE_ID]["type"] == "System"
    assert by_id[AVAILABLE_ID]["language_labels"]["en_US"] == "Available"
    with_deactivated = client.presence.get_presence_definitions(deactivated=True)
    client.check(with_deactivated, "OrganizationPresenceDefinitionEntityListing")
    assert with_deactivated.total > data["total"]
    assert any(e.deactivated for e in with_deactivated.entities)


def test_get_user_with_presence_and_routing_status(client: Sdk, agent: str) -> None:
    user = client.users.get_user(agent, expand=["presence", "routingStatus"])
    data = client.check(user, "User")
    assert isinstance(data, dict)
    assert_present(
        data,
        "id",
        "name",
        "division",
        "email",
        "state",
        "username",
        "version",
        "self_uri",
        "presence",
        "routing_status",
        where="User",
    )
    assert data["id"] == agent
    assert data["state"] == "active"
    assert data["self_uri"] == f"/api/v2/users/{agent}"
    assert_present(data["division"], "id", "name", "self_uri", where="division")
    presence = data["presence"]
    assert presence["presence_definition"]["system_presence"] in (
        SYSTEM_PRESENCES - {"OnQueue"}
    ) | {"On Queue"}
    assert_user_presence(
        presence,
        agent,
        presence["presence_definition"]["id"],
        presence["presence_definition"]["system_presence"],
    )
    routing = data["routing_status"]
    assert_present(routing, "user_id", "status", "start_time", where="routingStatus")
    assert routing["user_id"] == agent
    on_queue = presence["presence_definition"]["id"] == ON_QUEUE_ID
    assert (routing["status"] != "OFF_QUEUE") == on_queue

    plain = client.users.get_user(agent)
    client.check(plain, "User")
    assert plain.presence is None
    assert plain.routing_status is None


def test_get_user_queues(client: Sdk, agent: str) -> None:
    listing = client.users.get_user_queues(agent)
    data = client.check(listing, "UserQueueEntityListing")
    assert isinstance(data, dict)
    assert_present(data, *PAGED_LISTING)
    assert data["page_size"] == 25
    assert data["page_number"] == 1
    assert data["total"] == len(data["entities"]) >= 1
    for queue in data["entities"]:
        assert_present(
            queue,
            "id",
            "name",
            "division",
            "joined",
            "member_count",
            "joined_member_count",
            "self_uri",
            where="UserQueue",
        )
        assert queue["joined"] is True  # joined defaults to true
        assert queue["self_uri"] == f"/api/v2/routing/queues/{queue['id']}"
        assert 1 <= queue["joined_member_count"] <= queue["member_count"]
        assert_present(queue["division"], "id", "name", "self_uri", where="queue division")
    everything = client.users.get_user_queues(agent, joined=False)
    assert everything.total >= data["total"]


def test_patch_purecloud_presence(client: Sdk, agent: str, api: Any) -> None:
    result = client.presence.patch_user_presences_purecloud(
        agent, presence_body(BREAK_ID, "back soon")
    )
    data = client.check(result, "UserPresence")
    assert isinstance(data, dict)
    assert_user_presence(data, agent, BREAK_ID, "Break")
    assert data["message"] == "back soon"
    assert data["name"] == "Break"

    result = client.presence.patch_user_presences_purecloud(agent, presence_body(ON_QUEUE_ID))
    correlation_id = client.last_correlation_id
    data = client.check(result, "UserPresence")
    assert isinstance(data, dict)
    assert_user_presence(data, agent, ON_QUEUE_ID, "On Queue")
    # The read-back agrees, and On Queue implies an on-queue routing status.
    read = client.presence.get_user_presences_purecloud(agent)
    client.check(read, "UserPresence")
    assert read.presence_definition.id == ON_QUEUE_ID
    assert read.modified_date == result.modified_date
    status = client.users.get_user_routingstatus(agent)
    client.check(status, "RoutingStatus")
    assert status.status in ("IDLE", "INTERACTING")
    history = api.admin("GET", f"/history?user_id={agent}").json()[agent]
    assert (history[-1]["correlationId"], history[-1]["definitionId"]) == (
        correlation_id,
        ON_QUEUE_ID,
    )


def test_bulk_put_presences(client: Sdk, api: Any) -> None:
    ids = [str(u["id"]) for u in api.active_users()[:3]]
    body = []
    for user_id, definition_id in zip(ids, (AVAILABLE_ID, ON_QUEUE_ID, BREAK_ID), strict=True):
        item = sdk.MutableUserPresence()
        item.id = user_id
        item.source = "PURECLOUD"
        ref = sdk.PresenceDefinition()
        ref.id = definition_id
        item.presence_definition = ref
        body.append(item)
    result = client.presence.put_users_presences_bulk(body)
    data = client.check(result, "list[UserPresence]")
    assert isinstance(data, list)
    assert len(data) == 3
    for presence, user_id, (definition_id, system) in zip(
        data,
        ids,
        ((AVAILABLE_ID, "Available"), (ON_QUEUE_ID, "On Queue"), (BREAK_ID, "Break")),
        strict=True,
    ):
        assert presence["id"] == user_id
        assert_user_presence(presence, user_id, definition_id, system)

    bulk = client.presence.get_users_presences_purecloud_bulk(id=ids)
    rows = client.check(bulk, "list[UcUserPresence]")
    assert isinstance(rows, list)
    assert {r["user_id"]: r["presence_definition"]["id"] for r in rows} == dict(
        zip(ids, (AVAILABLE_ID, ON_QUEUE_ID, BREAK_ID), strict=True)
    )


def test_routing_status_get_and_put(client: Sdk, agent: str) -> None:
    client.presence.patch_user_presences_purecloud(agent, presence_body(ON_QUEUE_ID))
    status = client.users.get_user_routingstatus(agent)
    data = client.check(status, "RoutingStatus")
    assert isinstance(data, dict)
    assert_present(data, "user_id", "status", "start_time", where="RoutingStatus")
    assert data["user_id"] == agent
    assert data["status"] in ("IDLE", "INTERACTING")

    off = sdk.RoutingStatus()
    off.status = "OFF_QUEUE"
    result = client.users.put_user_routingstatus(agent, off)
    data = client.check(result, "RoutingStatus")
    assert isinstance(data, dict)
    assert_present(data, "user_id", "status", "start_time", where="RoutingStatus")
    assert data["status"] == "OFF_QUEUE"
    assert client.presence.get_user_presences_purecloud(agent).presence_definition.id != ON_QUEUE_ID

    # The platform answers OFF_QUEUE for an unknown user rather than 404 (reference §2.7).
    unknown = client.users.get_user_routingstatus(UNKNOWN_USER)
    assert client.check(unknown, "RoutingStatus")
    assert unknown.status == "OFF_QUEUE"


def test_notification_channel_and_subscriptions(
    client: Sdk, agent: str, emulator: EmulatorProcess
) -> None:
    channel = client.notifications.post_notifications_channels()
    data = client.check(channel, "Channel")
    assert isinstance(data, dict)
    assert_present(data, "id", "connect_uri", "expires", where="Channel")
    assert data["connect_uri"].endswith(f"/channels/{data['id']}")
    assert data["connect_uri"].startswith(emulator.ws_url)
    assert data["expires"].timestamp() > time.time() + 3600

    presence, routing = sdk.ChannelTopic(), sdk.ChannelTopic()
    presence.id = f"v2.users.{agent}.presence"
    routing.id = f"v2.users.{agent}.routingStatus"
    added = client.notifications.post_notifications_channel_subscriptions(channel.id, [presence])
    data = client.check(added, "ChannelTopicEntityListing")
    assert isinstance(data, dict)
    assert [(t["id"], t["state"]) for t in data["entities"]] == [(presence.id, "Permitted")]
    for topic in data["entities"]:
        assert_present(topic, "id", "state", "self_uri", where="ChannelTopic")

    added = client.notifications.post_notifications_channel_subscriptions(channel.id, [routing])
    client.check(added, "ChannelTopicEntityListing")
    assert sorted(t.id for t in added.entities) == sorted([presence.id, routing.id])

    replaced = client.notifications.put_notifications_channel_subscriptions(channel.id, [routing])
    client.check(replaced, "ChannelTopicEntityListing")
    assert [(t.id, t.state) for t in replaced.entities] == [(routing.id, "Permitted")]

    current = client.notifications.get_notifications_channel_subscriptions(channel.id)
    client.check(current, "ChannelTopicEntityListing")
    assert [t.id for t in current.entities] == [routing.id]

    bad = sdk.ChannelTopic()
    bad.id = "v2.users.not-a-user.presence"
    lenient = client.notifications.put_notifications_channel_subscriptions(
        channel.id, [routing, bad], ignore_errors=True
    )
    client.check(lenient, "ChannelTopicEntityListing")
    states = {t.id: t.state for t in lenient.entities}
    assert states == {routing.id: "Permitted", bad.id: "Rejected"}


def test_queue_observations(client: Sdk, agent: str) -> None:
    queue_ids = [q.id for q in client.users.get_user_queues(agent).entities]
    # Put the agent on queue so the On Queue buckets are not empty.
    client.presence.patch_user_presences_purecloud(agent, presence_body(ON_QUEUE_ID))
    predicates = []
    for queue_id in queue_ids:
        predicate = sdk.QueueObservationQueryPredicate()
        predicate.type = "dimension"
        predicate.dimension = "queueId"
        predicate.operator = "matches"
        predicate.value = queue_id
        predicates.append(predicate)
    query_filter = sdk.QueueObservationQueryFilter()
    query_filter.type = "or"
    query_filter.predicates = predicates
    query = sdk.QueueObservationQuery()
    query.filter = query_filter
    query.metrics = [
        "oOnQueueUsers", "oOffQueueUsers", "oActiveUsers", "oMemberUsers", "oUserPresences",
        "oUserRoutingStatuses", "oWaiting", "oInteracting", "oAlerting",
    ]  # fmt: skip
    response = client.analytics.post_analytics_queues_observations_query(query)
    data = client.check(response, "QueueObservationQueryResponse")
    assert isinstance(data, dict)
    assert_present(data, "results", "system_to_organization_mappings")
    assert ON_QUEUE_ID in data["system_to_organization_mappings"]["ON_QUEUE"]
    assert AVAILABLE_ID in data["system_to_organization_mappings"]["AVAILABLE"]
    assert {r["group"]["queueId"] for r in data["results"]} == set(queue_ids)
    for result in data["results"]:
        for datum in result["data"]:
            assert_present(datum, "metric", "stats", where="ObservationMetricData")
            assert isinstance(datum["stats"]["count"], int)
            assert datum["stats"]["count"] > 0
        if result["group"].get("mediaType") is None:
            by_metric: dict[str, int] = {}
            for datum in result["data"]:
                by_metric[datum["metric"]] = (
                    by_metric.get(datum["metric"], 0) + datum["stats"]["count"]
                )
            # The agent is joined to every listed queue and on queue now.
            assert by_metric["oOnQueueUsers"] >= 1
            assert (
                by_metric["oMemberUsers"] >= by_metric["oActiveUsers"] >= by_metric["oOnQueueUsers"]
            )
            for datum in result["data"]:
                if datum["metric"] == "oOnQueueUsers":
                    assert datum["qualifier"] in (
                        "IDLE",
                        "INTERACTING",
                        "NOT_RESPONDING",
                        "COMMUNICATING",
                    )
                if datum["metric"] == "oUserPresences":
                    assert any(
                        datum["qualifier"] in ids
                        for ids in data["system_to_organization_mappings"].values()
                    )


def test_errors_surface_as_api_exception_with_error_body(client: Sdk, agent: str) -> None:
    with pytest.raises(ApiException) as not_found:
        client.users.get_user(UNKNOWN_USER)
    assert not_found.value.status == 404
    body = json.loads(not_found.value.body)
    assert unknown_keys(body, "ErrorBody") == []
    error = client.client.deserialize(_Raw(body), "ErrorBody")
    assert error.status == 404
    assert error.code == "not.found"
    assert error.message
    assert error.context_id == not_found.value.headers["inin-correlation-id"]

    with pytest.raises(ApiException) as bad:
        client.presence.patch_user_presences_purecloud(agent, presence_body("no-such-definition"))
    assert bad.value.status == 400
    body = json.loads(bad.value.body)
    assert unknown_keys(body, "ErrorBody") == []
    error = client.client.deserialize(_Raw(body), "ErrorBody")
    assert error.status == 400
    assert error.code == "bad.request"
    assert error.message
    assert error.context_id == bad.value.headers["inin-correlation-id"]
    assert [d.field_name for d in error.details] == ["presenceDefinition.id"]


def test_429_is_not_retried_by_the_patched_pool(client: Sdk, agent: str, api: Any) -> None:
    api.admin("POST", "/faults/rate-limit-storm", {"seconds": 30, "retry_after_s": 7})
    began = time.monotonic()
    with pytest.raises(ApiException) as limited:
        client.presence.patch_user_presences_purecloud(agent, presence_body(ON_QUEUE_ID))
    assert time.monotonic() - began < 3, "the SDK slept on Retry-After: its hidden retries are on"
    assert limited.value.status == 429
    assert limited.value.headers["Retry-After"] == "7"
    error = client.client.deserialize(_Raw(json.loads(limited.value.body)), "ErrorBody")
    assert error.code == "too.many.requests.retry.after"
    assert error.status == 429
    assert outdated_paths(error) == []
    patches = api.admin("GET", "/stats").json()["requests"]["presence.patch"]
    assert patches == {"429": 1}


def test_presence_event_over_websocket(client: Sdk, agent: str, socket_factory: Any) -> None:
    # Start off queue, so going On Queue moves the routing status too.
    client.presence.patch_user_presences_purecloud(agent, presence_body(AVAILABLE_ID))
    channel = client.notifications.post_notifications_channels()
    ws = socket_factory(channel.connect_uri)
    topics = []
    for kind in ("presence", "routingStatus"):
        topic = sdk.ChannelTopic()
        topic.id = f"v2.users.{agent}.{kind}"
        topics.append(topic)
    client.notifications.put_notifications_channel_subscriptions(channel.id, topics)

    result = client.presence.patch_user_presences_purecloud(
        agent, presence_body(ON_QUEUE_ID, "on it")
    )
    correlation_id = client.last_correlation_id
    wanted = {f"v2.users.{agent}.presence", f"v2.users.{agent}.routingStatus"}
    events: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 5
    while wanted - events.keys() and time.monotonic() < deadline:
        message = json.loads(ws.recv())
        if message.get("topicName") in wanted:
            events[message["topicName"]] = message
    presence_event = events.get(f"v2.users.{agent}.presence")
    assert presence_event is not None, f"no presence event; got {list(events)}"
    assert presence_event["version"] == "2"
    assert presence_event["metadata"]["CorrelationId"] == correlation_id
    body = client.event(presence_event["eventBody"], "PresenceEventUserPresence")
    assert body.source == "PURECLOUD"
    assert body.presence_definition.id == ON_QUEUE_ID
    assert body.presence_definition.system_presence == "ON_QUEUE"  # upper case in events
    assert body.primary is True
    assert body.message == "on it"
    assert body.modified_date == result.modified_date

    routing_event = events.get(f"v2.users.{agent}.routingStatus")
    assert routing_event is not None, f"no routing status event; got {list(events)}"
    assert routing_event["metadata"]["CorrelationId"] == correlation_id
    routing = client.event(routing_event["eventBody"], "UserRoutingStatusUserRoutingStatus")
    assert routing.id == agent
    assert routing.routing_status.status in ("IDLE", "INTERACTING")
    assert routing.routing_status.start_time is not None


# -- system messages --------------------------------------------------------------------------
def synced(ws: Any) -> Any:
    """Ping and wait for the pong: the emulator has attached the socket to its channel."""
    ws.send(json.dumps({"message": "ping"}))
    while json.loads(ws.recv()).get("eventBody", {}).get("message") != "pong":
        pass
    return ws


def system_messages_until_close(ws: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every ``v2.system.*`` message the socket receives before it closes."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ws.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            text = ws.recv()
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
            return out
        if not text:
            return out
        message = json.loads(text)
        if str(message.get("topicName", "")).startswith("v2.system."):
            out.append(message)
    raise AssertionError(f"socket still open after {timeout}s; got {out}")


@pytest.mark.parametrize(
    ("trigger", "topic", "kind", "reason"),
    [
        (("/tokens/revoke", {}), "v2.system.token_revoked", "token_revoked", "user_tokens_revoked"),
        (("/tokens/expire", {}), "v2.system.token_revoked", "token_revoked", None),
        (
            ("/sockets/system", {"kind": "no_longer_subscribed"}),
            "v2.system.no_longer_subscribed",
            "no_longer_subscribed",
            None,
        ),
        (
            ("/sockets/system", {"kind": "subscription_changed"}),
            "v2.system.subscription_changed",
            "subscription_changed",
            None,
        ),
        (("/sockets/closing", {"close_after_s": 0.1}), "v2.system.socket_closing", None, None),
    ],
    ids=[
        "token-revoked",
        "token-expired",
        "no-longer-subscribed",
        "subscription-changed",
        "closing",
    ],
)
def test_system_messages_deserialize_through_the_sdk(
    client: Sdk,
    api: Any,
    socket_factory: Any,
    trigger: tuple[str, dict[str, Any]],
    topic: str,
    kind: str | None,
    reason: str | None,
) -> None:
    channel = client.notifications.post_notifications_channels()
    ws = synced(socket_factory(channel.connect_uri))

    api.admin("POST", *trigger)

    [message] = system_messages_until_close(ws)
    assert message["topicName"].startswith(topic)
    assert message["version"] == "2"
    assert message["metadata"]["CorrelationId"] == message["eventBody"]["correlationId"]
    body = client.event(message["eventBody"], "SystemMessageSystemMessage").to_dict()
    assert body["channel_id"] == channel.id
    assert body["system_topic_type"] == kind
    assert body["reason"] == reason
    assert_present(
        body, "correlation_id", "organization_id", "oauth_client_id", "oauth_client_org_id",
        "message", where="SystemMessageSystemMessage",
    )  # fmt: skip
    assert body["oauth_client_id"] == api.emulator.client_id


def test_a_second_socket_sends_no_longer_subscribed_to_the_first(
    client: Sdk, socket_factory: Any
) -> None:
    channel = client.notifications.post_notifications_channels()
    first = synced(socket_factory(channel.connect_uri))
    synced(socket_factory(channel.connect_uri))

    [message] = system_messages_until_close(first)

    body = client.event(message["eventBody"], "SystemMessageSystemMessage")
    assert body.system_topic_type == "no_longer_subscribed"
    assert body.reason == "another_channel_subscribed"


# -- sources, settings, topics ----------------------------------------------------------------
def test_presence_sources_settings_and_primary_source(client: Sdk, agent: str) -> None:
    sources = client.presence.get_presence_sources()
    data = client.check(sources, "SourceEntityListing")
    assert isinstance(data, dict)
    assert data["total"] == len(data["entities"]) >= 1
    for source in data["entities"]:
        assert_present(source, "id", "name", "type", "deactivated", "self_uri", where="Source")
    integration = data["entities"][0]["id"]

    settings = client.presence.get_presence_settings()
    assert client.check(settings, "PresenceSettings")
    assert settings.default_primary_presence_registered_source_id is None  # PURECLOUD

    primary = client.presence.get_presence_user_primarysource(agent)
    data = client.check(primary, "UserPrimarySource")
    assert data["source_id"] == "PURECLOUD"
    assert data["registered"] is False

    body = sdk.PresenceSettings()
    body.default_primary_presence_registered_source_id = integration
    client.presence.put_presence_settings(body)
    primary = client.presence.get_presence_user_primarysource(agent)
    data = client.check(primary, "UserPrimarySource")
    assert data["source_id"] == integration
    assert data["registered"] is True


def test_a_write_through_a_source_that_is_not_primary_says_so(client: Sdk, agent: str) -> None:
    integration = client.presence.get_presence_sources().entities[0].id
    body = sdk.PresenceSettings()
    body.default_primary_presence_registered_source_id = integration
    client.presence.put_presence_settings(body)

    result = client.presence.patch_user_presences_purecloud(agent, presence_body(BREAK_ID))

    data = client.check(result, "UserPresence")
    assert isinstance(data, dict)
    assert data["primary"] is False
    effective = client.users.get_user(agent, expand=["presence"]).presence
    assert effective.presence_definition.id != BREAK_ID


def test_bulk_put_with_source_id(client: Sdk, agent: str) -> None:
    integration = client.presence.get_presence_sources().entities[0].id
    item = sdk.MutableUserPresence()
    item.id = agent
    item.source_id = integration
    ref = sdk.PresenceDefinition()
    ref.id = BREAK_ID
    item.presence_definition = ref

    result = client.presence.put_users_presences_bulk([item])

    data = client.check(result, "list[UserPresence]")
    assert isinstance(data, list)
    assert data[0]["source_id"] == integration
    assert data[0]["primary"] is False


def test_system_presences(client: Sdk) -> None:
    listed = client.presence.get_systempresences()
    data = client.check(listed, "list[SystemPresence]")
    assert isinstance(data, list)
    assert {p["name"] for p in data} == {
        "Available", "Away", "Busy", "Offline", "Idle",
        "On Queue", "Meal", "Training", "Meeting", "Break",
    }  # fmt: skip


def test_available_topics(client: Sdk) -> None:
    listed = client.notifications.get_notifications_availabletopics()
    data = client.check(listed, "AvailableTopicEntityListing")
    assert isinstance(data, dict)
    ids = {t["id"] for t in data["entities"]}
    assert ids == {
        "v2.users.{id}.presence",
        "v2.users.{id}.routingStatus",
        "v2.users.{id}.activity",
    }
    for topic in data["entities"]:
        assert_present(topic, "id", "description", "requires_permissions", where="AvailableTopic")


def test_activity_event_over_websocket(client: Sdk, agent: str, socket_factory: Any) -> None:
    channel = client.notifications.post_notifications_channels()
    ws = socket_factory(channel.connect_uri)
    topic = sdk.ChannelTopic()
    topic.id = f"v2.users.{agent}.activity"
    client.notifications.put_notifications_channel_subscriptions(channel.id, [topic])

    client.presence.patch_user_presences_purecloud(agent, presence_body(ON_QUEUE_ID))

    deadline = time.monotonic() + 5
    message: dict[str, Any] = {}
    while time.monotonic() < deadline and message.get("topicName") != topic.id:
        message = json.loads(ws.recv())
    assert message.get("topicName") == topic.id
    body = client.event(message["eventBody"], "AgentActivityChangedTopicAgentActivity")
    assert body.id == agent
    assert body.presence.presence_definition.id == ON_QUEUE_ID
    assert body.routing_status.status in ("IDLE", "INTERACTING")
