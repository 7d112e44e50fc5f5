"""Real Celery worker processes (``celery -A worker.app worker``) for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import redis

from emulator.launcher import stop_processes
from sandbox.stack import workers_answer


@dataclass
class WorkerFleet:
    """Starts worker processes sharing one environment and consuming ``queues`` (``-Q``, e.g.
    ``presence`` alone to leave WFM deliveries unconsumed); stops (or kills) them."""

    env: dict[str, str]
    logdir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    queues: str = "presence,wfm,shifts"

    def start(
        self,
        count: int = 1,
        *,
        pool: str = "threads",
        concurrency: int = 4,
        timeout_s: float = 30,
    ) -> None:
        """Start ``count`` more workers; wait until all of them answer a ping (``timeout_s``)."""
        for _ in range(count):
            name = f"test-{uuid.uuid4().hex[:6]}@%h"
            log = (self.logdir / f"worker-{len(self.processes)}.log").open("wb")
            cmd = [
                sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", pool,
                "--concurrency", str(concurrency), "-Q", self.queues, "-n", name,
                "--loglevel", "INFO", "--without-gossip", "--without-mingle",
            ]  # fmt: skip
            self.processes.append(
                subprocess.Popen(
                    cmd, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT
                )
            )
        self.wait_ready(len(self.processes), timeout_s=timeout_s)

    def wait_ready(self, count: int, timeout_s: float = 30) -> None:
        """Wait until ``count`` workers answer a ping; raises TimeoutError with their logs."""
        if not workers_answer(self.env["REDIS_URL"], count, timeout_s):
            raise TimeoutError("workers did not start:\n" + self.logs())

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self.logdir.glob("worker-*.log"))
        )

    def kill(self, index: int) -> None:
        """SIGKILL one worker process (its main process only, as an OOM kill would)."""
        self.processes[index].send_signal(signal.SIGKILL)
        self.processes[index].wait()

    def stop(self) -> None:
        stop_processes(self.processes, timeout_s=20)

    def __enter__(self) -> WorkerFleet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def queue_length(redis_url: str, queue: str = "presence") -> int:
    return int(redis.Redis.from_url(redis_url).llen(queue))
