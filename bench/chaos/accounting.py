"""The chaos table, computed from what the run observed: pure functions over plain records.

Inputs are what the harness reads back after quiescence — the requests it sent, the audit rows,
the emulator's per-agent write history and final presences, the WFM sink's deliveries, the
broker's leftovers — so the same computation is tested with fakes (tests/bench/) and used live.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from models import Outcome

TERMINAL = frozenset(o.value for o in Outcome)
# The outcomes that changed the agent on the platform: each must be written once and reach WFM.
APPLIED = frozenset(
    {Outcome.CONFIRMED.value, Outcome.APPLIED_UNCONFIRMED.value, Outcome.DRIFTED.value}
)
WRITE_PATHS = frozenset({"patch", "bulk"})  # the emulator's names for PATCH and bulk PUT


@dataclass(frozen=True, slots=True)
class Sent:
    """One request the harness sent through the producer library."""

    request_id: str
    user_id: str
    requested_at: datetime


@dataclass(frozen=True, slots=True)
class Row:
    """One audit row (the columns the table needs)."""

    request_id: str
    user_id: str | None
    outcome: str
    to_definition_id: str | None = None
    to_state: str | None = None
    correlation_id: str | None = None


@dataclass(frozen=True, slots=True)
class Write:
    """One presence write the platform performed (the emulator's history), in order."""

    user_id: str
    definition_id: str
    correlation_id: str
    path: str = "patch"


@dataclass(frozen=True, slots=True)
class Final:
    """An agent's presence on the platform after quiescence."""

    definition_id: str | None
    label: str


@dataclass(frozen=True, slots=True)
class WfmEvent:
    """One delivery the WFM sink accepted (2xx, valid signature)."""

    event_id: str
    request_id: str


@dataclass(frozen=True, slots=True)
class Leftovers:
    """What the broker still holds: unacknowledged messages, queued messages, delayed ones."""

    unacked: int = 0
    queued: int = 0
    delayed: int = 0

    @property
    def total(self) -> int:
        return self.unacked + self.queued + self.delayed


@dataclass(slots=True)
class Tally:
    """One line of the table. ``must_be_zero`` lists the columns the promise needs at 0."""

    scenario: str
    sent: int = 0
    terminal: int = 0
    lost: int = 0
    duplicated_rows: int = 0
    applied_twice: int = 0
    latest_wins_violations: int = 0
    too_many_outside_storms: int = 0
    wfm_expected: int = 0
    wfm_delivered: int = 0
    wfm_duplicated: int = 0
    wfm_redelivered: int = 0  # the same event id again: reported, dropped by the receiver
    unacknowledged: int = 0
    died: int = 0
    seconds: float = 0.0
    quiesced: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def wfm_missing(self) -> int:
        return self.wfm_expected - self.wfm_delivered

    def failures(self) -> list[str]:
        """The columns that break the promise, as ``name=value``; empty when it held."""
        checks = {
            "lost": self.lost,
            "duplicated rows": self.duplicated_rows,
            "applied twice": self.applied_twice,
            "latest-wins violations": self.latest_wins_violations,
            "429s outside storms": self.too_many_outside_storms,
            "WFM missing": self.wfm_missing,
            "WFM duplicated": self.wfm_duplicated,
            "unacknowledged": self.unacknowledged,
            "processes died": self.died,
        }
        return [f"{name}={value}" for name, value in checks.items() if value != 0]


def lost_and_duplicated(sent: Iterable[Sent], rows: Iterable[Row]) -> tuple[int, int, int]:
    """(terminal rows of sent requests, sent requests without one, extra rows beyond one each)."""
    per_request = Counter(r.request_id for r in rows if r.outcome in TERMINAL)
    ids = {s.request_id for s in sent}
    terminal = sum(1 for i in ids if per_request[i] > 0)
    duplicated = sum(per_request[i] - 1 for i in ids if per_request[i] > 1)
    return terminal, len(ids) - terminal, duplicated


def applied_twice(
    rows: Iterable[Row], writes: Iterable[Write], unrowed: Counter[str] | None = None
) -> tuple[int, list[str]]:
    """Platform writes that no applied request accounts for, summed over agents, with a line
    per agent concerned.

    A write is accounted for by the applied row that recorded its correlation id. An applied row
    whose correlation id matches none of its agent's writes (it found the change already made,
    on a read-back) accounts for one of the agent's unmatched writes, and so does each of the
    agent's requests without a terminal row (``unrowed``: agent → count; already counted as
    lost). Whatever is left — a second write of one request, a write whose row says
    ``superseded`` — counts here.
    """
    unrowed = unrowed or Counter()
    rows_by_agent: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        if row.user_id is not None:
            rows_by_agent[row.user_id].append(row)
    writes_by_agent: dict[str, list[Write]] = defaultdict(list)
    for write in writes:
        if write.path in WRITE_PATHS:
            writes_by_agent[write.user_id].append(write)
    extra = 0
    notes = []
    for user_id, agent_writes in sorted(writes_by_agent.items()):
        applied = [r for r in rows_by_agent[user_id] if r.outcome in APPLIED]
        recorded = {r.correlation_id for r in applied if r.correlation_id}
        written = {w.correlation_id for w in agent_writes}
        unmatched_writes = [w for w in agent_writes if w.correlation_id not in recorded]
        unmatched_rows = sum(1 for r in applied if r.correlation_id not in written)
        unmatched_rows += unrowed[user_id]
        surplus = max(0, len(unmatched_writes) - unmatched_rows)
        if surplus:
            extra += surplus
            outcomes = ", ".join(
                f"{r.request_id[:8]} {r.outcome} {r.to_state} cid {(r.correlation_id or '-')[:8]}"
                for r in rows_by_agent[user_id]
            )
            made = ", ".join(
                f"{w.path} {w.definition_id[:8]} cid {w.correlation_id[:8]}" for w in agent_writes
            )
            notes.append(
                f"{user_id}: {len(agent_writes)} writes, {len(applied)} applied rows, "
                f"{surplus} unaccounted (writes: {made}; rows: {outcomes})"
            )
    return extra, notes


def latest_wins_violations(
    sent: Iterable[Sent], rows: Iterable[Row], finals: dict[str, Final]
) -> tuple[int, list[str]]:
    """Agents whose newest request (by ``requested_at``) did not win, with one line each.

    The newest request must not end ``superseded``; when it was applied, the agent's final
    platform presence must be its target. A newest request refused on its merits (invalid,
    rejected, failed, dead-lettered) or without a row (counted as lost) is not judged here.
    """
    newest: dict[str, Sent] = {}
    for s in sent:
        best = newest.get(s.user_id)
        if best is None or (s.requested_at, s.request_id) > (best.requested_at, best.request_id):
            newest[s.user_id] = s
    by_request = {r.request_id: r for r in rows}
    problems = []
    for user_id, request in sorted(newest.items()):
        row = by_request.get(request.request_id)
        if row is None:
            continue
        if row.outcome == Outcome.SUPERSEDED.value:
            problems.append(f"{user_id}: newest request {request.request_id} ended superseded")
        elif row.outcome in APPLIED:
            final = finals.get(user_id)
            if final is None or not _same_presence(row, final):
                shown = final.label if final else "unknown"
                problems.append(
                    f"{user_id}: newest request {request.request_id} wants {row.to_state!r}, "
                    f"platform shows {shown!r}"
                )
    return len(problems), problems


def _same_presence(row: Row, final: Final) -> bool:
    if row.to_definition_id and final.definition_id:
        return row.to_definition_id == final.definition_id
    return row.to_state is not None and row.to_state == final.label


def wfm_counts(rows: Iterable[Row], events: Iterable[WfmEvent]) -> tuple[int, int, int, int]:
    """(expected, delivered, duplicated, redelivered): one accepted delivery per applied request
    expected. A further event id for a request is a duplicate: two events for one change, which
    no receiver can tell apart. The same event id accepted again is a redelivery (webhooks are
    delivered at least once; the receiver drops it by ``event_id``), counted apart."""
    events = list(events)
    expected = {r.request_id for r in rows if r.outcome in APPLIED}
    per_request = Counter(e.request_id for e in events)
    delivered = sum(1 for i in expected if per_request[i] > 0)
    ids: dict[str, set[str]] = defaultdict(set)
    for event in events:
        ids[event.request_id].add(event.event_id)
    duplicated = sum(len(distinct) - 1 for distinct in ids.values())
    redelivered = sum(per_request.values()) - sum(len(distinct) for distinct in ids.values())
    return len(expected), delivered, duplicated, redelivered


def wfm_duplicates(events: Iterable[WfmEvent]) -> list[str]:
    """A line per request accepted more than once: the same event id again (a redelivery the
    receiver can drop by ``event_id``) or several event ids (two events for one change, which
    no receiver can tell apart)."""
    by_request: dict[str, list[str]] = defaultdict(list)
    for event in events:
        by_request[event.request_id].append(event.event_id)
    lines = []
    for request_id, ids in sorted(by_request.items()):
        if len(ids) > 1:
            kind = "same event id again" if len(set(ids)) == 1 else f"{len(set(ids))} event ids"
            lines.append(f"WFM: {request_id} accepted {len(ids)} times ({kind})")
    return lines


def tally(
    scenario: str,
    *,
    sent: list[Sent],
    rows: list[Row],
    writes: list[Write],
    finals: dict[str, Final],
    events: list[WfmEvent],
    leftovers: Leftovers,
    too_many_outside_storms: int,
    died: int,
    held: frozenset[str] | set[str] = frozenset(),
) -> Tally:
    """The table line for one scenario. ``rows`` may hold rows of other requests: only the sent
    requests' rows count. ``held``: request ids whose message the broker still holds, so that
    each lost request's note says whether it waits there (for a redelivery) or is gone."""
    ids = {s.request_id for s in sent}
    ours = [r for r in rows if r.request_id in ids]
    terminal, lost, duplicated = lost_and_duplicated(sent, ours)
    our_events = [e for e in events if e.request_id in ids]
    expected, delivered, wfm_duplicated, wfm_redelivered = wfm_counts(ours, our_events)
    violations, notes = latest_wins_violations(sent, ours, finals)
    rowed = {r.request_id for r in ours if r.outcome in TERMINAL}
    unrowed = [s for s in sent if s.request_id not in rowed]
    twice, twice_notes = applied_twice(ours, writes, Counter(s.user_id for s in unrowed))
    lost_notes = [
        f"lost: {s.request_id} for {s.user_id} "
        + (
            "(still held unacknowledged or queued)"
            if s.request_id in held
            else "(not in the broker)"
        )
        for s in unrowed
    ]
    return Tally(
        scenario=scenario,
        sent=len(ids),
        terminal=terminal,
        lost=lost,
        duplicated_rows=duplicated,
        applied_twice=twice,
        latest_wins_violations=violations,
        too_many_outside_storms=too_many_outside_storms,
        wfm_expected=expected,
        wfm_delivered=delivered,
        wfm_duplicated=wfm_duplicated,
        wfm_redelivered=wfm_redelivered,
        unacknowledged=leftovers.total,
        died=died,
        notes=lost_notes + twice_notes + notes + wfm_duplicates(our_events),
    )
