"""What a commit changes besides the log: typed intents, and how commit.lua gets them.

Services say what they mean (record a decision, resolve a hold, lift a session's
pause, record an outcome, quarantine or release an agent, acknowledge an alert,
rotate the signing key); the audit writer appends the intent's entries and
applies the intent in the same `commit.lua` call, which checks its precondition
(the action not decided yet, the hold still pending, the session still paused,
the outcome not reported yet) and
writes nothing unless every check of the batch holds.

Every key an intent checks or writes is in the `{audit}` slot, so a commit is one
script call on one node, also on Redis Cluster. One write is not: the claim marker
in the agent's slot (`{a:<agent>}`) that tells a resubmission the action is decided.
On a single Redis node the script writes it too; on a cluster the writer sets it
right after the commit (`Projection`). It is a shortcut, never the authority: until
it lands a resubmission finds the claim pending, looks up the decided record, and
replays it (docs/operations.md, "Redis Cluster").
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from gateway.domain.actions import ActionRequest, Decision
from gateway.domain.alerts.model import Alert, alert_to_json
from gateway.domain.holds import Hold, HoldStatus, Quarantine, SessionPause, with_resolution_seq
from gateway.store.keys import KeySpace
from gateway.store.records import (
    decision_from_json,
    decision_to_json,
    hold_to_json,
    pause_to_json,
    quarantine_to_json,
)

if TYPE_CHECKING:
    from gateway.domain.audit.entry import AuditEntry
    from gateway.domain.audit.keys import Signer

DIGEST_CHARS = 64


@dataclass(frozen=True)
class Lifetimes:
    """How long each kind of record lives in Redis (milliseconds); see
    docs/operations.md for every key family and its bound."""

    # A claim outlives a slow audit append (the writer retries for 10 s), and is short
    # enough that a claim left by a crashed gateway soon stops blocking its retry.
    claim_ms: int = 15_000
    decision_ms: int = 24 * 3600 * 1000  # idempotency: a resubmission gets the decision
    session_idle_ms: int = 24 * 3600 * 1000  # history and pause of a session at rest
    resolved_hold_ms: int = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class Claim:
    """One call's claim on an action_id: the digest of the request it stands for and a
    token of the call, so that the call (and only it) recognises its own claim, also
    when the client library resends the claiming script after losing its reply."""

    digest: str  # 64 hex digits: `request_digest` of the request
    token: str

    @classmethod
    def new(cls, digest: str) -> Claim:
        return cls(digest, secrets.token_hex(8))

    @property
    def value(self) -> str:
        """'p|<digest>|<token>' while the call decides (observe.lua reads it)."""
        return f"p|{self.digest}|{self.token}"

    @property
    def marker(self) -> str:
        """'d|<digest>|' once the action is decided: the decision is in `decided`."""
        return f"d|{self.digest}|"


@dataclass(frozen=True)
class DecidedRecord:
    """The `decided` record of an action: the digest of the request and its decision."""

    digest: str
    decision_json: str

    def encode(self) -> str:
        return f"{self.digest}|{self.decision_json}"

    @property
    def decision(self) -> Decision:
        return decision_from_json(json.loads(self.decision_json))

    @classmethod
    def decode(cls, value: str) -> DecidedRecord:
        return cls(value[:DIGEST_CHARS], value[DIGEST_CHARS + 1 :])


@dataclass(frozen=True)
class RecordDecision:
    """A new decision: written once per action_id, with its hold and the session's
    pause when it holds the action and pauses the session."""

    request: ActionRequest
    claim: Claim
    decision: Decision
    hold: Hold | None = None


@dataclass(frozen=True)
class ResolveHold:
    """A pending hold resolved (approved, rejected or expired), or given one more
    approval towards its quorum: `hold` as it is after. The commit checks that the
    hold is still pending with `approvals_before` approvals, so that two approvals
    at once never count as one."""

    hold: Hold
    approvals_before: int = 0


@dataclass(frozen=True)
class LiftPause:
    """A paused session resumed by an approver."""

    agent_id: str
    session_id: str


@dataclass(frozen=True)
class RecordOutcome:
    """An action's outcome, reported once: a second report of it fails."""

    agent_id: str
    action_id: str


@dataclass(frozen=True)
class QuarantineAgent:
    """An agent put in quarantine: refused if it is already."""

    quarantine: Quarantine


@dataclass(frozen=True)
class ReleaseAgent:
    """A quarantined agent released: refused if it is not quarantined."""

    agent_id: str


@dataclass(frozen=True)
class AcknowledgeAlert:
    """An alert acknowledged (`alert` as it is after): refused unless it is still
    active, so two operators acknowledging at once get one winner."""

    alert: Alert
    feed_max: int = 10_000


@dataclass(frozen=True)
class RotateKey:
    """The entries are signed by the current key; every later entry by `signer`."""

    signer: Signer


Intent = (
    RecordDecision
    | ResolveHold
    | LiftPause
    | RecordOutcome
    | QuarantineAgent
    | ReleaseAgent
    | AcknowledgeAlert
    | RotateKey
    | None
)


@dataclass(frozen=True)
class Projection:
    """A write outside the `{audit}` slot that follows a commit on a cluster."""

    key: str
    value: str
    px: int


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class KeyIndex:
    """commit.lua's KEYS: the five audit keys first, then each key once, by index."""

    def __init__(self, keys: KeySpace) -> None:
        self._index: dict[str, int] = {
            keys.audit_head: 1,
            keys.audit_entries: 2,
            keys.audit_tree: 3,
            keys.audit_keys: 4,
            keys.audit_sealed: 5,
        }

    def __call__(self, key: str) -> int:
        return self._index.setdefault(key, len(self._index) + 1)

    @property
    def keys(self) -> list[str]:
        return list(self._index)


