"""``presence demo`` (the README's first command) end to end, in a scratch directory: emulator,
a worker, celery beat, SQLite — both acts finish, every request audited, no 429."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.support.processes import private_redis
from tests.support.redis_db import split_database

pytestmark = pytest.mark.timeout(400)


def test_the_demo_applies_its_batch_and_a_shift_wave(tmp_path: Path) -> None:
    with private_redis() as url:  # the demo's database 15 on a server of the test's own
        run_and_check(url, tmp_path)
        leftovers = redis.Redis.from_url(f"{split_database(url)[0]}/15").keys("*")
    assert leftovers == [], "the demo removes its keys when it ends"


def run_and_check(redis_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "COLUMNS": "120"}
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
    enqueued, finished = re.search(r"(\d+) enqueued, (\d+) to finish: (\d+) repeat", out).groups()[
        :2
    ]
    assert re.search(rf"requests finished.*{finished}/{finished}", out), out[-4000:]
    hints = [line.strip() for line in out.splitlines() if line.startswith("  DATABASE_URL=")]
    assert [hint.split()[-1] for hint in hints] == ["superseded", "stats", "list"], out[-2000:]
    for hint in hints:  # they work as printed, from where the demo ran, PATH or not
        done = subprocess.run(  # noqa: S602 - the hint is a shell command line
            hint, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60,
            env={k: v for k, v in env.items() if k != "PATH"} | {"PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert done.returncode == 0, (hint, done.stderr[-2000:])
    assert int(enqueued) > int(finished)
