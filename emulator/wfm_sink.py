"""A WFM webhook receiver that records every delivery and fails on demand.

Signature contract (the worker signs, the sink verifies): header ``X-Presence-Timestamp`` holds
Unix seconds, header ``X-Presence-Signature`` holds ``sha256=<hex>`` where ``<hex>`` is
HMAC-SHA256 with the shared secret over ``<timestamp>.<raw body>``. A timestamp more than
:data:`TOLERANCE_S` from the sink's clock is stale (a replay): the delivery is invalid. The sink
answers an invalid delivery 401, as a verifying receiver does, and records it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

TIMESTAMP_HEADER = "X-Presence-Timestamp"
SIGNATURE_HEADER = "X-Presence-Signature"
SECRET_HEADERS = ("authorization", SIGNATURE_HEADER.lower())
TOLERANCE_S = 300


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Presence-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    now: float | None = None,
) -> bool:
    """True when ``signature`` signs ``body`` at ``timestamp`` and the timestamp is at most
    :data:`TOLERANCE_S` seconds from ``now`` (default: this clock)."""
    if not timestamp or not signature:
        return False
    try:
        age_s = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    if age_s > TOLERANCE_S:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


@dataclass(slots=True)
class SinkFailure:
    status: int = 503
    remaining: int | None = None  # None: until cleared
    delay_s: float = 0.0  # answer this late (a client with a shorter timeout sees a timeout)


@dataclass(slots=True)
class Delivery:
    received_at: float
    status: int
    signature_valid: bool
    event_id: str | None
    headers: dict[str, str]
    body: Any

    def json(self) -> dict[str, Any]:
        return {
            "receivedAt": self.received_at,
            "status": self.status,
            "signatureValid": self.signature_valid,
            "eventId": self.event_id,
            "headers": self.headers,
            "body": self.body,
        }


@dataclass(slots=True)
class WfmSink:
    secret: str
    deliveries: list[Delivery] = field(default_factory=list)
    failure: SinkFailure | None = None

    def next_failure(self) -> SinkFailure | None:
        failure = self.failure
        if failure is None:
            return None
        if failure.remaining is not None:
            if failure.remaining <= 0:
                self.failure = None
                return None
            failure.remaining -= 1
        return failure

    def record(self, headers: dict[str, str], raw: bytes, status: int) -> Delivery:
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        event_id = body.get("event_id") if isinstance(body, dict) else None
        by_name = {k.lower(): v for k, v in headers.items()}  # header names are case-insensitive
        delivery = Delivery(
            received_at=time.time(),
            status=status,
            signature_valid=verify(
                self.secret,
                by_name.get(TIMESTAMP_HEADER.lower()),
                by_name.get(SIGNATURE_HEADER.lower()),
                raw,
            ),
            event_id=str(event_id) if event_id is not None else None,
            headers={k: v for k, v in headers.items() if k.lower() not in SECRET_HEADERS},
            body=body,
        )
        self.deliveries.append(delivery)
        return delivery

    def summary(self) -> dict[str, Any]:
        accepted = [d for d in self.deliveries if d.status < 300]
        ids = [d.event_id for d in accepted if d.event_id is not None]
        return {
            "received": len(self.deliveries),
            "accepted": len(accepted),
            "uniqueEvents": len(set(ids)),
            "duplicates": len(ids) - len(set(ids)),
            "badSignatures": sum(1 for d in self.deliveries if not d.signature_valid),
        }
