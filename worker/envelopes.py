"""What a raw broker message must be before Celery or Kombu touch it: one pure check.

A message on the worker's queues is Kombu's Redis envelope around a Celery protocol-2 task
(docs/producers.md). :func:`inspect_envelope` decides, from the decoded JSON alone, whether the
message can be handed to Kombu and Celery safely and is a well-formed task of ours; it returns the
first :class:`Refusal` found, or None. It never raises, whatever it is given.

The checks follow what Kombu's virtual transport and Celery's consumer read on the consumer's
own thread, where any exception stops the worker ("Unrecoverable error") or, for a missing id,
loops the consumer through reconnects: the envelope's ``properties``, ``delivery_tag``,
``delivery_info``, body encoding, content type and encoding, the task headers Celery parses
(``task``, ``id``, ``eta``, ``expires``, ``retries``, ``timelimit``), and the body Celery
unpacks into ``(args, kwargs, embed)``.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from celery.utils.time import maybe_iso8601
from kombu.utils.json import loads

CONTENT_TYPE: Final = "application/json"
MAX_ID_CHARS: Final = 255
MAX_TAG_CHARS: Final = 255
AUDITABLE_ID_CHARS: Final = 64  # presence_audit.request_id
TEXT_HEADERS: Final = ("root_id", "parent_id", "group", "shadow", "lang", "origin")
WORKFLOW_FIELDS: Final = frozenset({"callbacks", "errbacks", "chain", "chord"})


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a message is not processed: ``reason`` is a short fixed label (metrics, error codes),
    ``detail`` one line for people; ``request_id`` the message's ``headers.id`` when it is a
    string that can key an audit row, and ``task`` its ``headers.task`` when it is a string."""

    reason: str
    detail: str
    request_id: str | None = None
    task: str | None = None


class _Refused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def inspect_envelope(raw: object, tasks: Mapping[str, inspect.Signature | None]) -> Refusal | None:
    """None when ``raw`` (a decoded Redis list item) is a protocol-2 message for one of
    ``tasks`` (name → the task's call signature, or None to skip the argument check) that Kombu
    and Celery can take; else the first problem found."""
    request_id, task = identity(raw)
    try:
        _check(raw, tasks)
    except _Refused as refused:
        return Refusal(refused.reason, _one_line(refused.detail), request_id, task)
    except Exception as exc:  # a check must never be the thing that fails
        return Refusal("envelope", _one_line(f"{type(exc).__name__}: {exc}"), request_id, task)
    return None


def auditable_id(value: object) -> str | None:
    """``value`` when it can be the ``request_id`` of an audit row: a non-empty string of at
    most 64 characters without control characters or lone surrogates."""
    if not isinstance(value, str) or not 0 < len(value) <= AUDITABLE_ID_CHARS:
        return None
    if not value.isprintable():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def identity(raw: object) -> tuple[str | None, str | None]:
    """(``headers.id`` when :func:`auditable_id` accepts it, ``headers.task`` when a string)."""
    headers = raw.get("headers") if isinstance(raw, dict) else None
    if not isinstance(headers, dict):
        return None, None
    task = headers.get("task")
    return auditable_id(headers.get("id")), task if isinstance(task, str) else None


def _check(raw: object, tasks: Mapping[str, inspect.Signature | None]) -> None:
    if not isinstance(raw, dict):
        raise _Refused("envelope", f"the message is a JSON {_kind(raw)}, not an object")
    properties = _field(raw, "properties", dict, "properties")
    tag = properties.get("delivery_tag")
    if not isinstance(tag, str) or not 0 < len(tag) <= MAX_TAG_CHARS:
        raise _Refused("delivery_tag", "properties.delivery_tag is not a string of 1-255 chars")
    info = _field(properties, "delivery_info", dict, "delivery_info")
    for key in ("exchange", "routing_key"):
        if not isinstance(info.get(key), str):
            raise _Refused("delivery_info", f"properties.delivery_info.{key} is not a string")
    headers = _field(raw, "headers", dict, "headers")
    _check_headers(headers, tasks)
    if raw.get("content-type") != CONTENT_TYPE:
        raise _Refused(
            "content_type", f"content-type {_short(raw.get('content-type'))} is not {CONTENT_TYPE}"
        )
    encoding = raw.get("content-encoding")
    if not isinstance(encoding, str) or encoding.lower() != "utf-8":
        raise _Refused("content_encoding", f"content-encoding {_short(encoding)} is not utf-8")
    text = _body_text(raw.get("body"), properties.get("body_encoding"))
    try:
        body = loads(text)  # Kombu's JSON, as Celery will decode it (``__type__`` objects too)
    except Exception as exc:
        raise _Refused("body", f"the body is not JSON: {exc}") from None
    _check_body(body, tasks.get(headers["task"]))


