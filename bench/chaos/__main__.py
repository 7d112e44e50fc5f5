"""``python -m bench.chaos [--short] [--scenario NAME]…``: see :mod:`bench.chaos`."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from bench.chaos import accounting
from bench.chaos.accounting import Sent, Tally
from bench.chaos.faults import SCENARIOS, SHORT, Context, EmulatorFaults, run_faults
from bench.chaos.load import plan, send
from bench.chaos.stack import ChaosStack
from bench.chaos.table import markdown, rich_table
from bench.report import RESULTS
from sandbox.servers import PrivatePostgres

console = Console(width=max(Console().width, 160))


@dataclass(frozen=True)
class Size:
    """How big a run is: agents with conflicting updates, the wave, the phases' lengths."""

    updates: int
    per_agent: int
    wave_agents: int
    send_s: float
    quiesce_s: float
    rate_limit: int = 3000  # the org's budget per minute, the emulator's and the workers'

    @property
    def users(self) -> int:  # a few percent of the seeded users are inactive or deleted
        return int((self.updates // self.per_agent + self.wave_agents) * 1.1) + 20


# The wait for quiescence must outlast the slowest recovery at production settings: a message
# popped by a consumer that never held it (its worker, or Redis, killed in between) is pushed
# again once its ledger entry is LEDGER_CHECK_AFTER_S (120 s) old, plus a mover pass.
FULL = Size(updates=2000, per_agent=5, wave_agents=250, send_s=45, quiesce_s=240)
QUICK = Size(updates=300, per_agent=5, wave_agents=50, send_s=20, quiesce_s=150)


def say(line: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {escape(line)}", highlight=False)


def wait_quiet(stack: ChaosStack, sent: list[Sent], timeout_s: float, scenario: str) -> bool:
    """Until every sent request has its terminal row, the broker holds nothing and WFM heard of
    every applied change — or ``timeout_s``; a progress line every 10 s."""
    started = time.monotonic()
    last_line = 0.0
    while True:
        try:
            rows = stack.rows()
            terminal, lost, _ = accounting.lost_and_duplicated(sent, rows)
            expected, delivered, _, _ = accounting.wfm_counts(
                [r for r in rows if r.request_id in {s.request_id for s in sent}],
                stack.wfm_events(),
            )
            leftovers = stack.leftovers()
        except Exception as exc:  # a server the scenario stopped is still coming back
            say(f"[{scenario}] waiting: {type(exc).__name__}")
            time.sleep(2)
            continue
        waited = time.monotonic() - started
        if lost == 0 and leftovers.total == 0 and delivered == expected:
            return True
        if waited >= timeout_s:
            return False
        if waited - last_line >= 10:
            last_line = waited
            say(
                f"[{scenario}] {waited:.0f} s: {terminal:,}/{len(sent):,} terminal, "
                f"{leftovers.unacked} unacked, {leftovers.queued} queued, "
                f"{leftovers.delayed} delayed, WFM {delivered:,}/{expected:,}"
            )
        time.sleep(3)


def run_scenario(
    name: str, schedule: list[tuple[str, float]], size: Size, pg: PrivatePostgres, workdir: Path
) -> Tally:
    say(f"[{name}] starting the stack")
    stack = ChaosStack(name, workdir / name, pg, size.users, size.rate_limit).start()
    try:
        agents = [u["id"] for u in stack.admin("GET", "/users") if u["state"] == "active"]
        load = plan(
            agents, updates=size.updates, per_agent=size.per_agent,
            wave_agents=size.wave_agents, batches=15, seed=len(name),
        )  # fmt: skip
        ctx = Context(
            stack, EmulatorFaults(stack), random.Random(7), log=lambda s: say(f"[{name}] {s}")
        )
        fault_errors: list[str] = []
        faults = threading.Thread(
            target=lambda: fault_errors.extend(run_faults(ctx, schedule, size.send_s)), daemon=True
        )
        started = time.monotonic()
        faults.start()
        sent = send(stack.broker_url, load, size.send_s)
        say(f"[{name}] sent {len(sent):,} requests in {time.monotonic() - started:.0f} s")
        faults.join()
        sending_done = time.monotonic()
        quiet = wait_quiet(stack, sent, size.quiesce_s, name)
        seconds = time.monotonic() - sending_done
        writes, finals = stack.writes_and_finals()
        tally = accounting.tally(
            name,
            sent=sent,
            rows=stack.rows(),
            writes=writes,
            finals=finals,
            events=stack.wfm_events(),
            leftovers=stack.leftovers(),
            too_many_outside_storms=stack.too_many_requests() - ctx.storm_429s,
            died=len(stack.died),
            held=stack.held(),
        )
        tally.seconds, tally.quiesced = seconds, quiet
        tally.notes = fault_errors + stack.died + stack.refused + tally.notes
        verdict = "held" if not tally.failures() else "broken: " + ", ".join(tally.failures())
        say(f"[{name}] {verdict}")
        return tally
    finally:
        stack.close()


def machine() -> dict[str, str]:
    """Where the run happened, for the README."""
    memory_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    pg = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1] / "postgres"
    versions = {
        "redis": subprocess.run(["redis-server", "--version"], capture_output=True, text=True),
        "postgres": subprocess.run([str(pg), "--version"], capture_output=True, text=True),
    }
    return {
        "cores": str(os.cpu_count()),
        "ram_gib": f"{memory_kb / 1024 / 1024:.1f}",
        "python": platform.python_version(),
        "redis": versions["redis"].stdout.split()[2].removeprefix("v="),
        "postgres": versions["postgres"].stdout.split()[2],
        "celery": version("celery"),
        "kombu": version("kombu"),
        "os": platform.platform(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description="Inject failures into a real stack and judge the promise.",
    )
    parser.add_argument("--short", action="store_true", help="the CI form: ~300 updates, one run")
    parser.add_argument(
        "--scenario", action="append", choices=[*SCENARIOS, *SHORT], help="run only these"
    )
    parser.add_argument("--quiesce-s", type=float, help="longest wait for quiescence")
    args = parser.parse_args()
    size = QUICK if args.short else FULL
    if args.quiesce_s:
        size = Size(**{**asdict(size), "quiesce_s": args.quiesce_s})
    catalogue = {**SCENARIOS, **SHORT}
    names = args.scenario or (list(SHORT) if args.short else list(SCENARIOS))
    workdir = Path(tempfile.mkdtemp(prefix="presence-chaos-"))
    pg = PrivatePostgres(options="-c max_connections=200", prefix="presence-chaos-pg-")
    pg.start()
    tallies = []
    try:
        for name in names:
            tallies.append(run_scenario(name, catalogue[name], size, pg, workdir))
    finally:
        pg.close()
    about = machine()
    console.print(rich_table(tallies, f"chaos suite ({'short' if args.short else 'full'})"))
    for t in tallies:
        for note in t.notes[:20]:
            console.print(f"  {t.scenario}: {note}", highlight=False, markup=False)
    console.print(", ".join(f"{k} {v}" for k, v in about.items()), highlight=False)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("chaos-short.json" if args.short else "chaos.json")
    out.write_text(
        json.dumps(
            {"machine": about, "size": asdict(size), "markdown": markdown(tallies),
             "scenarios": [asdict(t) | {"failures": t.failures()} for t in tallies]},
            indent=2,
        )
    )  # fmt: skip
    console.print(f"results written to {out}; logs in {workdir}")
    failed = [t.scenario for t in tallies if t.failures()]
    if failed:
        console.print(f"the promise broke in: {', '.join(failed)}")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
