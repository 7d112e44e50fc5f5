"""Values every database accepts: no write may fail on content.

PostgreSQL refuses NUL characters in text, SQLite's driver refuses lone surrogates, and every
``String(n)`` column has a length. :func:`fit_row` makes a row's values storable — NUL and
lone surrogates become U+FFFD, text is cut to its column's length (``Text`` to
``TEXT_LIMIT``), JSON is cleaned the same way and bounded to ``JSON_LIMIT`` characters. It runs
on every ORM insert and update of every table (see :func:`install`); Core bulk inserts call
:func:`fit_values` themselves.

Identifiers that rows are looked up by (request ids) must be made storable *before* they are
used, consistently: :func:`storable_id`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from typing import Any

from sqlalchemy import JSON, FromClause, String, Text, event
from sqlalchemy.orm import Mapper

TEXT_LIMIT = 4000
JSON_LIMIT = 16_000
ELLIPSIS = "…"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def clean(value: str, limit: int | None = None) -> str:
    """``value`` without NUL or lone surrogates, at most ``limit`` characters (cut ones end
    with an ellipsis)."""
    value = _UNSTORABLE.sub("\ufffd", value)
    if limit is not None and len(value) > limit:
        value = value[: max(0, limit - 1)] + ELLIPSIS
    return value


def clean_json(value: Any) -> Any:
    """A JSON-able value with every string (keys included) cleaned; the whole bounded to
    ``JSON_LIMIT`` characters of JSON (a larger one becomes ``{"truncated": <its start>}``)."""
    cleaned = _clean_tree(value)
    dumped = json.dumps(cleaned, ensure_ascii=False, default=str)
    if len(dumped) <= JSON_LIMIT:
        return cleaned
    return {"truncated": dumped[: JSON_LIMIT - 100]}


def _clean_tree(value: Any) -> Any:
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(str(k)): _clean_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_tree(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return clean(str(value))


def storable_id(value: str, limit: int = 64) -> str:
    """A stable identifier of at most ``limit`` characters for ``value``: the value itself when
    it fits and is clean, else its cleaned start and a hash of the original (distinct values
    stay distinct, the same value always maps to the same id)."""
    if len(value) <= limit and not _UNSTORABLE.search(value):
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return f"{clean(value)[: limit - 25]}~{digest}"


def _limit(column_type: Any) -> int | None:
    if isinstance(column_type, String) and column_type.length:
        return int(column_type.length)
    if isinstance(column_type, Text):
        return TEXT_LIMIT
    return None


@functools.cache
def _plan(table: FromClause) -> dict[str, tuple[bool, int | None]]:
    """``table``'s columns that need fitting: name → (JSON?, a text column's limit)."""
    plan: dict[str, tuple[bool, int | None]] = {}
    for column in table.columns:
        if isinstance(column.type, JSON):
            plan[column.key] = (True, None)
        elif isinstance(column.type, String):
            plan[column.key] = (False, _limit(column.type))
    return plan


def fit_values(table: FromClause, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (column name → value) made storable in ``table``'s columns."""
    plan = _plan(table)
    out = dict(values)
    for name, value in values.items():
        fit = plan.get(name)
        if fit is None or value is None:
            continue
        is_json, limit = fit
        if is_json:
            out[name] = clean_json(value)
        elif isinstance(value, str):
            out[name] = clean(value, limit)
    return out


def fit_row(_mapper: Mapper[Any], _connection: Any, target: Any) -> None:
    """An ORM ``before_insert``/``before_update`` hook: the row's values made storable."""
    table = target.__table__
    current = {c.key: getattr(target, c.key, None) for c in table.columns}
    for name, value in fit_values(table, current).items():
        if value is not current[name]:
            setattr(target, name, value)


def install(base: type) -> None:
    """Fit every row of every table mapped on ``base`` before it is written."""
    event.listen(base, "before_insert", fit_row, propagate=True)
    event.listen(base, "before_update", fit_row, propagate=True)