def _check_headers(headers: dict[str, Any], tasks: Mapping[str, inspect.Signature | None]) -> None:
    task = headers.get("task")
    if not isinstance(task, str):
        raise _Refused("task", "headers.task is missing or not a string")
    if task not in tasks:
        raise _Refused("task", f"unknown task {_short(task)}")
    request_id = headers.get("id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_ID_CHARS:
        raise _Refused("id", "headers.id is missing or not a string of 1-255 characters")
    for name in ("eta", "expires"):
        value = headers.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise _Refused(name, f"headers.{name} is not an ISO-8601 string or null")
        try:
            parsed = maybe_iso8601(value)
            if parsed is None:  # "": Celery parses it to None, then fails making it aware
                raise ValueError("empty")
            parsed.astimezone(UTC)  # Celery converts it; out of range would fail there
        except (ValueError, OverflowError, TypeError, AttributeError) as exc:
            raise _Refused(name, f"headers.{name} {_short(value)}: {exc}") from None
    retries = headers.get("retries", 0)
    if retries is not None and (not _is_int(retries) or retries < 0):
        raise _Refused("retries", "headers.retries is not a non-negative integer")
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, list)
        and len(limits) == 2
        and all(v is None or (_is_number(v) and 0 < v < math.inf) for v in limits)
    ):
        raise _Refused("timelimit", "headers.timelimit is not [soft or null, hard or null]")
    for name in TEXT_HEADERS:
        if headers.get(name) is not None and not isinstance(headers[name], str):
            raise _Refused("headers", f"headers.{name} is not a string or null")
    if headers.get("compression") is not None:
        raise _Refused("compression", "compressed bodies are not accepted")
    if headers.get("ignore_result") is not None and not isinstance(headers["ignore_result"], bool):
        raise _Refused("headers", "headers.ignore_result is not a boolean")


def _body_text(body: object, body_encoding: object) -> str:
    """The body as Kombu will hand it to Celery, as text (UTF-8 checked)."""
    if not isinstance(body, str):
        raise _Refused("body", f"the body is a JSON {_kind(body)}, not a string")
    if body_encoding is None or (
        isinstance(body_encoding, str) and body_encoding.lower() == "utf-8"
    ):
        return body
    if body_encoding != "base64":
        raise _Refused("body_encoding", f"body_encoding {_short(body_encoding)} is not base64")
    try:
        data = base64.b64decode(body.encode("utf-8"))
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise _Refused("body_encoding", f"the body is not base64: {exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Refused("body", f"the body is not UTF-8: {exc}") from None


def _check_body(body: object, signature: inspect.Signature | None) -> None:
    if not isinstance(body, list) or len(body) != 3:
        shape = f"a list of {len(body)}" if isinstance(body, list) else f"a JSON {_kind(body)}"
        raise _Refused("body", f"the body is {shape}, not [args, kwargs, embed]")
    args, kwargs, embed = body
    if not isinstance(args, list):
        raise _Refused("body", "the body's args are not a list")
    if not isinstance(kwargs, dict):
        raise _Refused("body", "the body's kwargs are not an object")
    if not isinstance(embed, dict) or not embed.keys() <= WORKFLOW_FIELDS:
        raise _Refused(
            "body", "the body's third element is not {callbacks, errbacks, chain, chord}"
        )
    if any(value is not None for value in embed.values()):
        raise _Refused("workflow", "callbacks, errbacks, chains and chords are not accepted")
    if signature is not None:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise _Refused("arguments", f"the arguments do not fit the task: {exc}") from None


def _field(parent: dict[str, Any], key: str, kind: type, reason: str) -> Any:
    value = parent.get(key)
    if not isinstance(value, kind):
        raise _Refused(reason, f"{key} is {_kind(value)}, not an object")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(value: object) -> str:
    kinds: dict[type, str] = {
        dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
        float: "number", type(None): "null",
    }  # fmt: skip
    if isinstance(value, datetime):
        return "datetime"
    return kinds.get(type(value), type(value).__name__)


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


def _one_line(text: str, limit: int = 300) -> str:
    """One storable line: whitespace runs become one space; control characters and lone
    surrogates (a database may refuse them) become ``?``."""
    flat = "".join(c if c.isprintable() else "?" for c in " ".join(text.split()))
    return flat if len(flat) <= limit else f"{flat[:limit]}…"
