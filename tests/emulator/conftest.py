"""Fixtures shared by the emulator's socket suites."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.conftest import Api
from tests.emulator.streaming import Stream, definition_ids


@pytest.fixture
def definitions(api: Api) -> dict[str, str]:
    """Presence definition ids by label."""
    return definition_ids(api.http)


@pytest.fixture
def streams() -> Iterator[list[Stream]]:
    """Sockets opened by a test, closed at its end whatever happened."""
    opened: list[Stream] = []
    yield opened
    for stream in opened:
        with contextlib.suppress(Exception):  # the socket may already be gone
            stream.close()
