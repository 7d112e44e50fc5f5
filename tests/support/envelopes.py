"""Raw broker messages for the guard's tests: the documented envelope, and the matrix of broken
ones a hostile or careless producer can LPUSH (each with where the worker records it)."""

from __future__ import annotations

import base64
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

WORKFLOW = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def envelope(
    args: list[Any], request_id: str, *, task: str = "presence.update", queue: str = "presence"
) -> dict[str, Any]:
    """The envelope docs/producers.md documents, built field by field."""
    body = [args, {}, dict(WORKFLOW)]
    return {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {
            "lang": "py", "task": task, "id": request_id, "root_id": request_id,
            "parent_id": None, "group": None, "retries": 0, "eta": None, "expires": None,
            "timelimit": [None, None],
        },
        "properties": {
            "correlation_id": request_id, "reply_to": "", "delivery_mode": 2, "priority": 0,
            "delivery_tag": str(uuid.uuid4()), "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": queue},
        },
    }  # fmt: skip


def encoded(body: object) -> str:
    return base64.b64encode(json.dumps(body).encode()).decode()


Recorded = Literal["audit", "quarantine"]
Edit = Callable[[dict[str, Any]], dict[str, Any] | str]


@dataclass(frozen=True)
class Shape:
    """One broken envelope: ``edit`` turns a good ``presence.update`` envelope into it (or into
    raw text); ``reason`` is the refusal's label, ``recorded`` where the worker records it."""

    name: str
    edit: Edit
    reason: str
    recorded: Recorded

    def raw(self, good: dict[str, Any]) -> str:
        edited = self.edit(json.loads(json.dumps(good)))
        return edited if isinstance(edited, str) else json.dumps(edited)


def _set(path: str, value: object) -> Edit:
    """Set (or, with ``...``, delete) the field at a dotted path."""

    def edit(message: dict[str, Any]) -> dict[str, Any]:
        *parents, last = path.split(".")
        node = message
        for key in parents:
            node = node[key]
        if value is Ellipsis:
            node.pop(last, None)
        else:
            node[last] = value
        return message

    return edit


def _body(value: object) -> Edit:
    return _set("body", encoded(value))


def _text(text: str) -> Edit:
    return lambda _message: text


