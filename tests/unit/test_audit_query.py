"""The pure query rules: time bounds, filters, the start/stop of a scan, reports."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.audit.entry import AuditEntry
from gateway.domain.audit.query import (
    MAX_CLOCK_SKEW_SECONDS,
    SEARCH_FANOUT,
    EntryFilter,
    ReportBuilder,
    agent_of,
    build_report,
    check_max_entries,
    is_failure,
    micros_from_text,
    micros_from_unix,
    narrow_start,
    security_reasons,
    select,
    start_probes,
    timestamp_from_micros,
)
from gateway.errors import InvalidRequest

T0 = 1_795_000_000  # 2026-11-18T...Z, in seconds


def stamp(seconds: float) -> str:
    return timestamp_from_micros("t", round(seconds * 1_000_000))


def entry(
    seq: int,
    at: float = T0,
    event_type: str = "action_decided",
    actor: str = "agent-1",
    actor_type: str = "agent",
    outcome: str = "allow",
    action_id: str = "",
    **details: Any,
) -> AuditEntry:
    return AuditEntry(
        seq=seq,
        timestamp=stamp(at),
        event_type=event_type,
        actor=actor,
        actor_type=actor_type,
        action_id=action_id or f"a{seq}",
        action_type="search",
        resource="",
        details=details,
        outcome=outcome,
        prev_hash="0" * 64,
        key_id="0" * 16,
        entry_hash="0" * 64,
        signature="0" * 128,
    )


def field_of(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(InvalidRequest) as caught:
        call(*args, **kwargs)
    return caught.value.field


# --- time bounds ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-25T05:55:27Z", "2026-11-25T05:55:27.000000Z"),
        ("2026-11-25t05:55:27.5z", "2026-11-25T05:55:27.500000Z"),
        ("2026-11-25T07:55:27.123456+02:00", "2026-11-25T05:55:27.123456Z"),
        ("2026-11-25T05:55:27", "2026-11-25T05:55:27.000000Z"),  # no offset: UTC
        ("2026-11-25", "2026-11-25T00:00:00.000000Z"),  # a date: UTC midnight
        ("  2026-11-25 05:55Z ", "2026-11-25T05:55:00.000000Z"),
        # Past the microsecond a bound rounds up, never admitting an earlier entry.
        ("2026-11-25T05:55:27.1234561Z", "2026-11-25T05:55:27.123457Z"),
        ("2026-11-25T05:55:27.1234560Z", "2026-11-25T05:55:27.123456Z"),
    ],
)
def test_text_times_become_entry_timestamps(text: str, expected: str) -> None:
    assert timestamp_from_micros("t", micros_from_text("since", text)) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01", "1969-12-31T23:59:59Z"])
def test_bad_text_times_name_the_field(text: str) -> None:
    assert field_of(micros_from_text, "since", text) == "since"


def test_unix_bounds_round_nanoseconds_up() -> None:
    assert micros_from_unix("start_time", T0, 0) == T0 * 1_000_000
    assert micros_from_unix("start_time", T0, 1) == T0 * 1_000_000 + 1
    assert micros_from_unix("start_time", T0, 999_999_999) == (T0 + 1) * 1_000_000
    assert field_of(micros_from_unix, "end_time", T0, 1_000_000_000) == "end_time"
    assert field_of(micros_from_unix, "start_time", -1, 0) == "start_time"
    assert field_of(micros_from_unix, "end_time", 253402300800, 0) == "end_time"  # year 10000


# --- validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"actor": "x" * 257}, "actor"),
        ({"event_type": "x" * 257}, "event_type"),
        ({"action_id": "x" * 257}, "action_id"),
        ({"outcome": "x" * 257}, "outcome"),
        ({"agent_id": "x" * 257}, "agent_id"),
        ({"session_id": "x" * 257}, "session_id"),
        ({"actor_type": "robot"}, "actor_type"),
        ({"after_seq": -1}, "after_seq"),
        ({"start_micros": 10, "end_micros": 5}, "end_time"),
        ({"start_micros": 10, "end_micros": 10}, "end_time"),
        ({"start_micros": -1}, "start_time"),
    ],
)
def test_invalid_filters_name_the_field(changes: dict[str, Any], field: str) -> None:
    assert field_of(EntryFilter.create, **changes) == field


def test_longest_allowed_strings_are_accepted() -> None:
    flt = EntryFilter.create(actor="x" * 256, actor_type="user")
    assert flt.actor == "x" * 256 and flt.actor_type == "user"


# --- matching -------------------------------------------------------------------------


def test_time_range_is_half_open() -> None:
    flt = EntryFilter.create(start_micros=T0 * 1_000_000, end_micros=(T0 + 10) * 1_000_000)
    assert not flt.matches(entry(1, T0 - 0.000001))
    assert flt.matches(entry(2, T0))
    assert flt.matches(entry(3, T0 + 9.999999))
    assert not flt.matches(entry(4, T0 + 10))


def test_every_criterion_must_hold() -> None:
    flt = EntryFilter.create(actor="agent-1", outcome="deny", event_type="action_decided")
    assert flt.matches(entry(1, outcome="deny"))
    assert not flt.matches(entry(2, outcome="allow"))
    assert not flt.matches(entry(3, outcome="deny", actor="agent-2"))
    assert not flt.matches(entry(4, outcome="deny", event_type="other"))
    assert EntryFilter.create(action_id="a7").matches(entry(7))
    assert not EntryFilter.create(action_id="a7").matches(entry(8))
    assert EntryFilter.create(actor_type="user").matches(entry(1, actor_type="user"))
    assert not EntryFilter.create(actor_type="user").matches(entry(1))
    assert EntryFilter().matches(entry(1))


def test_after_seq_pages_on() -> None:
    flt = EntryFilter.create(after_seq=5)
    assert not flt.matches(entry(5)) and flt.matches(entry(6))


def test_agent_filter_covers_the_agents_actions_and_what_others_did_to_them() -> None:
    own = entry(1, actor="agent-1")
    other = entry(2, actor="agent-2")
    rejected = entry(
        3, event_type="hold_rejected", actor="approver-1", actor_type="user", agent_id="agent-1"
    )
    resumed = entry(
        4, event_type="session_resumed", actor="ops", actor_type="user", agent_id="agent-2"
    )
    assert [agent_of(e) for e in (own, other, rejected, resumed)] == [
        "agent-1",
        "agent-2",
        "agent-1",
        "agent-2",
    ]
    flt = EntryFilter.create(agent_id="agent-1")
    assert [e.seq for e in (own, other, rejected, resumed) if flt.matches(e)] == [1, 3]
    # A details agent_id of the wrong type names no agent.
    assert agent_of(entry(5, actor_type="system", agent_id=7)) == ""


def test_session_filter_reads_the_details() -> None:
    flt = EntryFilter.create(session_id="s1")
    assert flt.matches(entry(1, session_id="s1"))
    assert not flt.matches(entry(2, session_id="s2"))
    assert not flt.matches(entry(3))


# --- where a scan starts and stops ----------------------------------------------------


def test_start_probes_are_few_and_strictly_inside() -> None:
    assert start_probes(0, 1) == []
    assert start_probes(3, 4) == []
    assert start_probes(0, 5) == [1, 2, 3, 4]
    probes = start_probes(0, 1_000_001)
    assert len(probes) == SEARCH_FANOUT
    assert probes == sorted(probes) and probes[0] > 0 and probes[-1] < 1_000_001


def test_narrow_start_takes_the_last_probe_stamped_before() -> None:
    # Out of order within the skew: 30 is before, 20 is not; low moves to 30.
    stamps = {10: "a", 20: "z", 30: "b", 40: "y"}
    assert narrow_start(0, 50, stamps, "m") == (30, 40)
    assert narrow_start(0, 50, {10: "z", 20: "z"}, "m") == (0, 10)
    assert narrow_start(0, 50, {10: "a", 20: "b"}, "m") == (20, 50)
    # An entry that could not be read is never taken as before.
    assert narrow_start(0, 50, {10: "a", 20: None, 30: "b"}, "m") == (30, 50)
    assert narrow_start(0, 50, {10: None}, "m") == (0, 10)


def search(stamps: list[str], flt: EntryFilter) -> tuple[int, int]:
    """The seq a scan starts at, and how many entries the search read."""
    low, high, read = min(flt.after_seq, len(stamps)), len(stamps) + 1, 0
    while probes := start_probes(low, high):
        read += len(probes)
        low, high = narrow_start(low, high, {s: stamps[s - 1] for s in probes}, flt.scan_from)
    return low + 1, read


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.integers(0, 8), min_size=0, max_size=400),
    jitter=st.data(),
    start=st.integers(-100, 3300),
    length=st.integers(1, 1000),
)
def test_search_never_skips_an_entry_in_range(
    steps: list[int], jitter: st.DataObject, start: int, length: int
) -> None:
    # Stamps that grow with seq only up to the skew: each entry is at most
    # MAX_CLOCK_SKEW_SECONDS after any later one.
    base, times = T0, []
    for step in steps:
        base += step
        times.append(base + jitter.draw(st.integers(0, MAX_CLOCK_SKEW_SECONDS)))
    stamps = [stamp(t) for t in times]
    flt = EntryFilter.create(
        start_micros=(T0 + start) * 1_000_000, end_micros=(T0 + start + length) * 1_000_000
    )
    begin, read = search(stamps, flt)
    in_range = [i + 1 for i, s in enumerate(stamps) if flt.start_time <= s < flt.end_time]
    assert all(seq >= begin for seq in in_range)
    assert read <= SEARCH_FANOUT * 4  # 400 entries: at most 3 rounds of 16 probes
    scanned = [e.seq for e in select((entry(i + 1, t) for i, t in enumerate(times)), flt)]
    assert scanned == in_range


@given(st.lists(st.integers(0, 5), min_size=1, max_size=300), st.integers(-10, 1500))
def test_search_on_sorted_stamps_starts_exactly_at_the_widened_bound(
    steps: list[int], start: int
) -> None:
    times, base = [], T0
    for step in steps:
        base += step
        times.append(base)
    stamps = [stamp(t) for t in times]
    flt = EntryFilter.create(start_micros=(T0 + start) * 1_000_000)
    first = next((i + 1 for i, s in enumerate(stamps) if s >= flt.scan_from), len(stamps) + 1)
    assert search(stamps, flt)[0] == first


def test_search_starts_after_after_seq_and_reads_little_of_a_long_log() -> None:
    stamps = [stamp(T0 + i) for i in range(1_000_000)]
    flt = EntryFilter.create(start_micros=(T0 + 999_000) * 1_000_000)
    begin, read = search(stamps, flt)
    assert begin == 999_000 - MAX_CLOCK_SKEW_SECONDS + 1
    assert read <= SEARCH_FANOUT * 5  # 17**5 > 1e6: five round trips
    assert search(stamps, replace(flt, after_seq=999_500))[0] == 999_501
    assert search(stamps, EntryFilter.create(after_seq=10))[0] == 11


class Exhausted(AssertionError):
    pass


def entries_then_fail(entries: list[AuditEntry]) -> Iterator[AuditEntry]:
    yield from entries
    raise Exhausted("read past the point where the scan should have stopped")


def test_select_stops_a_skew_past_the_end_and_honours_the_limit() -> None:
    end = T0 + 100
    flt = EntryFilter.create(end_micros=end * 1_000_000)
    # An entry stamped after the end may still be followed by one inside the range.
    late = [entry(1, T0), entry(2, end + 5), entry(3, end - 1)]
    stop = entry(4, end + MAX_CLOCK_SKEW_SECONDS)
    assert [e.seq for e in select(entries_then_fail([*late, stop]), flt)] == [1, 3]
    with pytest.raises(Exhausted):
        list(select(entries_then_fail(late), flt))
    many = [entry(i, T0) for i in range(1, 10)]
    assert [e.seq for e in select(entries_then_fail(many), EntryFilter(), limit=3)] == [1, 2, 3]


# --- security events, failures, reports -------------------------------------------------


@pytest.mark.parametrize(
    ("e", "reasons"),
    [
        (entry(1), ()),
        (entry(1, outcome="deny"), ("denied",)),
        (entry(1, outcome="hold"), ("held",)),
        (
            entry(
                1,
                outcome="hold",
                findings=[{"type": "infinite_loop"}, {"type": "infinite_loop"}, "junk"],
                paused_session=True,
            ),
            ("held", "finding:infinite_loop", "paused_session"),
        ),
        (entry(1, findings=[{"type": "stuck_pattern"}]), ("finding:stuck_pattern",)),
        (entry(1, event_type="hold_approved", outcome="approved", actor_type="user"), ()),
        (entry(1, event_type="hold_rejected", outcome="rejected"), ("hold_rejected",)),
        (entry(1, event_type="hold_expired", outcome="expired"), ("hold_expired",)),
        (entry(1, event_type="session_resumed", outcome="resumed"), ("session_resumed",)),
        (entry(1, event_type="key_rotated", outcome="rotated"), ("key_rotated",)),
        (entry(1, event_type="alert_fired", outcome="sent"), ("alert_fired",)),
        # Details of a non-decision event do not make it a security event.
        (entry(1, event_type="note", outcome="deny", paused_session=True), ()),
    ],
)
def test_security_reasons(e: AuditEntry, reasons: tuple[str, ...]) -> None:
    assert security_reasons(e) == reasons


@pytest.mark.parametrize(
    ("outcome", "failed"),
    [
        ("deny", True),
        ("rejected", True),
        ("expired", True),
        ("error", True),
        ("allow", False),
        ("hold", False),
        ("approved", False),
        ("resumed", False),
    ],
)
def test_failures_are_outcomes_that_did_not_go_through(outcome: str, failed: bool) -> None:
    assert is_failure(entry(1, outcome=outcome)) is failed


def test_max_entries_defaults_and_bounds() -> None:
    assert check_max_entries(0) == 100
    assert check_max_entries(10_000) == 10_000
    assert field_of(check_max_entries, 10_001) == "max_entries"
    assert field_of(check_max_entries, -1) == "max_entries"


def test_report_counts_everything_and_keeps_the_most_recent() -> None:
    entries = [
        entry(1, T0, outcome="allow"),
        entry(2, T0 + 1, outcome="deny", findings=[{"type": "suspicious_action"}]),
        entry(3, T0 + 2, outcome="hold", findings=[{"type": "infinite_loop"}]),
        entry(4, T0 + 3, event_type="hold_rejected", actor_type="user", outcome="rejected"),
        entry(5, T0 + 4, event_type="hold_expired", actor_type="system", outcome="expired"),
        entry(6, T0 + 5, outcome="deny", findings=[{"type": "infinite_loop"}]),
        entry(7, T0 + 6, outcome="allow"),
    ]
    report = build_report(entries, EntryFilter(), max_entries=2)
    assert report.total == 7 and (report.first_seq, report.last_seq) == (1, 7)
    assert report.by_actor_type == {"agent": 5, "user": 1, "system": 1}
    assert report.by_event_type == {"action_decided": 5, "hold_rejected": 1, "hold_expired": 1}
    assert report.by_outcome == {"allow": 2, "deny": 2, "hold": 1, "rejected": 1, "expired": 1}
    assert report.by_finding_type == {"suspicious_action": 1, "infinite_loop": 2}
    assert report.security_event_count == 5 and report.failure_count == 4
    assert [e.seq for e in report.security_events] == [5, 6]
    assert [e.seq for e in report.failures] == [5, 6]
    ranged = build_report(
        entries,
        EntryFilter.create(start_micros=(T0 + 1) * 1_000_000, end_micros=(T0 + 3) * 1_000_000),
    )
    assert (ranged.total, ranged.first_seq, ranged.last_seq) == (2, 2, 3)
    assert [e.seq for e in ranged.security_events] == [2, 3]
    assert [e.seq for e in ranged.failures] == [2]


def test_empty_report() -> None:
    report = ReportBuilder().report()
    assert report.total == report.first_seq == report.last_seq == 0
    assert report.security_events == () and report.by_outcome == {}


def test_the_documented_event_types_are_the_ones_written() -> None:
    """docs/audit-queries.md lists exactly the EventType values, so a query can only
    ask for events the gateway writes."""
    import re
    from pathlib import Path

    from gateway.domain.audit.events import EventType

    page = (Path(__file__).resolve().parents[2] / "docs" / "audit-queries.md").read_text()
    table = page.split("The event types and outcomes the gateway writes today:", 1)[1]
    table = table.split("\n\n", 2)[1]
    rows = table.splitlines()[2:]  # below the header and its rule
    documented = {m.group(1) for row in rows if (m := re.match(r"\| `([a-z_]+)` \|", row))}
    assert documented == {e.value for e in EventType}