class Values:
    """commit.lua's string values (records, hold and alert JSON), each an argument of
    its own after the entry lines, by index: no value is escaped into the batch's
    JSON and parsed out of it again."""

    def __init__(self) -> None:
        self.list: list[str] = []

    def __call__(self, value: str) -> int:
        self.list.append(value)
        return len(self.list)


class IntentWriter:
    """Renders intents into commit.lua items (and, on a cluster, projections).

    `single_node`: every key is on one server, so the script may also write the
    claim marker; on a cluster it is returned as a `Projection` instead.
    """

    def __init__(self, keys: KeySpace, lifetimes: Lifetimes, single_node: bool) -> None:
        self.keys = keys
        self.lifetimes = lifetimes
        self.single_node = single_node

    def render(
        self, intent: Intent, entries: Sequence[AuditEntry], index: KeyIndex, values: Values
    ) -> tuple[dict[str, Any], list[Projection]]:
        """The script item for `intent` (whose entries are `entries`, seq known)."""
        item: dict[str, Any] = {"kind": "none"}
        if isinstance(intent, RecordDecision):
            return self._decision(item, intent, entries[0].seq, index, values)
        if isinstance(intent, ResolveHold):
            hold = intent.hold
            resolved = hold.status is not HoldStatus.PENDING
            item |= {
                "kind": "resolve",
                "hold": index(self.keys.hold(hold.hold_id)),
                "json": values(dumps(hold_to_json(with_resolution_seq(hold, entries[0].seq)))),
                "status": hold.status.value,
                "approvals_before": str(intent.approvals_before),
                "approvals": str(len(hold.approvals)),
                "resolved": resolved,
                "px": self.lifetimes.resolved_hold_ms,
                "pending": index(self.keys.pending_holds),
                "hold_id": hold.hold_id,
                "channel": self.keys.hold_resolved_channel,
                "event": f"{'resolved' if resolved else 'approved'}:{hold.hold_id}",
            }
        elif isinstance(intent, RecordOutcome):
            item |= {
                "kind": "create",
                "record": index(self.keys.outcome(intent.agent_id, intent.action_id)),
                "value": values(str(entries[0].seq)),
                "px": self.lifetimes.decision_ms,
            }
        elif isinstance(intent, LiftPause):
            item |= {
                "kind": "remove",
                "record": index(self.keys.session_pause(intent.agent_id, intent.session_id)),
                "index": index(self.keys.paused_sessions),
                "member": f"{intent.agent_id}|{intent.session_id}",
            }
        elif isinstance(intent, QuarantineAgent):
            record = replace(intent.quarantine, audit_seq=entries[0].seq)
            item |= {
                "kind": "create",
                "record": index(self.keys.quarantine(record.agent_id)),
                "value": values(dumps(quarantine_to_json(record))),
                "px": 0,
            }
        elif isinstance(intent, ReleaseAgent):
            item |= {
                "kind": "remove",
                "record": index(self.keys.quarantine(intent.agent_id)),
            }
        elif isinstance(intent, AcknowledgeAlert):
            alert = replace(intent.alert, acknowledgement_audit_seq=entries[0].seq)
            item |= {
                "kind": "acknowledge",
                "record": index(self.keys.alert(alert.alert_id)),
                "json": values(dumps(alert_to_json(alert))),
                "index": index(self.keys.active_alerts),
                "member": alert.alert_id,
                "feed": index(self.keys.alert_feed),
                "feed_max": str(intent.feed_max),
            }
        return item, []

    def _decision(
        self,
        item: dict[str, Any],
        intent: RecordDecision,
        seq: int,
        index: KeyIndex,
        values: Values,
    ) -> tuple[dict[str, Any], list[Projection]]:
        k, life = self.keys, self.lifetimes
        request, claim = intent.request, intent.claim
        decision = replace(intent.decision, audit_seq=seq)
        record = DecidedRecord(claim.digest, dumps(decision_to_json(decision)))
        item |= {
            "kind": "decide",
            "record": index(k.decided(request.agent_id, request.action_id)),
            "value": values(record.encode()),
            "px": life.decision_ms,
        }
        projections = []
        marker = Projection(
            k.claim(request.agent_id, request.action_id), claim.marker, life.decision_ms
        )
        if self.single_node:
            item |= {"marker": index(marker.key), "marker_value": marker.value}
        else:
            projections.append(marker)
        hold = intent.hold
        if hold is not None:
            pending_ms = max(0, int((hold.expires_at - hold.created_at) * 1000))
            item["hold"] = {
                "key": index(k.hold(hold.hold_id)),
                "json": values(dumps(hold_to_json(replace(hold, audit_seq=seq)))),
                "status": hold.status.value,
                # Bounded even if no gateway ever resolves it (the sweeper does, on time).
                "px": pending_ms + life.resolved_hold_ms,
                "pending": index(k.pending_holds),
                "expires_at": repr(hold.expires_at),
                "hold_id": hold.hold_id,
                "channel": k.hold_resolved_channel,
                "event": f"held:{hold.hold_id}",
            }
            if hold.paused_session:
                item["pause"] = {
                    "key": index(k.session_pause(request.agent_id, request.session_id)),
                    "value": values(dumps(pause_to_json(SessionPause.by(hold)))),
                    "px": life.session_idle_ms,
                    "index": index(k.paused_sessions),
                    "member": f"{request.agent_id}|{request.session_id}",
                    "score": repr(hold.created_at),
                }
        return item, projections
