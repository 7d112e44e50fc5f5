"""``presence demo`` (the README's first command) end to end, in a scratch directory: emulator,
a worker, celery beat, SQLite — both acts finish, every request audited, no 429."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(400)


def test_the_demo_applies_its_batch_and_a_shift_wave(redis_server: str, tmp_path: Path) -> None:
    env = {**os.environ, "REDIS_URL": f"{redis_server}/0", "COLUMNS": "120"}
    env.pop("DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "demo", "--agents", "60"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=360,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "the top of the hour: a shift-change wave" in out
    assert re.search(r"60 changes stored, 2 rows refused", out), out[-4000:]
    assert "line 63: user_id: 'agent-7' is not a Genesys user id" in out
    assert re.search(r"bulk PUT calls\s*│\s*[12]\s*│", out), out[-3000:]  # batches of 50
    assert len(re.findall(r"HTTP 429 responses\s*│\s*0\s*│", out)) == 2, out[-3000:]
    assert (tmp_path / ".presence" / "demo.sqlite3").exists()
