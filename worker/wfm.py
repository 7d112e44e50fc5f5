"""WFM synchronisation through a durable outbox.

Every terminal outcome that changed an agent's state gets a :class:`WfmDelivery` row in the
same transaction as its audit row (:func:`outbox_values`); the ``wfm.sync`` task then delivers it
(:func:`deliver`), and a periodic sweep re-enqueues deliveries left pending (:func:`stale`).

Event (JSON, ``Content-Type: application/json``)::

    {"event_id": "…uuid…", "type": "presence.changed", "agent_id": "…", "request_id": "…",
     "from": {"state": "On Queue", "definition_id": "…"}, "to": {"state": "Coffee",
     "definition_id": "…"}, "reason": "Coffee", "source": "wfm-schedule",
     "requested_at": "…", "applied_at": "…", "outcome": "confirmed"}

Headers: ``X-Presence-Event-Id``, ``X-Presence-Timestamp`` (Unix seconds) and
``X-Presence-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<raw body>" with the secret>``.
Receivers de-duplicate by ``event_id``: a delivery can arrive more than once, never zero times.
The timestamp is signed too: receivers reject a delivery whose timestamp is more than
:data:`SIGNATURE_TOLERANCE_S` away from their clock (a replay); every attempt is signed afresh,
so a retried delivery is never stale.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from models import AuditRecord, DeliveryState, Outcome, WfmAttempt, WfmDelivery
from worker.addresses import is_loopback

STATE_CHANGING = {Outcome.CONFIRMED.value, Outcome.APPLIED_UNCONFIRMED.value, Outcome.DRIFTED.value}
RETRYABLE_STATUSES = {408, 429}
SIGNATURE_TOLERANCE_S = 300  # receivers refuse older (or later) timestamps


def config_warnings(url: str | None, secret: str) -> list[str]:
    """One line per unsafe WFM setting: an empty signing key, or plain HTTP beyond loopback."""
    if not url:
        return []
    warnings = []
    if not secret:
        warnings.append(
            "WFM_WEBHOOK_SECRET is empty: deliveries are signed with an empty key, which anyone "
            "can forge; set a long random secret and give it to the receiver"
        )
    parts = urlsplit(url)
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        warnings.append(
            f"WFM_WEBHOOK_URL is plain http:// to {parts.hostname}: events travel unencrypted "
            "and can be read or replayed on the way; use https://"
        )
    return warnings


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Presence-Signature`` value."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def event_for(row: Mapping[str, Any]) -> dict[str, Any]:
    """The webhook event of an audit row (column name → value)."""
    return {
        "event_id": str(uuid.uuid4()),
        "type": "presence.changed",
        "agent_id": row["user_id"],
        "request_id": row["request_id"],
        "from": {"state": row["from_state"], "definition_id": row["from_definition_id"]},
        "to": {"state": row["to_state"], "definition_id": row["to_definition_id"]},
        "reason": row["reason"],
        "source": row["source"],
        "requested_at": _iso(row["requested_at"]),
        "applied_at": _iso(row["finished_at"]),
        "outcome": row["outcome"],
    }


def outbox_values(row: Mapping[str, Any], audit_id: int) -> dict[str, Any] | None:
    """The outbox row (column name → value) for the audit row ``row`` stored as ``audit_id``,
    or None when it did not change the agent's state (nothing to tell WFM)."""
    if row["outcome"] not in STATE_CHANGING:
        return None
    event = event_for(row)
    return {
        "event_id": event["event_id"],
        "audit_id": audit_id,
        "payload": event,
        "state": DeliveryState.PENDING.value,
        "attempts": 0,
        "created_at": datetime.now(UTC),
    }


@dataclass(frozen=True, slots=True)
class Attempted:
    """What one delivery attempt decided: delivered, retry after ``retry_in_s``, or failed."""

    result: str
    retry_after_s: float | None = None


