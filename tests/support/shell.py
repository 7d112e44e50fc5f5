"""The ``presence`` command as an operator runs it: a fresh process with only the given
environment (nothing inherited from the test run but PATH and HOME) in a directory of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def presence(
    *args: str, env: dict[str, str], cwd: Path, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``presence ARGS`` (``python -m cli.main``); a wide terminal keeps table rows whole."""
    clean = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "COLUMNS": "250",
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=clean,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single non-empty line a failing command printed (asserting there is just one, on
    stderr, and no traceback)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]
