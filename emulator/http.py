"""Request parsing and response helpers shared by every route module."""

from __future__ import annotations

import json
from typing import Any, TypeVar
from urllib.parse import urlencode

from aiohttp import web
from pydantic import BaseModel, ValidationError

from emulator.errors import ApiError, bad_request, detail

M = TypeVar("M", bound=BaseModel)
JSON_TYPES = ("application/json",)


def respond(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data), status=status, content_type="application/json")


async def read_json(request: web.Request, max_bytes: int) -> Any:
    """The request body as JSON.

    Raises ApiError 415 for a non-JSON content type, 413 above ``max_bytes`` and 400 for
    malformed JSON.
    """
    if request.content_type not in JSON_TYPES:
        raise ApiError(
            415,
            f"Content type '{request.content_type or 'none'}' is not supported; "
            "send application/json.",
            code="unsupported.media.type",
        )
    too_large = ApiError(
        413,
        f"The request body exceeds the maximum size of {max_bytes} bytes.",
        code="request.entity.too.large",
    )
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    # One read() returns what has arrived so far, not the whole (e.g. chunked) body: loop.
    raw = bytearray()
    while len(raw) <= max_bytes:
        chunk = await request.content.read(max_bytes + 1 - len(raw))
        if not chunk:
            break
        raw += chunk
    if len(raw) > max_bytes:
        raise too_large
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}.") from None
    except RecursionError:
        raise bad_request("The request body is not valid JSON: nested too deeply.") from None


def parse(model: type[M], data: Any, *, prefix: str = "") -> M:
    """Validate ``data`` as ``model``; raises ApiError 400 naming every bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise bad_request(
            "The request body is invalid: "
            + "; ".join(f"{_loc(prefix, e['loc'])}: {e['msg']}" for e in exc.errors()),
            [detail(_loc(prefix, e["loc"])) for e in exc.errors()],
        ) from None


def parse_list(model: type[M], data: Any) -> list[M]:
    if not isinstance(data, list):
        raise bad_request("The request body must be a JSON array.", [detail("body")])
    return [parse(model, item, prefix=f"[{i}]") for i, item in enumerate(data)]


def _loc(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def int_query(
    request: web.Request, name: str, default: int, *, lo: int = 1, hi: int | None = None
) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"Query parameter '{name}' must be an integer.", [detail(name)]) from None
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise bad_request(f"Query parameter '{name}' must be {bound}.", [detail(name)])
    return value


def list_query(request: web.Request, name: str) -> list[str]:
    """A list parameter given repeated (``id=a&id=b``) or comma-separated (``id=a,b``)."""
    out: list[str] = []
    for raw in request.query.getall(name, []):
        out.extend(part for part in raw.split(",") if part)
    return out


def bool_query(request: web.Request, name: str, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise bad_request(f"Query parameter '{name}' must be true or false.", [detail(name)])


def page(
    request: web.Request,
    items: list[Any],
    *,
    default_size: int = 25,
    max_size: int = 500,
    with_total: bool = True,
) -> dict[str, Any]:
    """A paged entity listing with the platform's ``*Uri`` links."""
    size = int_query(request, "pageSize", default_size, hi=max_size)
    number = int_query(request, "pageNumber", 1)
    total = len(items)
    count = max(1, -(-total // size))
    start = (number - 1) * size
    path = request.path
    # Paging links keep the request's other parameters (filters, expand), as the platform's do.
    others = [(k, v) for k, v in request.query.items() if k not in ("pageSize", "pageNumber")]
    extra = "&" + urlencode(others, safe=",") if others else ""

    def uri(n: int) -> str:
        return f"{path}?pageSize={size}&pageNumber={n}{extra}"

    out: dict[str, Any] = {
        "entities": items[start : start + size],
        "pageSize": size,
        "pageNumber": number,
        "firstUri": uri(1),
        "selfUri": uri(number),
    }
    if number < count:
        out["nextUri"] = uri(number + 1)
    if number > 1:
        out["previousUri"] = uri(number - 1)
    if with_total:
        out["total"] = total
        out["pageCount"] = count
        out["lastUri"] = uri(count)
    return out
