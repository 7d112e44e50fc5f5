"""What every fuzz test asserts of a refusal: it is a ValueError of one line."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def result_or_one_line(call: Callable[[], T]) -> T | None:
    """``call()``'s result, or None when it refused with a one-line ValueError (any other
    exception propagates: the fuzz test fails)."""
    try:
        return call()
    except ValueError as exc:
        complaint = str(exc)
    assert "\n" not in complaint, complaint
    assert complaint, "a refusal says why"
    return None
