"""Start ``presence-emulator`` as a child process and wait until it serves.

Used by the tests, the benchmarks and the demo, so that all of them talk to the emulator over
real sockets exactly as the worker would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from emulator.cli import READY_PREFIX
from emulator.config import org_client_id, org_client_secret


def stop_processes(processes: list[subprocess.Popen[Any]], *, timeout_s: float) -> None:
    """SIGTERM every running process, then SIGKILL whichever is still there after
    ``timeout_s``. Returns when all have exited."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class EmulatorStartError(RuntimeError):
    """The emulator exited or stayed silent before printing its ready line."""


@dataclass
class EmulatorProcess:
    """A running emulator; use as a context manager or call :meth:`stop`."""

    args: list[str] = field(default_factory=list)
    # Extra orgs, each as ``--org`` takes it (``NAME[,users=N,...]``).
    orgs: list[str] = field(default_factory=list)
    shared_user_ids: bool = False
    client_id: str = "presence-worker"
    client_secret: str = "emulator-secret"  # noqa: S105 - sandbox credential
    base_url: str = ""
    startup_s: float = 0.0
    _proc: subprocess.Popen[str] | None = None
    _output: list[str] = field(default_factory=list)

    def start(self, timeout_s: float = 20.0) -> EmulatorProcess:
        """Spawn on a free loopback port; raises EmulatorStartError if not ready in time."""
        cmd = [
            sys.executable, "-m", "emulator", "--port", "0",
            "--client-id", self.client_id, "--client-secret", self.client_secret, *self.args,
        ]  # fmt: skip
        for spec in self.orgs:
            cmd += ["--org", spec]
        if self.shared_user_ids:
            cmd.append("--shared-user-ids")
        began = time.perf_counter()
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        ready = threading.Event()
        threading.Thread(target=self._pump, args=(ready,), daemon=True).start()
        if not ready.wait(timeout_s) or not self.base_url:
            self.stop()
            raise EmulatorStartError("emulator did not start:\n" + "".join(self._output[-40:]))
        self.startup_s = time.perf_counter() - began
        return self

    def _pump(self, ready: threading.Event) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._output.append(line)
            if line.startswith(READY_PREFIX):
                self.base_url = line[len(READY_PREFIX) :].strip()
                ready.set()
        ready.set()  # exited: wake the waiter, which sees no base_url

    @property
    def org_names(self) -> list[str]:
        """``default`` and every extra org, in the order given."""
        return ["default", *(spec.split(",", 1)[0].strip() for spec in self.orgs)]

    def credentials(self, org: str = "default") -> tuple[str, str]:
        """(client id, client secret) of an org's OAuth client; KeyError for an unknown org."""
        if org not in self.org_names:
            raise KeyError(org)
        if org == "default":
            return self.client_id, self.client_secret
        return org_client_id(org), org_client_secret(org)

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1)

    @property
    def output(self) -> str:
        return "".join(self._output)

    def stop(self) -> None:
        if self._proc is not None:
            stop_processes([self._proc], timeout_s=5)

    def __enter__(self) -> EmulatorProcess:
        return self.start() if self._proc is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
