"""Bad requests get the platform's ErrorBody — never a 500, a hang or a dropped connection.

Malformed JSON and wrong types → 400, bodies over ``request.bytes.max`` (512000) → 413, non-JSON
content types → 415, unknown paths → 404, wrong methods → 405 (reference §3.3). After each bad
request the same keep-alive connection must still serve a good one; after protocol garbage on a
raw socket the server must still serve the next connection.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.emulator._rest import AVAILABLE_ID, assert_error, field_names, users_in_state

MAX_BODY = 512_000
GOOD = "/api/v2/users?pageSize=1"


@dataclass(frozen=True)
class WriteEndpoint:
    """A JSON write endpoint: a body it accepts, and one with a wrongly typed field."""

    method: str
    path: Callable[[str], str]
    good: Callable[[str], Any]
    wrong_types: Callable[[str], Any]
    wrong_field: str


def observation_query(predicates: Any = ()) -> dict:
    return {"filter": {"type": "or", "predicates": predicates}, "metrics": ["oWaiting"]}


ENDPOINTS = {
    "presence patch": WriteEndpoint(
        "PATCH",
        lambda user: f"/api/v2/users/{user}/presences/purecloud",
        lambda user: {"presenceDefinition": {"id": AVAILABLE_ID}},
        lambda user: {"presenceDefinition": {"id": 42}},
        "presenceDefinition.id",
    ),
    "bulk presence put": WriteEndpoint(
        "PUT",
        lambda user: "/api/v2/users/presences/bulk",
        lambda user: [{"id": user, "presenceDefinition": {"id": AVAILABLE_ID}}],
        lambda user: [{"id": user, "presenceDefinition": {"id": AVAILABLE_ID}, "primary": "yes"}],
        "[0].primary",
    ),
    "routing status put": WriteEndpoint(
        "PUT",
        lambda user: f"/api/v2/users/{user}/routingstatus",
        lambda user: {"status": "OFF_QUEUE"},
        lambda user: {"status": ["OFF_QUEUE"]},
        "status",
    ),
    "queue observations": WriteEndpoint(
        "POST",
        lambda user: "/api/v2/analytics/queues/observations/query",
        lambda user: observation_query(),
        lambda user: observation_query(predicates="all"),
        "filter.predicates",
    ),
}


def client_address(response: httpx.Response) -> tuple[str, int]:
    """The local (host, port) of the TCP connection that carried ``response``."""
    address: tuple[str, int] = response.extensions["network_stream"].get_extra_info("client_addr")
    return address


@pytest.fixture
def conn(api) -> Iterator[httpx.Client]:
    """One authenticated keep-alive connection (the pool holds a single connection)."""
    with httpx.Client(
        base_url=api.emulator.base_url,
        headers={"Authorization": f"Bearer {api.token}"},
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        timeout=10,
    ) as client:
        yield client


@pytest.fixture
def user_id(api) -> str:
    return users_in_state(api, "active")[0]["id"]


@pytest.fixture(params=list(ENDPOINTS), ids=list(ENDPOINTS))
def endpoint(request) -> WriteEndpoint:
    return ENDPOINTS[request.param]


def send(conn: httpx.Client, endpoint: WriteEndpoint, user_id: str, **kwargs) -> httpx.Response:
    return conn.request(endpoint.method, endpoint.path(user_id), **kwargs)


def send_raw(conn, endpoint, user_id, body: bytes | Iterator[bytes], content_type: str | None):
    headers = {"Content-Type": content_type} if content_type else {}
    return send(conn, endpoint, user_id, content=body, headers=headers)


def assert_connection_still_serves(conn: httpx.Client, bad: httpx.Response) -> None:
    """The keep-alive connection that carried ``bad`` answers a good request next."""
    good = conn.get(GOOD)
    assert good.status_code == 200, good.text
    assert client_address(good) == client_address(bad), "the connection was dropped"


def chunks(total: int, size: int = 16_384) -> Iterator[bytes]:
    """A body sent with ``Transfer-Encoding: chunked`` (no Content-Length)."""
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        yield b" " * piece
        sent += piece


# -- the baseline: good bodies work ------------------------------------------------------------
def test_each_endpoint_accepts_its_good_body(conn, endpoint, user_id):
    response = send(conn, endpoint, user_id, json=endpoint.good(user_id))

    assert response.status_code == 200, response.text


# -- 400: malformed JSON and wrong types ------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [b"{", b'{"presenceDefinition": }', b"{'single': 'quotes'}", b"", b"[1, 2,]", b"nul"],
    ids=["unclosed", "missing value", "single quotes", "empty", "trailing comma", "bad literal"],
)
def test_malformed_json_is_400(conn, endpoint, user_id, body):
    response = send_raw(conn, endpoint, user_id, body, "application/json")

    error = assert_error(response, 400, "bad.request")
    assert "JSON" in error["message"]
    assert_connection_still_serves(conn, response)


def test_invalid_utf8_is_400(conn, endpoint, user_id):
    response = send_raw(conn, endpoint, user_id, b'{"message": "\xff\xfe"}', "application/json")

    assert_error(response, 400, "bad.request")
    assert_connection_still_serves(conn, response)


def test_deeply_nested_json_is_400_not_500(conn, endpoint, user_id):
    depth = 100_000
    response = send_raw(conn, endpoint, user_id, b"[" * depth + b"]" * depth, "application/json")

    assert_error(response, 400, "bad.request")
    assert_connection_still_serves(conn, response)


def test_wrong_types_are_400_naming_the_field(conn, endpoint, user_id):
    response = send(conn, endpoint, user_id, json=endpoint.wrong_types(user_id))

    error = assert_error(response, 400, "bad.request")
    assert endpoint.wrong_field in field_names(error)
    assert all(d["errorCode"] == "bad.request" for d in error["details"])
    assert_connection_still_serves(conn, response)


@pytest.mark.parametrize("body", [None, 42, "text", True], ids=["null", "number", "string", "bool"])
def test_a_json_scalar_where_a_document_is_expected_is_400(conn, endpoint, user_id, body):
    response = send_raw(conn, endpoint, user_id, json.dumps(body).encode(), "application/json")

    assert_error(response, 400, "bad.request")
    assert_connection_still_serves(conn, response)


def test_json_with_a_charset_parameter_is_accepted(conn, endpoint, user_id):
    body = json.dumps(endpoint.good(user_id)).encode()

    response = send_raw(conn, endpoint, user_id, body, "application/json; charset=utf-8")

    assert response.status_code == 200, response.text


# -- 413: oversized bodies --------------------------------------------------------------------
def test_a_body_of_exactly_the_limit_is_accepted(conn, endpoint, user_id):
    body = json.dumps(endpoint.good(user_id)).encode()
    padded = body + b" " * (MAX_BODY - len(body))

    response = send_raw(conn, endpoint, user_id, padded, "application/json")

    assert len(padded) == MAX_BODY
    assert response.status_code == 200, response.text


def test_a_body_over_the_limit_with_content_length_is_413(conn, endpoint, user_id):
    body = json.dumps(endpoint.good(user_id)).encode()
    padded = body + b" " * (MAX_BODY + 1 - len(body))

    response = send_raw(conn, endpoint, user_id, padded, "application/json")

    error = assert_error(response, 413, "request.entity.too.large")
    assert str(MAX_BODY) in error["message"]
    assert_connection_still_serves(conn, response)


def test_a_much_larger_body_with_content_length_is_413(conn, endpoint, user_id):
    response = send_raw(conn, endpoint, user_id, b" " * (3 * MAX_BODY), "application/json")

    assert_error(response, 413, "request.entity.too.large")
    assert_connection_still_serves(conn, response)


def test_a_chunked_body_over_the_limit_is_413(conn, endpoint, user_id):
    response = send_raw(conn, endpoint, user_id, chunks(MAX_BODY + 1), "application/json")

    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, "request.entity.too.large")
    assert_connection_still_serves(conn, response)


def test_a_chunked_body_within_the_limit_is_read_whole(conn, endpoint, user_id):
    body = json.dumps(endpoint.good(user_id)).encode()

    def slowly() -> Iterator[bytes]:
        yield body[:1]
        yield from chunks(200_000, size=4_096)
        yield body[1:]

    response = send_raw(conn, endpoint, user_id, slowly(), "application/json")

    assert response.status_code == 200, response.text
    assert_connection_still_serves(conn, response)


def test_an_oversized_token_request_is_413(api):
    response = httpx.post(
        f"{api.emulator.base_url}/oauth/token",
        auth=(api.emulator.client_id, api.emulator.client_secret),
        content=b"grant_type=client_credentials&pad=" + b"x" * MAX_BODY,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert_error(response, 413, "request.entity.too.large")


# -- 415: wrong content types -----------------------------------------------------------------
@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/xml", "application/x-www-form-urlencoded", "multipart/form-data"],
)
def test_a_non_json_content_type_is_415(conn, endpoint, user_id, content_type):
    body = json.dumps(endpoint.good(user_id)).encode()

    response = send_raw(conn, endpoint, user_id, body, content_type)

    error = assert_error(response, 415, "unsupported.media.type")
    assert content_type in error["message"]
    assert_connection_still_serves(conn, response)


def test_a_body_without_content_type_is_415(conn, endpoint, user_id):
    body = json.dumps(endpoint.good(user_id)).encode()

    response = send_raw(conn, endpoint, user_id, body, None)

    assert "content-type" not in response.request.headers
    assert_error(response, 415, "unsupported.media.type")
    assert_connection_still_serves(conn, response)


def test_a_wrong_content_type_with_an_oversized_body_is_still_answered(conn, endpoint, user_id):
    response = send_raw(conn, endpoint, user_id, b"x" * (2 * MAX_BODY), "text/plain")

    assert response.status_code in (413, 415)
    assert_connection_still_serves(conn, response)


# -- 404 / 405 --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    ["/api/v2/does-not-exist", "/api/v2/users/x/presences/purecloud/extra", "/nowhere", "/"],
)
def test_an_unknown_path_is_404_error_body(conn, path):
    response = conn.get(path)

    assert_error(response, 404, "not.found")
    assert_connection_still_serves(conn, response)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/api/v2/users/{user}"),
        ("POST", "/api/v2/users"),
        ("GET", "/api/v2/users/presences/bulk"),
        ("PUT", "/api/v2/users/{user}/presences/purecloud"),
        ("POST", "/api/v2/users/{user}/routingstatus"),
        ("GET", "/api/v2/analytics/queues/observations/query"),
        ("GET", "/oauth/token"),
    ],
)
def test_a_wrong_method_is_405_error_body_with_allow(conn, user_id, method, path):
    response = conn.request(method, path.format(user=user_id))

    assert_error(response, 405, "method.not.allowed")
    assert response.headers["Allow"]
    assert method not in response.headers["Allow"].split(",")
    assert_connection_still_serves(conn, response)


def test_a_bad_query_parameter_is_400_not_500(conn):
    response = conn.get("/api/v2/users", params={"pageSize": "%ZZ", "pageNumber": "1e3"})

    assert_error(response, 400, "bad.request")
    assert_connection_still_serves(conn, response)


# -- correlation ids --------------------------------------------------------------------------
def test_every_response_carries_a_fresh_correlation_id_matching_context_id(conn, user_id):
    responses = [
        conn.get(GOOD),
        conn.get("/api/v2/nowhere"),
        conn.delete(f"/api/v2/users/{user_id}"),
        conn.patch(
            f"/api/v2/users/{user_id}/presences/purecloud",
            content=b"{",
            headers={"Content-Type": "application/json"},
        ),
        conn.patch(
            f"/api/v2/users/{user_id}/presences/purecloud",
            content=b"{}",
            headers={"Content-Type": "text/plain"},
        ),
        conn.get(GOOD, headers={"Authorization": "Bearer nope"}),
        conn.post("/oauth/token", data={"grant_type": "client_credentials"}),
        conn.get("/__emulator/settings"),
    ]

    ids = [r.headers["inin-correlation-id"] for r in responses]
    assert len(set(ids)) == len(ids)
    for response in responses:
        if response.status_code >= 400 and "code" in response.json():
            assert response.json()["contextId"] == response.headers["inin-correlation-id"]


# -- raw sockets: protocol garbage never takes the server down ---------------------------------
def exchange(base_url: str, payload: bytes, *, half_close: bool = False) -> bytes:
    """Sends raw bytes on a fresh connection; returns everything read until close or timeout."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        try:
            while chunk := sock.recv(65_536):
                received += chunk
        except TimeoutError:
            pass
        except ConnectionResetError:
            pass
        return received


