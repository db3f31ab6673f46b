"""Loop detection: an agent repeating one action type, or a few identical inputs.

Works on the session's most recent action types and fingerprints (newest first) as
returned by the store in the same round trip that recorded the current action.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.domain.actions import ActionRequest, Finding
from gateway.domain.audit.canonical import canonical_json

INFINITE_LOOP = "infinite_loop"
STUCK_PATTERN = "stuck_pattern"


@dataclass(frozen=True)
class LoopSettings:
    loop_window: int = 5
    stuck_window: int = 5
    stuck_max_distinct: int = 2
    fingerprint_chars: int = 50

    @property
    def history_length(self) -> int:
        return max(self.loop_window, self.stuck_window)


def fingerprint(request: ActionRequest, settings: LoopSettings) -> str:
    """The action type plus the first characters of its canonical-JSON parameters."""
    text = canonical_json(dict(request.parameters)).decode("utf-8")
    return f"{request.action_type}\x1f{text[: settings.fingerprint_chars]}"


def detect_loops(
    recent_types: Sequence[str], recent_fingerprints: Sequence[str], settings: LoopSettings
) -> list[Finding]:
    findings: list[Finding] = []
    window = recent_types[: settings.loop_window]
    if len(window) >= settings.loop_window and len(set(window)) == 1:
        findings.append(
            Finding(
                type=INFINITE_LOOP,
                severity=0.8,
                description=(
                    f"the last {settings.loop_window} actions of this session were all "
                    f"'{window[0]}'"
                ),
                recommended_action="pause_and_review",
            )
        )
    prints = recent_fingerprints[: settings.stuck_window]
    distinct = len(set(prints))
    if len(prints) >= settings.stuck_window and distinct <= settings.stuck_max_distinct:
        findings.append(
            Finding(
                type=STUCK_PATTERN,
                severity=0.6,
                description=(
                    f"the last {settings.stuck_window} actions of this session repeat "
                    f"{distinct} distinct input(s)"
                ),
                recommended_action="inject_guidance",
            )
        )
    return findings
