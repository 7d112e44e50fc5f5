"""The scripted emulator tour runs from start to end against a real emulator."""

from __future__ import annotations

import subprocess
import sys


def test_the_walkthrough_completes():
    result = subprocess.run(
        [sys.executable, "-m", "emulator.walkthrough"],
        capture_output=True,
        text=True,
        timeout=90,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "correlation matches=True" in result.stdout
    assert "HTTP 429" in result.stdout
    assert "Walkthrough complete." in result.stdout