def assert_next_connection_is_served(api) -> None:
    with httpx.Client(base_url=api.emulator.base_url, timeout=5) as fresh:
        response = fresh.get(GOOD, headers={"Authorization": f"Bearer {api.token}"})
    assert response.status_code == 200


def test_garbage_bytes_get_a_400_and_the_server_keeps_serving(api):
    answer = exchange(api.emulator.base_url, b"\x00\x01\x02\xff garbage \r\n\r\n")

    assert answer.startswith(b"HTTP/1.")
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == b"400"
    assert_next_connection_is_served(api)


def test_a_truncated_request_head_is_dropped_quietly(api):
    answer = exchange(
        api.emulator.base_url, b"GET /api/v2/users HTTP/1.1\r\nHost: x\r\n", half_close=True
    )

    assert answer == b""
    assert_next_connection_is_served(api)


def test_a_truncated_body_does_not_break_the_server(api, user_id):
    head = (
        f"PATCH /api/v2/users/{user_id}/presences/purecloud HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {api.token}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n"
    ).encode()

    exchange(api.emulator.base_url, head + b'{"message": "cut', half_close=True)

    assert_next_connection_is_served(api)
    statuses = api.admin("GET", "/stats").json()["requests"].get("presence.patch", {})
    assert "500" not in statuses


