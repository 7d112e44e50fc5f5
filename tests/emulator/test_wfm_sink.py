"""The WFM webhook sink: signed deliveries are recorded and verified; it fails on demand."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from emulator.wfm_sink import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.conftest import Api

SECRET = "wfm-sink-secret"  # the emulator's default
SINK = "/__wfm/events"


def event(event_id: str, **extra: Any) -> bytes:
    body = {
        "event_id": event_id,
        "agent_id": "a-1",
        "presence": "ON_QUEUE",
        "occurred_at": "2024-05-14T09:03:17.067Z",
    }
    return json.dumps(body | extra).encode()


def deliver(
    api: Api,
    raw: bytes,
    *,
    secret: str = SECRET,
    timeout: float = 5.0,
    lower_case_headers: bool = False,
) -> httpx.Response:
    """POST ``raw`` to the sink the way the worker does: timestamped and HMAC-signed."""
    timestamp = str(int(time.time()))
    headers = {
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, timestamp, raw),
        "Content-Type": "application/json",
    }
    if lower_case_headers:
        headers = {name.lower(): value for name, value in headers.items()}
    return httpx.post(
        f"{api.emulator.base_url}{SINK}", content=raw, headers=headers, timeout=timeout
    )


def deliveries(api: Api) -> dict[str, Any]:
    result: dict[str, Any] = api.admin("GET", "/wfm/deliveries").json()
    return result


def wait_for_deliveries(api: Api, count: int, timeout: float = 3.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        seen = deliveries(api)
        if seen["summary"]["received"] >= count or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


def test_a_correctly_signed_delivery_is_accepted_and_recorded_as_valid(api: Api) -> None:
    raw = event("e-1")

    response = deliver(api, raw)

    assert response.status_code == 200
    assert response.json() == {"accepted": True, "eventId": "e-1"}
    (recorded,) = deliveries(api)["deliveries"]
    assert recorded["signatureValid"] is True
    assert recorded["status"] == 200
    assert recorded["eventId"] == "e-1"
    assert recorded["body"] == json.loads(raw)
    assert recorded["headers"][TIMESTAMP_HEADER]


def test_signature_headers_are_matched_case_insensitively(api: Api) -> None:
    deliver(api, event("e-1"), lower_case_headers=True)

    (recorded,) = deliveries(api)["deliveries"]
    assert recorded["signatureValid"] is True


@pytest.mark.parametrize(
    "tamper",
    ["wrong secret", "body changed after signing", "no signature"],
)
def test_a_badly_signed_delivery_is_recorded_as_invalid(api: Api, tamper: str) -> None:
    raw = event("e-1")
    timestamp = str(int(time.time()))
    headers = {TIMESTAMP_HEADER: timestamp, "Content-Type": "application/json"}
    if tamper == "wrong secret":
        headers[SIGNATURE_HEADER] = sign("not-the-secret", timestamp, raw)
    elif tamper == "body changed after signing":
        headers[SIGNATURE_HEADER] = sign(SECRET, timestamp, event("e-2"))

    response = httpx.post(f"{api.emulator.base_url}{SINK}", content=raw, headers=headers)

    assert response.status_code == 401
    assert response.json()["accepted"] is False
    seen = deliveries(api)
    (recorded,) = seen["deliveries"]
    assert recorded["signatureValid"] is False
    assert recorded["status"] == 401
    assert seen["summary"]["badSignatures"] == 1
    assert seen["summary"]["accepted"] == 0


@pytest.mark.parametrize("offset_s", [-301, 301], ids=["replayed", "from-the-future"])
def test_a_delivery_signed_more_than_300_s_away_is_refused_as_stale(
    api: Api, offset_s: int
) -> None:
    raw = event("e-1")
    timestamp = str(int(time.time()) + offset_s)
    headers = {
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(SECRET, timestamp, raw),  # correctly signed, but stale
        "Content-Type": "application/json",
    }

    response = httpx.post(f"{api.emulator.base_url}{SINK}", content=raw, headers=headers)

    assert response.status_code == 401
    assert "older than 300 s" in response.json()["error"]
    (recorded,) = deliveries(api)["deliveries"]
    assert recorded["signatureValid"] is False


def test_a_delivery_signed_within_the_tolerance_is_accepted(api: Api) -> None:
    raw = event("e-1")
    timestamp = str(int(time.time()) - 290)
    headers = {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(SECRET, timestamp, raw)}

    response = httpx.post(f"{api.emulator.base_url}{SINK}", content=raw, headers=headers)

    assert response.status_code == 200


def test_the_sink_fails_the_requested_number_of_times_then_accepts(api: Api) -> None:
    api.admin("POST", "/wfm/fail", {"status": 503, "count": 2})

    codes = [deliver(api, event(f"e-{n}")).status_code for n in range(3)]

    assert codes == [503, 503, 200]
    assert [d["status"] for d in deliveries(api)["deliveries"]] == [503, 503, 200]


def test_a_slow_sink_makes_a_client_with_a_short_timeout_time_out(api: Api) -> None:
    api.admin("POST", "/wfm/fail", {"status": 503, "delay_s": 1.0})

    with pytest.raises(httpx.TimeoutException):
        deliver(api, event("e-1"), timeout=0.3)

    # The sink still saw it, once it was done being slow.
    assert [d["status"] for d in wait_for_deliveries(api, 1)["deliveries"]] == [503]


def test_recovering_the_sink_ends_the_failure(api: Api) -> None:
    api.admin("POST", "/wfm/fail", {"status": 500})
    assert deliver(api, event("e-1")).status_code == 500
    assert deliver(api, event("e-1")).status_code == 500

    api.admin("DELETE", "/wfm/fail")

    assert deliver(api, event("e-1")).status_code == 200


def test_the_summary_counts_duplicates_by_event_id_among_accepted_deliveries(api: Api) -> None:
    api.admin("POST", "/wfm/fail", {"status": 503, "count": 1})
    deliver(api, event("e-1"))  # refused: a retry of it is not a duplicate
    deliver(api, event("e-1"))
    deliver(api, event("e-2"))
    deliver(api, event("e-2"))
    deliver(api, event("e-2"))
    deliver(api, event("e-3"), secret="not-the-secret")  # refused: 401

    assert deliveries(api)["summary"] == {
        "received": 6,
        "accepted": 4,
        "uniqueEvents": 2,
        "duplicates": 2,
        "badSignatures": 1,
    }


def test_the_deliveries_listing_never_echoes_the_signature(api: Api) -> None:
    raw = event("e-1")
    response = deliver(api, raw, lower_case_headers=True)
    assert response.status_code == 200
    deliver(api, event("e-2"))

    listing = api.admin("GET", "/wfm/deliveries").text

    for recorded in json.loads(listing)["deliveries"]:
        assert SIGNATURE_HEADER.lower() not in {h.lower() for h in recorded["headers"]}
    assert "sha256=" not in listing


def test_reset_forgets_deliveries_and_failures(api: Api) -> None:
    api.admin("POST", "/wfm/fail", {"status": 503})
    deliver(api, event("e-1"))

    api.admin("POST", "/reset")

    assert deliveries(api)["summary"]["received"] == 0
    assert deliver(api, event("e-1")).status_code == 200
