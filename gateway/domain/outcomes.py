"""What an agent reports after carrying out an action: success or failure, the
error, how long it took, the tokens and the cost. Pure values and their checks."""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.domain.validation import require_identifier
from gateway.errors import InvalidRequest

MAX_ERROR_CHARS = 1000
MAX_ERROR_TYPE_CHARS = 128
MAX_DURATION_SECONDS = 366 * 86400.0


@dataclass(frozen=True)
class Outcome:
    action_id: str
    agent_id: str
    session_id: str  # "" when not given
    success: bool
    error_type: str = ""
    error: str = ""
    duration_seconds: float = 0.0
    tokens: int | None = None  # None: not reported
    cost: float = 0.0


def validate_outcome(outcome: Outcome, max_id_chars: int) -> None:
    require_identifier("action_id", outcome.action_id, max_id_chars)
    require_identifier("agent_id", outcome.agent_id, max_id_chars)
    if outcome.session_id:
        require_identifier("session_id", outcome.session_id, max_id_chars)
    for field, value, limit in (
        ("error", outcome.error, MAX_ERROR_CHARS),
        ("error_type", outcome.error_type, MAX_ERROR_TYPE_CHARS),
    ):
        if len(value) > limit:
            raise InvalidRequest(field, f"length {len(value)} exceeds the limit of {limit}")
    if outcome.success and (outcome.error or outcome.error_type):
        raise InvalidRequest("error", "a successful outcome has no error")
    if not (0 <= outcome.duration_seconds <= MAX_DURATION_SECONDS):
        raise InvalidRequest("duration", f"must be from 0 to {MAX_DURATION_SECONDS:.0f} seconds")
    if outcome.tokens is not None and outcome.tokens < 0:
        raise InvalidRequest("tokens (count)", "must not be negative")
    if not (math.isfinite(outcome.cost) and outcome.cost >= 0):
        raise InvalidRequest("cost", "must be a finite number >= 0")
