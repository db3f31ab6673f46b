"""Values that flow through one decision: the request, findings, verdicts, decisions.

Pure data, no I/O. The wire layer converts protobuf messages to and from these;
policy, detection, holds and audit take and return them.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class Verdict(enum.IntEnum):
    """Ordered by strictness: the larger value wins when verdicts combine."""

    ALLOW = 1
    HOLD = 2
    DENY = 3

    @classmethod
    def strictest(cls, *verdicts: Verdict) -> Verdict:
        return max(verdicts, default=cls.ALLOW)


class ResolutionStatus(enum.Enum):
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


@dataclass(frozen=True)
class ActionRequest:
    action_id: str
    agent_id: str
    session_id: str
    action_type: str
    resource: str = ""
    # JSON-compatible values (dict/list/str/float/bool/None) as decoded from a
    # google.protobuf.Struct; numbers are floats.
    parameters: Mapping[str, Any] = field(default_factory=dict)
    reasoning: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    type: str
    severity: float
    description: str
    recommended_action: str


@dataclass(frozen=True)
class Resolution:
    status: ResolutionStatus
    decided_by: str
    reason: str
    decided_at: float  # unix seconds
    audit_seq: int


@dataclass(frozen=True)
class Approval:
    """One approver's approval of a hold that needs a quorum."""

    approver: str
    reason: str
    approved_at: float  # unix seconds
    audit_seq: int = 0


@dataclass(frozen=True)
class Decision:
    action_id: str
    session_id: str
    verdict: Verdict
    reason: str
    findings: tuple[Finding, ...] = ()
    matched_rules: tuple[str, ...] = ()
    hold_id: str = ""
    expires_at: float = 0.0  # unix seconds; 0 when not held
    resolution: Resolution | None = None
    audit_seq: int = 0
    approvals: tuple[Approval, ...] = ()
    approvals_required: int = 1
    trace_id: str = ""  # W3C trace id (32 hex) of the Submit that made it


def request_digest(request: ActionRequest, key: bytes) -> str:
    """What an action_id stands for: a keyed hash (BLAKE2b-256 in its MAC mode, hex; `key`
    at most 64 bytes) of the request as submitted, before redaction: agent, session,
    action type, resource, parameters, reasoning and labels. A resubmission with the
    same digest is the same action; any other content under the same action_id is a
    different one.

    Keyed, because the digest is stored beside the redacted request: an unkeyed hash
    of a short secret (a PIN) could be found by trying every value. The key is shared
    by every replica (see `gateway.services.decisions.digest_key`).
    """
    return content_digest(request_content(request), key)


def request_content(request: ActionRequest) -> bytes:
    """The request as digested: canonical JSON of everything it says. Its length is
    the request's size for the byte quotas."""
    content = json.dumps(
        [
            request.agent_id,
            request.session_id,
            request.action_type,
            request.resource,
            dict(request.parameters),
            request.reasoning,
            dict(request.labels),
        ],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return content.encode("utf-8", "surrogatepass")


def content_digest(content: bytes, key: bytes) -> str:
    return hashlib.blake2b(content, key=key, digest_size=32).hexdigest()
