"""The chaos table from fakes: each column detects the failure it names, and stays 0 when the
run kept the promise."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from bench.chaos.accounting import (
    Final,
    Leftovers,
    Row,
    Sent,
    WfmEvent,
    Write,
    applied_twice,
    latest_wins_violations,
    lost_and_duplicated,
    tally,
    wfm_counts,
    wfm_duplicates,
)

T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
AGENT, OTHER = "agent-a", "agent-b"
BUSY, AVAILABLE = "def-busy", "def-available"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def clean_run() -> dict[str, object]:
    """Two requests for one agent (the newer wins), one for another, all kept."""
    sent = [Sent("r1", AGENT, at(1)), Sent("r2", AGENT, at(2)), Sent("r3", OTHER, at(1))]
    rows = [
        Row("r1", AGENT, "superseded", BUSY, "Busy"),
        Row("r2", AGENT, "confirmed", AVAILABLE, "Available", "c2"),
        Row("r3", OTHER, "applied_unconfirmed", BUSY, "Busy", "c3"),
    ]
    writes = [Write(AGENT, AVAILABLE, "c2"), Write(OTHER, BUSY, "c3", "bulk")]
    finals = {AGENT: Final(AVAILABLE, "Available"), OTHER: Final(BUSY, "Busy")}
    events = [WfmEvent("e2", "r2"), WfmEvent("e3", "r3")]
    return {
        "sent": sent,
        "rows": rows,
        "writes": writes,
        "finals": finals,
        "events": events,
        "leftovers": Leftovers(),
        "too_many_outside_storms": 0,
        "died": 0,
    }


def test_a_run_that_kept_the_promise_breaks_nothing():
    line = tally("clean", **clean_run())  # type: ignore[arg-type]
    assert (line.sent, line.terminal, line.wfm_expected, line.wfm_delivered) == (3, 3, 2, 2)
    assert line.failures() == []


def test_a_request_without_a_terminal_row_is_lost():
    run = clean_run()
    run["rows"] = [r for r in run["rows"] if r.request_id != "r3"]  # type: ignore[attr-defined]
    run["writes"] = [w for w in run["writes"] if w.user_id != OTHER]  # type: ignore[attr-defined]
    run["events"] = [e for e in run["events"] if e.request_id != "r3"]  # type: ignore[attr-defined]
    line = tally("lost", **run)  # type: ignore[arg-type]
    assert line.lost == 1
    assert line.terminal == 2
    assert line.failures() == ["lost=1"]


def test_two_rows_for_one_request_are_a_duplicate():
    sent = [Sent("r1", AGENT, at(1))]
    rows = [Row("r1", AGENT, "confirmed"), Row("r1", AGENT, "superseded")]
    assert lost_and_duplicated(sent, rows) == (1, 0, 1)


def test_rows_of_requests_not_sent_do_not_count():
    run = clean_run()
    run["rows"] = [*run["rows"], Row("warm-up", AGENT, "confirmed")]  # type: ignore[list-item]
    assert tally("clean", **run).failures() == []  # type: ignore[arg-type]


def test_a_request_written_twice_is_applied_twice():
    rows = [Row("r2", AGENT, "confirmed", AVAILABLE, "Available", "c2b")]
    writes = [Write(AGENT, AVAILABLE, "c2a"), Write(AGENT, AVAILABLE, "c2b")]
    count, notes = applied_twice(rows, writes)
    assert count == 1
    assert notes[0].startswith(f"{AGENT}: 2 writes, 1 applied rows")


def test_a_write_whose_row_says_superseded_is_counted():
    rows = [
        Row("r1", AGENT, "superseded", BUSY, "Busy", "c1"),
        Row("r2", AGENT, "confirmed", AVAILABLE, "Available", "c2"),
    ]
    writes = [Write(AGENT, BUSY, "c1"), Write(AGENT, AVAILABLE, "c2")]
    assert applied_twice(rows, writes)[0] == 1


def test_a_row_that_found_its_change_on_a_read_back_accounts_for_the_write():
    # Redelivered after the write: the row carries the read's correlation id, not the write's.
    rows = [Row("r2", AGENT, "confirmed", AVAILABLE, "Available", "c-read")]
    writes = [Write(AGENT, AVAILABLE, "c-write")]
    assert applied_twice(rows, writes) == (0, [])


def test_a_write_of_a_request_still_without_a_row_is_counted_as_lost_not_twice():
    writes = [Write(AGENT, AVAILABLE, "c1")]
    assert applied_twice([], writes)[0] == 1
    assert applied_twice([], writes, Counter({AGENT: 1})) == (0, [])


def test_reads_and_other_clients_changes_are_not_writes():
    rows = [Row("r2", AGENT, "confirmed", AVAILABLE, "Available", "c2")]
    writes = [Write(AGENT, AVAILABLE, "c2"), Write(AGENT, BUSY, "c-ui", "admin")]
    assert applied_twice(rows, writes)[0] == 0


def test_the_newest_request_ending_superseded_violates_latest_wins():
    sent = [Sent("r1", AGENT, at(2)), Sent("r2", AGENT, at(1))]  # r1 is newer, sent first
    rows = [
        Row("r1", AGENT, "superseded", BUSY, "Busy"),
        Row("r2", AGENT, "confirmed", AVAILABLE, "Available", "c2"),
    ]
    count, notes = latest_wins_violations(sent, rows, {AGENT: Final(AVAILABLE, "Available")})
    assert count == 1
    assert "ended superseded" in notes[0]


def test_a_final_presence_other_than_the_newest_target_violates_latest_wins():
    sent = [Sent("r1", AGENT, at(1)), Sent("r2", AGENT, at(2))]
    rows = [
        Row("r1", AGENT, "confirmed", BUSY, "Busy", "c1"),
        Row("r2", AGENT, "confirmed", AVAILABLE, "Available", "c2"),
    ]
    count, notes = latest_wins_violations(sent, rows, {AGENT: Final(BUSY, "Busy")})
    assert count == 1
    assert "platform shows 'Busy'" in notes[0]


def test_an_agent_never_written_is_compared_by_label():
    sent = [Sent("r1", AGENT, at(1))]
    rows = [Row("r1", AGENT, "confirmed", AVAILABLE, "Available")]
    assert latest_wins_violations(sent, rows, {AGENT: Final(None, "Available")})[0] == 0
    assert latest_wins_violations(sent, rows, {AGENT: Final(None, "Busy")})[0] == 1


def test_a_newest_request_refused_on_its_merits_is_not_judged():
    sent = [Sent("r1", AGENT, at(1)), Sent("r2", AGENT, at(2))]
    rows = [
        Row("r1", AGENT, "confirmed", BUSY, "Busy", "c1"),
        Row("r2", AGENT, "rejected_capacity", AVAILABLE, "Available"),
    ]
    assert latest_wins_violations(sent, rows, {AGENT: Final(BUSY, "Busy")})[0] == 0


def test_equal_requested_at_is_decided_by_request_id():
    sent = [Sent("r-b", AGENT, at(1)), Sent("r-a", AGENT, at(1))]
    rows = [
        Row("r-a", AGENT, "superseded", BUSY, "Busy"),
        Row("r-b", AGENT, "confirmed", AVAILABLE, "Available", "c"),
    ]
    assert latest_wins_violations(sent, rows, {AGENT: Final(AVAILABLE, "Available")})[0] == 0


def test_an_applied_change_wfm_never_heard_of_is_missing():
    rows = [Row("r1", AGENT, "confirmed"), Row("r2", OTHER, "drifted")]
    assert wfm_counts(rows, [WfmEvent("e1", "r1")]) == (2, 1, 0, 0)


def test_two_events_for_one_change_are_a_wfm_duplicate_and_a_repeated_event_a_redelivery():
    rows = [Row("r1", AGENT, "confirmed")]
    events = [WfmEvent("e1", "r1"), WfmEvent("e1", "r1"), WfmEvent("e1b", "r1")]
    assert wfm_counts(rows, events) == (1, 1, 1, 1)


def test_unchanged_outcomes_expect_no_wfm_event():
    rows = [Row("r1", AGENT, "superseded"), Row("r2", AGENT, "invalid")]
    assert wfm_counts(rows, []) == (0, 0, 0, 0)


def test_broker_leftovers_429s_and_deaths_break_the_promise():
    run = clean_run()
    run.update(leftovers=Leftovers(unacked=2, queued=1, delayed=1), too_many_outside_storms=3)
    run["died"] = 1
    line = tally("broken", **run)  # type: ignore[arg-type]
    assert line.failures() == ["429s outside storms=3", "unacknowledged=4", "processes died=1"]


def test_a_wfm_duplicate_says_whether_a_receiver_could_drop_it():
    events = [
        WfmEvent("e1", "r1"),
        WfmEvent("e1", "r1"),
        WfmEvent("e2", "r2"),
        WfmEvent("e3", "r2"),
    ]
    assert wfm_duplicates(events) == [
        "WFM: r1 accepted 2 times (same event id again)",
        "WFM: r2 accepted 2 times (2 event ids)",
    ]


def test_a_lost_request_says_whether_the_broker_still_holds_it():
    run = clean_run()
    run["rows"] = [r for r in run["rows"] if r.request_id not in ("r2", "r3")]  # type: ignore[attr-defined]
    line = tally("lost", **run, held={"r2"})  # type: ignore[arg-type]
    assert line.notes[:2] == [
        f"lost: r2 for {AGENT} (still held unacknowledged or queued)",
        f"lost: r3 for {OTHER} (not in the broker)",
    ]
