"""The README's "Try it against the sandbox" block, run line by line as a reader would: a real
``presence-emulator`` and ``celery`` worker in the background, every ``presence`` command in a
shell, from a scratch directory.

Only what a test must change is changed: the emulator's port (a free one instead of 8080), the
Redis database (the tests' own), and the ``sleep`` (waiting for the audit rows instead).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool

from models import AuditRecord
from worker.embedded_redis import _free_port

pytestmark = pytest.mark.timeout(300)
README = Path(__file__).resolve().parent.parent / "README.md"
BIN = str(Path(sys.executable).parent)


def sandbox_lines() -> list[str]:
    """The commands of the README's sandbox block, comments stripped."""
    text = README.read_text()
    block = text[text.index("<!-- sandbox:start -->") : text.index("<!-- sandbox:end -->")]
    code = block.split("```bash\n", 1)[1].split("```", 1)[0]
    lines = []
    for line in code.splitlines():
        command = re.sub(r"\s+#\s.*$", "", line).strip()  # a comment after two spaces or more
        if command and not command.startswith("#"):
            lines.append(command)
    return lines


class Reader:
    """Runs the lines in one directory with one environment, like one terminal."""

    def __init__(self, workdir: Path, redis_url: str) -> None:
        self.workdir = workdir
        self.redis_url = redis_url
        path = f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        self.env = {**os.environ, "PATH": path, "COLUMNS": "200"}  # a wide terminal
        for name in ("GENESYS_REGION", "DATABASE_URL", "REDIS_URL", "WFM_WEBHOOK_URL"):
            self.env.pop(name, None)
        self.background: list[subprocess.Popen[bytes]] = []
        self.outputs: dict[str, subprocess.CompletedProcess[str]] = {}
        self.queued = 0

    def run(self, line: str, *, wait_for_rows: bool = False) -> None:
        if line.startswith((". ", "source ")):
            return  # activating the virtualenv: PATH already starts with it
        if line.startswith("export "):
            for assignment in shlex.split(line.removeprefix("export ")):
                name, _, value = assignment.partition("=")
                self.env[name] = value
            if "REDIS_URL" in self.env:
                self.env["REDIS_URL"] = self.redis_url  # the tests' own database
            return
        if line.endswith("&"):
            self.background.append(
                subprocess.Popen(
                    ["bash", "-c", f"exec {line.removesuffix('&').strip()}"],
                    cwd=self.workdir,
                    env=self.env,
                    start_new_session=True,
                )
            )
            return
        assigned = re.fullmatch(r"([A-Z_]+)=\$\((.*)\)", line)
        if wait_for_rows:
            self.wait_for_audit_rows(self.queued)
        result = subprocess.run(
            ["bash", "-c", assigned.group(2) if assigned else line],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, (line, result.stdout[-2000:], result.stderr[-2000:])
        assert "Traceback" not in result.stderr, (line, result.stderr[-2000:])
        if assigned:
            self.env[assigned.group(1)] = result.stdout.strip()
        self.outputs[line] = result
        self.queued += len(re.findall(r"^queued \S+$", result.stdout, re.MULTILINE))
        found = re.search(r"^queued (\d+), invalid 0", result.stdout, re.MULTILINE)
        self.queued += int(found.group(1)) if found else 0

    def wait_for_audit_rows(self, count: int, timeout_s: float = 120) -> None:
        url = self.env["DATABASE_URL"]
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            url = f"sqlite:///{self.workdir / url.removeprefix('sqlite:///')}"  # relative to cwd
        engine = create_engine(url, poolclass=NullPool)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                with engine.connect() as conn:
                    rows = conn.scalar(select(func.count()).select_from(AuditRecord))
                if rows is not None and rows >= count:
                    return
                assert time.monotonic() < deadline, (rows, count, self.log("worker.log"))
                time.sleep(0.5)
        finally:
            engine.dispose()

    def log(self, name: str) -> str:
        path = self.workdir / name
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"

    def stop(self) -> None:
        for process in reversed(self.background):  # worker, then emulator
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def reader(tmp_path: Path, redis_url: str) -> Iterator[Reader]:
    one = Reader(tmp_path, redis_url)
    yield one
    one.stop()


def test_the_readme_sandbox_path_works_as_written(reader: Reader) -> None:
    port = str(_free_port())
    lines = [line.replace("8080", port) for line in sandbox_lines()]
    assert any(line.startswith("presence-emulator ") for line in lines)
    assert any(line.startswith("celery -A worker.app worker") for line in lines)

    wait = False
    for line in lines:
        if line.startswith("sleep "):
            wait = True  # instead of sleeping: until every queued change has its audit row
            continue
        reader.run(line, wait_for_rows=wait)
        wait = False

    out = {line.split(" > ")[0]: result.stdout for line, result in reader.outputs.items()}
    agent = reader.env["AGENT"]
    assert re.fullmatch(r"[0-9a-f-]{36}", agent)
    assert out['presence set "$AGENT" Break --reason Coffee'].startswith("queued ")
    dry_run = out["presence import lunch.csv --dry-run"].splitlines()
    assert dry_run[0].startswith("states and reasons checked against ")
    assert [line.split(" → ")[1].split(" (")[0] for line in dry_run[1:4]] == ["Lunch"] * 3
    assert dry_run[-1] == "dry run, nothing queued: would queue 3, invalid 0 of 3 rows"
    assert out["presence import lunch.csv"].splitlines()[-1] == "queued 3, invalid 0 of 3 rows"
    audit = out["presence audit --limit 4"]
    assert len(re.findall(r"\b(confirmed|applied_unconfirmed)\b", audit)) == 4, audit
    assert "→ Coffee" in audit, audit
    assert audit.count("→ Lunch") == 3, audit
    assert "4 requests · success 100.0%" in out["presence stats"]
    assert reader.queued == 4
