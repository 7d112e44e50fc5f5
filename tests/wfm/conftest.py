"""The WFM tests use the capacity suite's end-to-end harness (emulator, private Redis, workers)."""

from __future__ import annotations

from tests.capacity.conftest import e2e_emulator, emulator_args, harness, module_redis

__all__ = ["e2e_emulator", "emulator_args", "harness", "module_redis"]
