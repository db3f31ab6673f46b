"""Querying and summarising audit entries: filters, security events, failures, reports.

Pure: it takes entries (from the server's scan or from an export file) and returns
values; it never reads Redis, files or the clock, so `agentgw audit query --export`
runs the same code offline as the `Audit.Query` RPC runs on the server. It also
decides where a time-bounded scan over seq may start and stop, given that entry
timestamps grow with seq only up to the replicas' clock skew. It does not verify
entries: verify an export first (`agentgw audit verify`). What counts as a security
event or a failure is defined here and documented in docs/audit-queries.md.
"""

from __future__ import annotations

import functools
import re
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from gateway.domain.audit.entry import ACTOR_TYPES, AuditEntry
from gateway.domain.audit.events import (
    SECURITY_EVENT_PREFIXES,
    SECURITY_EVENT_TYPES,
    ActorType,
    EventType,
)
from gateway.errors import InvalidRequest

MAX_TEXT: Final = 256
DEFAULT_MAX_ENTRIES: Final = 100
MAX_ENTRIES_LIMIT: Final = 10_000
# Entry timestamps come from each replica's clock, so they grow with seq only up to
# the replicas' skew (plus commit latency); time-bounded scans widen by this much.
# The invariant relied on: an entry is never stamped more than this after a later one.
MAX_CLOCK_SKEW_SECONDS: Final = 60
# Seqs probed per round trip when searching for where a time range starts.
SEARCH_FANOUT: Final = 16

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_MICROS: Final = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - _EPOCH) // timedelta(
    microseconds=1
)
_FRACTION: Final = re.compile(r"[.,]([0-9]+)")

# Outcomes of an event that did not go through: a denied action, a hold rejected or
# left to expire; error/failed are for events to come (e.g. reported outcomes).
FAILURE_OUTCOMES: Final = frozenset({"deny", "rejected", "expired", "error", "failed"})