SHAPES: list[Shape] = [
    # -- measured to stop the worker (docs/producers.md promised they are refused) ------------
    Shape("not JSON", _text("not json at all"), "json", "quarantine"),
    Shape("body null", _body(None), "body", "audit"),
    Shape("body a number", _body(42), "body", "audit"),
    Shape("body an object", _body({"args": [1]}), "body", "audit"),
    Shape("body a string", _body("text"), "body", "audit"),
    Shape("body an empty list", _body([]), "body", "audit"),
    Shape("body a list of 1", _body([[{}]]), "body", "audit"),
    Shape("body a list of 4", _body([[{}], {}, dict(WORKFLOW), 1]), "body", "audit"),
    Shape("body not base64", _set("body", "%%% not base64 %%%"), "body_encoding", "audit"),
    Shape(
        "unknown body_encoding", _set("properties.body_encoding", "rot13"), "body_encoding", "audit"
    ),
    Shape("empty content type", _set("content-type", ""), "content_type", "audit"),
    Shape(
        "unknown content type", _set("content-type", "application/x-yaml"), "content_type", "audit"
    ),
    Shape(
        "delivery_info a string",
        _set("properties.delivery_info", "presence"),
        "delivery_info",
        "audit",
    ),
    Shape("no headers.id", _set("headers.id", ...), "id", "quarantine"),
    # -- found reading Kombu and Celery, and by fuzzing ---------------------------------------
    Shape("empty item", _text(""), "json", "quarantine"),
    Shape("JSON array item", _text("[1, 2, 3]"), "envelope", "quarantine"),
    Shape("JSON number item", _text("7"), "envelope", "quarantine"),
    Shape("no properties", _set("properties", ...), "properties", "audit"),
    Shape("properties a list", _set("properties", []), "properties", "audit"),
    Shape("no delivery_tag", _set("properties.delivery_tag", ...), "delivery_tag", "audit"),
    Shape(
        "delivery_tag an object", _set("properties.delivery_tag", {"a": 1}), "delivery_tag", "audit"
    ),
    Shape("no delivery_info", _set("properties.delivery_info", ...), "delivery_info", "audit"),
    Shape(
        "no routing_key",
        _set("properties.delivery_info.routing_key", ...),
        "delivery_info",
        "audit",
    ),
    Shape("headers a string", _set("headers", "presence.update"), "headers", "quarantine"),
    Shape("no task header", _set("headers.task", ...), "task", "quarantine"),
    Shape("unknown task", _set("headers.task", "presence.nonexistent"), "task", "quarantine"),
    Shape("id a number", _set("headers.id", 12345), "id", "quarantine"),
    Shape("id of 300 characters", _set("headers.id", "x" * 300), "id", "quarantine"),
    Shape("body a JSON number field", _set("body", 17), "body", "audit"),
    Shape("body not JSON", _set("body", base64.b64encode(b"[[{").decode()), "body", "audit"),
    Shape("body not UTF-8", _set("body", base64.b64encode(b"\xff\xfe[").decode()), "body", "audit"),
    Shape(
        "body a bad Kombu object",
        _body([[{"__type__": "uuid", "__value__": "nope"}], {}, {}]),
        "body",
        "audit",
    ),
    Shape("args an object", _body([{"a": 1}, {}, dict(WORKFLOW)]), "body", "audit"),
    Shape("kwargs a list", _body([[{}], [], dict(WORKFLOW)]), "body", "audit"),
    Shape("embed null", _body([[{}], {}, None]), "body", "audit"),
    Shape("embed overrides the request", _body([[{}], {}, {"id": "other"}]), "body", "audit"),
    Shape(
        "a callback",
        _body([[{}], {}, {**WORKFLOW, "callbacks": [{"task": "x"}]}]),
        "workflow",
        "audit",
    ),
    Shape("content-encoding rot13", _set("content-encoding", "rot13"), "content_encoding", "audit"),
    Shape("no content-encoding", _set("content-encoding", ...), "content_encoding", "audit"),
    Shape("eta not a date", _set("headers.eta", "tomorrow"), "eta", "audit"),
    Shape("eta an empty string", _set("headers.eta", ""), "eta", "audit"),
    Shape("expires an empty string", _set("headers.expires", ""), "expires", "audit"),
    Shape("eta a number", _set("headers.eta", 5), "eta", "audit"),
    Shape("eta out of range", _set("headers.eta", "9999-12-31T23:59:59-23:59"), "eta", "audit"),
    Shape("expires a list", _set("headers.expires", [1]), "expires", "audit"),
    Shape("retries a string", _set("headers.retries", "0"), "retries", "audit"),
    Shape("retries negative", _set("headers.retries", -1), "retries", "audit"),
    Shape("timelimit a string", _set("headers.timelimit", "60"), "timelimit", "audit"),
    Shape("timelimit negative", _set("headers.timelimit", [-1, None]), "timelimit", "audit"),
    Shape("compressed", _set("headers.compression", "application/x-gzip"), "compression", "audit"),
    Shape(
        "a broken wave",
        lambda m: _body(None)(_set("headers.task", "presence.wave")(m)),
        "body",
        "quarantine",
    ),
    Shape("root_id an object", _set("headers.root_id", {"a": 1}), "headers", "audit"),
]


def mutations(good: dict[str, Any], count: int, seed: int) -> list[str]:
    """``count`` random edits of ``good`` (a field replaced by a random JSON value, or removed),
    reproducible from ``seed``: the fuzzing that found several of :data:`SHAPES`."""
    rng = random.Random(seed)
    values: list[object] = [None, 0, -1, 1.5, True, "", "x", [], {}, [None], {"a": None}]
    out: list[str] = []
    while len(out) < count:
        message = json.loads(json.dumps(good))
        paths = list(_paths(message))
        path = rng.choice(paths)
        _set(".".join(path), rng.choice([*values, ...]))(message)
        out.append(json.dumps(message))
    return out


def _paths(node: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for key, value in node.items():
        found.append((*prefix, key))
        if isinstance(value, dict):
            found.extend(_paths(value, (*prefix, key)))
    return found
