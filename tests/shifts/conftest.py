"""The shift-wave tests use the capacity suite's end-to-end harness (with ``celery beat``) and its
400-agent emulator."""

from __future__ import annotations

from tests.capacity.conftest import emulator_args, harness

__all__ = ["emulator_args", "harness"]