def deliver(
    session: Session,
    delivery: WfmDelivery,
    http: httpx.Client,
    *,
    url: str,
    secret: str,
    timeout_s: float,
    final: bool,
) -> Attempted:
    """POST the event once and record the attempt. ``final`` turns a retryable failure into
    ``failed``. Never raises for network or HTTP failures; they are recorded."""
    body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Presence-Event-Id": delivery.event_id,
        "X-Presence-Timestamp": timestamp,
        "X-Presence-Signature": sign(secret, timestamp, body),
    }
    started = time.perf_counter()
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    try:
        response = http.post(url, content=body, headers=headers, timeout=timeout_s)
        status = response.status_code
        if status >= 300:
            error = f"HTTP {status}: {response.text[:200]}"
            try:
                retry_after = float(response.headers.get("Retry-After", ""))
            except ValueError:
                retry_after = None
    except httpx.TimeoutException:
        error = f"timed out after {timeout_s:g} s"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: could not reach the WFM endpoint"
    if status is not None and status < 300:
        result = DeliveryState.DELIVERED.value
    elif status is None or status >= 500 or status in RETRYABLE_STATUSES:
        result = DeliveryState.FAILED.value if final else "retry"
    else:
        result = DeliveryState.FAILED.value  # other 4xx: the receiver rejects the event itself
    now = datetime.now(UTC)
    session.add(
        WfmAttempt(
            delivery_id=delivery.id,
            attempted_at=now,
            status_code=status,
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
            error=error,
            result=result,
        )
    )
    delivery.attempts += 1
    delivery.last_attempt_at = now
    delivery.last_status = status
    delivery.last_error = error
    if result == DeliveryState.DELIVERED.value:
        delivery.state = result
        delivery.delivered_at = now
    elif result == DeliveryState.FAILED.value:
        delivery.state = result
    return Attempted(result, retry_after)


def stale(session: Session, *, older_than_s: float, limit: int = 500) -> list[int]:
    """Pending deliveries nobody has touched (or was due to retry) for ``older_than_s``: their
    send was lost."""
    horizon = datetime.now(UTC) - timedelta(seconds=older_than_s)
    rows = session.scalars(
        select(WfmDelivery)
        .where(WfmDelivery.state == DeliveryState.PENDING.value)
        .order_by(WfmDelivery.id)
        .limit(limit * 4)
    ).all()
    out = []
    for row in rows:
        touched = row.next_attempt_at or row.last_attempt_at or row.created_at
        if (touched if touched.tzinfo else touched.replace(tzinfo=UTC)) <= horizon:
            out.append(row.id)
        if len(out) >= limit:
            break
    return out


def delivery_org(session: Session, delivery_id: int) -> str | None:
    """The org whose audit row a delivery reports (None: no such delivery)."""
    return session.scalar(
        select(AuditRecord.org)
        .join(WfmDelivery, WfmDelivery.audit_id == AuditRecord.id)
        .where(WfmDelivery.id == delivery_id)
    )


def failed(session: Session, *, limit: int) -> list[WfmDelivery]:
    """Deliveries that gave up, newest first."""
    return list(
        session.scalars(
            select(WfmDelivery)
            .where(WfmDelivery.state == DeliveryState.FAILED.value)
            .order_by(WfmDelivery.id.desc())
            .limit(limit)
        )
    )


def reset_failed(session: Session, *, delivery_id: int | None = None) -> list[int]:
    """Make failed deliveries pending again (all of them, or the one ``delivery_id`` in any
    state) with a fresh attempt count; returns their ids. Send them after the commit.

    Raises LookupError when ``delivery_id`` names no delivery.
    """
    query = select(WfmDelivery).where(WfmDelivery.state == DeliveryState.FAILED.value)
    if delivery_id is not None:
        query = select(WfmDelivery).where(WfmDelivery.id == delivery_id)
    rows = session.scalars(query).all()
    if delivery_id is not None and not rows:
        raise LookupError(f"no WFM delivery with id {delivery_id}")
    for row in rows:
        row.state = DeliveryState.PENDING.value
        row.attempts = 0
        row.next_attempt_at = None
    session.flush()
    return [row.id for row in rows]