def timestamp_from_micros(field: str, micros: int) -> str:
    """The entry timestamp form (RFC 3339 UTC, six fractional digits) of a time bound.

    Entry timestamps have a fixed width, so comparing these strings compares times.
    """
    if not 0 <= micros <= _MAX_MICROS:
        raise InvalidRequest(field, "must be between 1970-01-01 and 9999-12-31 (UTC)")
    moment = _EPOCH + timedelta(microseconds=micros)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def micros_from_text(field: str, text: str) -> int:
    """Microseconds since the epoch of an RFC 3339 time or an ISO date (UTC midnight).

    A time without an offset is taken as UTC. Digits past the microsecond round up,
    as in micros_from_unix.
    """
    value = text.strip().upper()
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(
            field, f"{text!r} is not an RFC 3339 time (2026-11-25T05:55:27Z) or a date"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    micros = (parsed - _EPOCH) // timedelta(microseconds=1)
    fraction = _FRACTION.search(value)
    if fraction and fraction.group(1)[6:].strip("0"):
        micros += 1  # fromisoformat truncates to microseconds
    timestamp_from_micros(field, micros)  # range check
    return micros


def micros_from_unix(field: str, seconds: int, nanos: int) -> int:
    """Microseconds of a (seconds, nanos) instant, rounded up: a bound never admits an
    entry stamped before it."""
    if not 0 <= nanos < 1_000_000_000:
        raise InvalidRequest(field, f"nanos {nanos} is not in 0..999999999")
    micros = seconds * 1_000_000 + -(-nanos // 1000)
    timestamp_from_micros(field, micros)
    return micros


def _shift(timestamp: str, seconds: int) -> str:
    moment = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    micros = (moment - _EPOCH) // timedelta(microseconds=1) + seconds * 1_000_000
    return timestamp_from_micros("timestamp", min(max(micros, 0), _MAX_MICROS))


@dataclass(frozen=True)
class EntryFilter:
    """Which entries a query wants: every criterion set must hold (AND).

    Times are entry-timestamp strings; start_time is inclusive and end_time
    exclusive, so consecutive ranges neither overlap nor leave gaps. Empty strings
    and zero mean "any". Build it with `create`, which validates.
    """

    start_time: str = ""
    end_time: str = ""
    actor: str = ""
    actor_type: str = ""
    event_type: str = ""
    action_id: str = ""
    outcome: str = ""
    agent_id: str = ""
    session_id: str = ""
    after_seq: int = 0
    skew_seconds: int = MAX_CLOCK_SKEW_SECONDS

    @classmethod
    def create(
        cls,
        *,
        start_micros: int | None = None,
        end_micros: int | None = None,
        actor: str = "",
        actor_type: str = "",
        event_type: str = "",
        action_id: str = "",
        outcome: str = "",
        agent_id: str = "",
        session_id: str = "",
        after_seq: int = 0,
    ) -> EntryFilter:
        """Validated filter; raises InvalidRequest naming the bad field."""
        texts = {
            "actor": actor,
            "actor_type": actor_type,
            "event_type": event_type,
            "action_id": action_id,
            "outcome": outcome,
            "agent_id": agent_id,
            "session_id": session_id,
        }
        for name, value in texts.items():
            if len(value) > MAX_TEXT:
                raise InvalidRequest(name, f"is {len(value)} characters, more than {MAX_TEXT}")
        if actor_type and actor_type not in ACTOR_TYPES:
            raise InvalidRequest("actor_type", f"{actor_type!r} is not agent, user or system")
        if after_seq < 0:
            raise InvalidRequest("after_seq", "must be >= 0")
        start = "" if start_micros is None else timestamp_from_micros("start_time", start_micros)
        end = "" if end_micros is None else timestamp_from_micros("end_time", end_micros)
        if start and end and end <= start:
            raise InvalidRequest("end_time", f"{end} is not after start_time {start}")
        return cls(
            start_time=start,
            end_time=end,
            actor=actor,
            actor_type=actor_type,
            event_type=event_type,
            action_id=action_id,
            outcome=outcome,
            agent_id=agent_id,
            session_id=session_id,
            after_seq=after_seq,
        )

    def matches(self, entry: AuditEntry) -> bool:
        if entry.seq <= self.after_seq:
            return False
        if self.start_time and entry.timestamp < self.start_time:
            return False
        if self.end_time and entry.timestamp >= self.end_time:
            return False
        for wanted, value in (
            (self.actor, entry.actor),
            (self.actor_type, entry.actor_type),
            (self.event_type, entry.event_type),
            (self.action_id, entry.action_id),
            (self.outcome, entry.outcome),
        ):
            if wanted and value != wanted:
                return False
        if self.agent_id and agent_of(entry) != self.agent_id:
            return False
        return not (self.session_id and entry.details.get("session_id") != self.session_id)

    @functools.cached_property
    def scan_from(self) -> str:
        """start_time less the skew; "" when unbounded. An entry stamped before this
        is not in range, and neither is any entry logged before it."""
        return _shift(self.start_time, -self.skew_seconds) if self.start_time else ""

    @functools.cached_property
    def scan_until(self) -> str:
        """end_time plus the skew; "" when unbounded. Once an entry stamped at or after
        this is reached, no later entry is in range."""
        return _shift(self.end_time, self.skew_seconds) if self.end_time else ""

    def past_end(self, entry: AuditEntry) -> bool:
        """True once a scan in seq order can stop at this entry (see scan_until)."""
        return bool(self.scan_until) and entry.timestamp >= self.scan_until


def start_probes(low: int, high: int, fanout: int = SEARCH_FANOUT) -> list[int]:
    """The seqs to read next when searching for where a scan starts: up to `fanout`,
    evenly spaced, strictly between `low` and `high`; [] when the search is over."""
    if high - low - 1 <= fanout:
        return list(range(low + 1, high))
    return sorted({low + (high - low) * i // (fanout + 1) for i in range(1, fanout + 1)})


def narrow_start(
    low: int, high: int, stamps: Mapping[int, str | None], scan_from: str
) -> tuple[int, int]:
    """The search interval after reading the timestamps of start_probes(low, high).

    Invariant: no entry at or before `low` is in range. The last probe stamped before
    `scan_from` becomes `low` (see EntryFilter.scan_from), the next probe `high`;
    a probe that could not be read (None) counts as not before. A scan starts at
    `low + 1` once start_probes(low, high) is empty. Timestamps need not be sorted.
    """
    probed = [seq for seq in stamps if low < seq < high]
    before = [seq for seq in probed if (stamp := stamps[seq]) is not None and stamp < scan_from]
    new_low = max(before, default=low)
    return new_low, min((seq for seq in probed if seq > new_low), default=high)


def agent_of(entry: AuditEntry) -> str:
    """The agent an entry is about: the actor of an agent's own event, otherwise the
    `agent_id` its details name (hold resolutions, session resumes); "" if none."""
    if entry.actor_type == ActorType.AGENT:
        return entry.actor
    agent = entry.details.get("agent_id", "")
    return agent if isinstance(agent, str) else ""


def finding_types(entry: AuditEntry) -> tuple[str, ...]:
    """The distinct finding types recorded on an entry, in recorded order."""
    findings = entry.details.get("findings")
    if not isinstance(findings, list):
        return ()
    types = (f.get("type") for f in findings if isinstance(f, Mapping))
    return tuple(dict.fromkeys(t for t in types if isinstance(t, str) and t))


def security_reasons(entry: AuditEntry) -> tuple[str, ...]:
    """Why an entry is a security event; () when it is not one.

    - a decided action that was denied ("denied") or held for a human ("held"), each
      detector finding on it ("finding:<type>", e.g. finding:infinite_loop), and a
      session it paused ("paused_session");
    - events that are security-relevant in themselves: holds rejected or expired,
      sessions paused or resumed, agents quarantined or released, and every
      alert_*, key_* and security_* event (the event type is the reason).
    """
    reasons: list[str] = []
    if entry.event_type == EventType.ACTION_DECIDED:
        if entry.outcome == "deny":
            reasons.append("denied")
        elif entry.outcome == "hold":
            reasons.append("held")
        reasons += [f"finding:{t}" for t in finding_types(entry)]
        if entry.details.get("paused_session") is True:
            reasons.append("paused_session")
    elif entry.event_type in SECURITY_EVENT_TYPES or entry.event_type.startswith(
        SECURITY_EVENT_PREFIXES
    ):
        reasons.append(entry.event_type)
    return tuple(reasons)


def is_failure(entry: AuditEntry) -> bool:
    """A failure is an event whose outcome says it did not go through: a denied
    action, a rejected or expired hold (FAILURE_OUTCOMES, for every event type)."""
    return entry.outcome in FAILURE_OUTCOMES


def select(entries: Iterable[AuditEntry], flt: EntryFilter, limit: int = 0) -> Iterator[AuditEntry]:
    """The entries (in seq order) matching `flt`, at most `limit` (0: all); stops reading
    once past the filter's end time."""
    sent = 0
    for entry in entries:
        if flt.past_end(entry):
            return
        if flt.matches(entry):
            yield entry
            sent += 1
            if limit and sent >= limit:
                return


def check_max_entries(max_entries: int) -> int:
    """The bound on each returned list: 0 means the default; InvalidRequest if too large."""
    if max_entries < 0 or max_entries > MAX_ENTRIES_LIMIT:
        raise InvalidRequest("max_entries", f"{max_entries} is not in 0..{MAX_ENTRIES_LIMIT}")
    return max_entries or DEFAULT_MAX_ENTRIES


@dataclass(frozen=True)
class Report:
    """Counts over a range of entries, and the most recent security events and failures."""

    total: int
    by_actor_type: Mapping[str, int]
    by_event_type: Mapping[str, int]
    by_outcome: Mapping[str, int]
    by_finding_type: Mapping[str, int]
    security_event_count: int
    failure_count: int
    security_events: tuple[AuditEntry, ...]
    failures: tuple[AuditEntry, ...]
    first_seq: int
    last_seq: int


@dataclass
class ReportBuilder:
    """Accumulates a Report one entry at a time, in constant memory: the lists keep only
    the `max_entries` most recent entries (fed in seq order)."""

    max_entries: int = DEFAULT_MAX_ENTRIES
    total: int = 0
    first_seq: int = 0
    last_seq: int = 0
    security_event_count: int = 0
    failure_count: int = 0
    by_actor_type: Counter[str] = field(default_factory=Counter)
    by_event_type: Counter[str] = field(default_factory=Counter)
    by_outcome: Counter[str] = field(default_factory=Counter)
    by_finding_type: Counter[str] = field(default_factory=Counter)
    _security: deque[AuditEntry] = field(init=False)
    _failures: deque[AuditEntry] = field(init=False)

    def __post_init__(self) -> None:
        self.max_entries = check_max_entries(self.max_entries)
        self._security = deque(maxlen=self.max_entries)
        self._failures = deque(maxlen=self.max_entries)

    def add(self, entry: AuditEntry) -> None:
        self.total += 1
        self.first_seq = self.first_seq or entry.seq
        self.last_seq = entry.seq
        self.by_actor_type[entry.actor_type] += 1
        self.by_event_type[entry.event_type] += 1
        self.by_outcome[entry.outcome] += 1
        if entry.event_type == EventType.ACTION_DECIDED:
            self.by_finding_type.update(finding_types(entry))
        if security_reasons(entry):
            self.security_event_count += 1
            self._security.append(entry)
        if is_failure(entry):
            self.failure_count += 1
            self._failures.append(entry)

    def report(self) -> Report:
        return Report(
            total=self.total,
            by_actor_type=dict(self.by_actor_type),
            by_event_type=dict(self.by_event_type),
            by_outcome=dict(self.by_outcome),
            by_finding_type=dict(self.by_finding_type),
            security_event_count=self.security_event_count,
            failure_count=self.failure_count,
            security_events=tuple(self._security),
            failures=tuple(self._failures),
            first_seq=self.first_seq,
            last_seq=self.last_seq,
        )


def build_report(
    entries: Iterable[AuditEntry], flt: EntryFilter, max_entries: int = DEFAULT_MAX_ENTRIES
) -> Report:
    """The report over the entries matching `flt` (entries in seq order)."""
    builder = ReportBuilder(max_entries)
    for entry in select(entries, flt):
        builder.add(entry)
    return builder.report()