def test_a_truncated_chunked_body_does_not_break_the_server(api, user_id):
    head = (
        f"PATCH /api/v2/users/{user_id}/presences/purecloud HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {api.token}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()

    exchange(api.emulator.base_url, head + b'10\r\n{"message": "', half_close=True)

    assert_next_connection_is_served(api)


@pytest.mark.parametrize(
    "head",
    [
        b"GET /api/v2/users HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
        b"PATCH /api/v2/users HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n{}",
        b"PUT /api/v2/users/presences/bulk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
        b"\r\n\r\nzz\r\n[]\r\n0\r\n\r\n",
        b"GET /api/v2/users HTTP/9.9\r\nHost: x\r\n\r\n",
    ],
    ids=["huge header", "bad content-length", "bad chunk size", "bad version"],
)
def test_malformed_http_is_refused_and_the_server_keeps_serving(api, head):
    answer = exchange(api.emulator.base_url, head)

    if answer:
        assert answer.startswith(b"HTTP/1.")
        assert answer.split(b"\r\n", 1)[0].split(b" ")[1] in (b"400", b"413", b"431", b"505")
    assert_next_connection_is_served(api)


def test_garbage_after_a_good_request_on_a_kept_alive_socket_is_refused_alone(api):
    parts = urlsplit(api.emulator.base_url)
    good = f"GET {GOOD} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.token}\r\n\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(good.encode())
        first = sock.recv(65_536)
        sock.sendall(b"\x16\x03\x01 not http\r\n\r\n")
        second = sock.recv(65_536)

    assert first.startswith(b"HTTP/1.1 200")
    assert second.split(b"\r\n", 1)[0].split(b" ")[1] == b"400"
    assert_next_connection_is_served(api)
