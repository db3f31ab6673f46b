"""Loop detection: an agent repeating one action type, or a few identical inputs.

Works on the session's most recent action types and fingerprints (newest first) as
returned by the store in the same round trip that recorded the current action, and
on the agent's most recent fingerprints over all its sessions: an agent that opens
a new session for every repetition (to escape the per-session loop and its pause)
is caught there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.domain.actions import ActionRequest, Finding
from gateway.domain.audit.canonical import canonical_json

INFINITE_LOOP = "infinite_loop"
STUCK_PATTERN = "stuck_pattern"
CROSS_SESSION_LOOP = "cross_session_loop"
SESSION_MARK = "\x1e"  # separates the session from the fingerprint in the agent's history


@dataclass(frozen=True)
class LoopSettings:
    loop_window: int = 5
    stuck_window: int = 5
    stuck_max_distinct: int = 2
    fingerprint_chars: int = 50
    agent_loop_window: int = 10  # 0: off

    @property
    def history_length(self) -> int:
        return max(self.loop_window, self.stuck_window)


def agent_mark(session_id: str, fingerprint: str) -> str:
    """An entry of the agent's history: the session and the action's fingerprint."""
    return f"{session_id}{SESSION_MARK}{fingerprint}"


def detect_cross_session_loop(agent_recent: Sequence[str], settings: LoopSettings) -> list[Finding]:
    """The agent's last `agent_loop_window` actions (newest first, `agent_mark`s) were
    one identical input, spread over more than one session (within one session the
    session detectors speak)."""
    window = agent_recent[: settings.agent_loop_window]
    if settings.agent_loop_window < 2 or len(window) < settings.agent_loop_window:
        return []
    sessions, prints = set(), set()
    for mark in window:
        session, _, printed = mark.partition(SESSION_MARK)
        sessions.add(session)
        prints.add(printed)
    if len(prints) != 1 or len(sessions) < 2:
        return []
    action_type = next(iter(prints)).split("\x1f", 1)[0]
    return [
        Finding(
            type=CROSS_SESSION_LOOP,
            severity=0.8,
            description=(
                f"the agent's last {len(window)} actions repeated one '{action_type}' input "
                f"across {len(sessions)} sessions"
            ),
            recommended_action="pause_and_review",
        )
    ]


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
