"""Detection through the real gateway: rate limits and their compact record, outcomes,
learned baselines, behaviour profiles, suspicious types and loops over sessions.

In-process gateways on the suite's Redis; time moves with the ManualClock.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import grpc
import pytest
import redis
from google.protobuf import duration_pb2

from agentgw.v1 import approvals_pb2, gateway_pb2
from clients.cli import main as cli_main
from gateway.domain.detect.engine import DetectionSettings
from gateway.domain.detect.rates import AgentLimits, RateSettings
from gateway.domain.verdicts import DEFAULT_RECOMMENDATIONS, Effect
from gateway.store.keys import KeySpace
from tests.harness import ManualClock, RunningGateway, token_for

SECRET = "hunter2-s3cr3t-value"


def entries(gw: RunningGateway) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gw.export_lines()]


def rates(agent: int = 0, session: int = 0, bytes_: int = 0) -> DetectionSettings:
    return DetectionSettings(rates=RateSettings(defaults=AgentLimits(agent, session, bytes_)))


def outcome(gw: RunningGateway, action_id: str, **fields: Any) -> gateway_pb2.ReportOutcomeResponse:
    message = gateway_pb2.Outcome(action_id=action_id, agent_id="agent-1", **fields)
    response: gateway_pb2.ReportOutcomeResponse = gw.gateway.ReportOutcome(
        message, metadata=gw.md("agent-1")
    )
    return response


# --- rates and quotas -------------------------------------------------------------


def test_over_the_rate_limit_is_denied_and_recorded_compactly(
    make_gateway: Callable[..., RunningGateway],
) -> None:
    clock = ManualClock()
    gw = make_gateway(clock, detection=rates(agent=3))
    agent = gw.agent()
    for n in range(3):
        assert agent.submit("search", session_id=f"s{n}", parameters={"n": n}).verdict == 1
    refused = agent.submit(
        "search",
        session_id="s9",
        action_id="over",
        parameters={"password": SECRET, "blob": "x" * 5000},
        reasoning=f"carry {SECRET}",
    )
    assert refused.verdict == gateway_pb2.VERDICT_DENY
    [finding] = refused.findings
    assert (finding.type, finding.recommended_action) == ("rate_limit", "rate_limit")
    assert finding.description == "3 actions by this agent in the last 60 s; the limit is 3"
    entry = entries(gw)[refused.audit_seq - 1]
    # The digest and size of what was refused, not its content.
    assert set(entry["details"]["parameters"]) == {"digest", "bytes"}
    assert entry["details"]["parameters"]["bytes"] > 5000
    assert entry["details"]["reasoning"] == ""
    assert SECRET not in json.dumps(entry) and "xxxxx" not in json.dumps(entry)
    # A refusal is not kept for idempotency: the same action_id is decided again,
    # and allowed once the window has room.
    again = agent.submit("search", session_id="s9", action_id="over", parameters={"n": 9})
    assert again.verdict == gateway_pb2.VERDICT_DENY and again.audit_seq > refused.audit_seq
    clock.advance(61)
    later = agent.submit("search", session_id="s9", action_id="over", parameters={"n": 9})
    assert later.verdict == gateway_pb2.VERDICT_ALLOW
    # Other agents have windows of their own.
    assert gw.agent("agent-2").submit("search", session_id="s").verdict == 1


def test_rate_limit_can_hold_instead_of_deny(make_gateway: Callable[..., RunningGateway]) -> None:
    effects = {**DEFAULT_RECOMMENDATIONS, "rate_limit": Effect.HOLD}
    gw = make_gateway(detection=rates(session=1), recommendations=effects)
    agent = gw.agent()
    agent.submit("search", session_id="s", parameters={"n": 1})
    held = agent.submit("search", session_id="s", action_id="h", parameters={"key": SECRET})
    assert held.verdict == gateway_pb2.VERDICT_HOLD
    [hold] = gw.approvals.ListHolds(
        approvals_pb2.ListHoldsRequest(), metadata=gw.md("approver-1")
    ).holds
    assert SECRET not in str(hold)
    # Held, it is decided once: the same action_id replays the hold.
    assert (
        agent.submit("search", session_id="s", action_id="h", parameters={"key": SECRET}).hold_id
        == held.hold_id
    )


def test_a_flood_of_large_requests_does_not_grow_redis_with_their_content(
    make_gateway: Callable[..., RunningGateway], raw: redis.Redis
) -> None:
    # With the default limits: one agent sends 300 requests of 50 KB (as large as an
    # audit entry allows) in the same instant. A handful fit the byte window; the rest
    # are refused and recorded by digest and size, so Redis grows by far less than
    # their content (15 MB).
    gw = make_gateway()
    agent = gw.agent()
    blob = "y" * 50_000
    before = int(raw.info("memory")["used_memory"])
    verdicts = [
        agent.submit("upload", session_id=f"f{n}", parameters={"a": n, "blob": blob}).verdict
        for n in range(300)
    ]
    grown = int(raw.info("memory")["used_memory"]) - before
    admitted = verdicts.count(gateway_pb2.VERDICT_ALLOW)
    assert 0 < admitted <= 2_000_000 // 50_000
    assert verdicts.count(gateway_pb2.VERDICT_DENY) == 300 - admitted
    assert grown < admitted * 50_000 * 2 + 300 * 4_000, grown


# --- outcomes ---------------------------------------------------------------------


def test_an_outcome_is_reported_once_by_its_agent_and_audited_redacted(
    gw: RunningGateway,
) -> None:
    decision = gw.agent().submit("search", session_id="s", action_id="done")
    response = outcome(
        gw,
        "done",
        session_id="s",
        success=False,
        error_type="AuthError",
        error=f"login failed with password={SECRET}",
        duration=duration_pb2.Duration(seconds=2, nanos=500_000_000),
        tokens=1200,
        cost=0.25,
    )
    entry = entries(gw)[response.audit_seq - 1]
    assert (entry["event_type"], entry["outcome"], entry["actor"]) == (
        "outcome_reported",
        "failure",
        "agent-1",
    )
    details = entry["details"]
    assert SECRET not in json.dumps(entry)
    assert details["error_type"] == "AuthError" and "[REDACTED]" in details["error"]
    assert (details["duration_seconds"], details["tokens"], details["cost"]) == (2.5, 1200, 0.25)
    assert (details["decision_seq"], details["verdict"]) == (decision.audit_seq, "allow")

    with pytest.raises(grpc.RpcError) as twice:
        outcome(gw, "done", success=True)
    assert twice.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already reported" in str(twice.value.details())
    with pytest.raises(grpc.RpcError) as unknown:
        outcome(gw, "never-submitted", success=True)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_agent_client_reports_an_outcome(gw: RunningGateway) -> None:
    agent = gw.agent()
    decision = agent.submit("search", session_id="s")
    seq = agent.report_outcome(
        decision,
        success=False,
        error="timeout",
        error_type="Timeout",
        duration_seconds=1.25,
        tokens=0,
    )
    details = entries(gw)[seq - 1]["details"]
    assert (details["tokens"], details["duration_seconds"], details["error"]) == (
        0,
        1.25,
        "timeout",
    )
    unreported = agent.report_outcome(agent.submit("search", session_id="t"), success=True)
    assert entries(gw)[unreported - 1]["details"]["tokens"] is None


def test_the_cli_reports_an_outcome_once(
    gw: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    gw.agent().submit("search", session_id="s", action_id="by-cli")
    flags = ["--server", gw.target, "--token", token_for("agent-1"), "--agent", "agent-1"]
    argv = ["outcome", "by-cli", *flags, "--failure", "--error", f"token={SECRET}"]
    assert cli_main([*argv, "--error-type", "Auth", "--tokens", "5", "--duration", "0.5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    details = entries(gw)[printed["audit_seq"] - 1]["details"]
    assert (details["error_type"], details["tokens"], details["duration_seconds"]) == (
        "Auth",
        5,
        0.5,
    )
    assert SECRET not in json.dumps(details)
    assert cli_main([*argv]) != 0
    assert "FAILED_PRECONDITION" in capsys.readouterr().err


def test_only_the_submitting_agent_reports_an_outcome(gw: RunningGateway) -> None:
    gw.agent().submit("search", session_id="s", action_id="mine")
    # agent-2 naming agent-1 is refused; naming itself, it does not see agent-1's action.
    with pytest.raises(grpc.RpcError) as impersonating:
        gw.gateway.ReportOutcome(
            gateway_pb2.Outcome(action_id="mine", agent_id="agent-1", success=True),
            metadata=gw.md("agent-2"),
        )
    assert impersonating.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as other:
        gw.gateway.ReportOutcome(
            gateway_pb2.Outcome(action_id="mine", agent_id="agent-2", success=True),
            metadata=gw.md("agent-2"),
        )
    assert other.value.code() == grpc.StatusCode.NOT_FOUND
    # Still reportable by its agent: the refusals wrote nothing.
    assert outcome(gw, "mine", success=True).audit_seq > 0


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"success": True, "error": "boom"}, "error: a successful outcome has no error"),
        ({"tokens": -1}, "tokens (count): must not be negative"),
        ({"cost": float("nan")}, "cost: must be a finite number >= 0"),
        ({"duration": duration_pb2.Duration(seconds=-1)}, "duration: must not be negative"),
        ({"error": "e" * 1001}, "error: length 1001 exceeds the limit of 1000"),
        ({"session_id": "other"}, "session_id: is not the session the action was submitted in"),
    ],
)
def test_a_malformed_outcome_is_refused_and_writes_nothing(
    gw: RunningGateway, fields: dict[str, Any], problem: str
) -> None:
    gw.agent().submit("search", session_id="s", action_id="act")
    head = gw.audit_head()
    with pytest.raises(grpc.RpcError) as refused:
        outcome(gw, "act", **fields)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in str(refused.value.details())
    assert gw.audit_head() == head
    assert outcome(gw, "act", success=True).audit_seq == head + 1


def test_concurrent_reports_of_one_outcome_record_one(gw: RunningGateway) -> None:
    gw.agent().submit("search", session_id="s", action_id="race")

    def report(_: int) -> str:
        try:
            outcome(gw, "race", success=True)
            return "ok"
        except grpc.RpcError as e:
            return str(e.code())

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(report, range(16)))
    assert results.count("ok") == 1
    assert results.count(str(grpc.StatusCode.FAILED_PRECONDITION)) == 15
    reported = [e for e in entries(gw) if e["event_type"] == "outcome_reported"]
    assert len(reported) == 1


# --- learned baselines ------------------------------------------------------------


def anomalies(decision: gateway_pb2.Decision) -> list[str]:
    return [f.description for f in decision.findings if f.type == "statistical_anomaly"]


def test_tokens_and_error_rate_outcomes_are_judged_at_the_next_submit(
    gw: RunningGateway,
) -> None:
    agent = gw.agent()
    first = agent.submit("search", session_id="s", action_id="t1")
    outcome(gw, first.action_id, success=True, tokens=12_000)
    flagged = agent.submit("search", session_id="s2", parameters={"n": 1})
    [description] = anomalies(flagged)
    assert description.startswith("tokens_per_action is 22.0 std devs from normal")
    assert flagged.verdict == gateway_pb2.VERDICT_ALLOW  # investigate: allowed
    # Judged once: the next action is not flagged again for the same outcome.
    assert not anomalies(agent.submit("search", session_id="s3", parameters={"n": 2}))

    for n in range(10):
        d = agent.submit("search", session_id=f"e{n}", parameters={"e": n})
        outcome(gw, d.action_id, success=False, error_type="Timeout")
    flagged = agent.submit("search", session_id="e-last", parameters={"e": "last"})
    assert any(a.startswith("error_rate is ") for a in anomalies(flagged))


def test_a_burst_is_flagged_against_the_learned_rate_and_does_not_teach_it(
    make_gateway: Callable[..., RunningGateway], raw: redis.Redis, key_prefix: str
) -> None:
    clock = ManualClock()
    gw = make_gateway(clock, detection=rates())
    agent = gw.agent()
    stats_key = KeySpace(key_prefix).agent_stats("agent-1")
    n = 0

    def minute(actions: int) -> list[gateway_pb2.Decision]:
        nonlocal n
        out = []
        for _ in range(actions):
            n += 1
            out.append(agent.submit("search", session_id=f"m{n}", parameters={"n": n}))
        clock.advance(60)
        return out

    for i in range(32):  # a mature baseline: 4 to 6 actions a minute
        minute(4 + i % 3)
    assert int(raw.hget(stats_key, "actions_per_minute:n") or 0) >= 30
    burst = minute(20)
    assert any(a.startswith("actions_per_minute is ") for a in anomalies(burst[-1]))
    learned = int(raw.hget(stats_key, "actions_per_minute:n") or 0)
    minute(5)  # closes the burst minute: judged anomalous, so not learned
    assert int(raw.hget(stats_key, "actions_per_minute:n") or 0) == learned
    second = minute(20)
    assert any(a.startswith("actions_per_minute is ") for a in anomalies(second[-1]))

    # A restart keeps what was learned: it is in Redis, not in the process.
    gw.stop()
    again = make_gateway(clock, detection=rates()).agent()
    restarted = [again.submit("search", session_id=f"r{i}", parameters={"r": i}) for i in range(20)]
    assert any(a.startswith("actions_per_minute is ") for a in anomalies(restarted[-1]))
    assert int(raw.hget(stats_key, "actions_per_minute:n") or 0) >= learned


# --- profiles, suspicious types, loops over sessions ------------------------------


def test_a_session_unlike_the_agents_profile_is_flagged_naming_new_types(
    make_gateway: Callable[..., RunningGateway],
) -> None:
    gw = make_gateway(detection=rates())
    agent = gw.agent()
    usual = ["search", "read_file", "list_dir"]
    for n in range(60):
        agent.submit(usual[n % 3], session_id=f"u{n // 6}", parameters={"n": n})
    odd = [
        agent.submit(["export_data", "upload_file"][n % 2], session_id="odd", parameters={"n": n})
        for n in range(10)
    ]
    [finding] = [f for f in odd[-1].findings if f.type == "profile_deviation"]
    assert "export_data" in finding.description and "upload_file" in finding.description
    assert finding.severity == pytest.approx(1.0)
    assert not [f for f in odd[-2].findings if f.type == "profile_deviation"]  # 9 < 10 actions
    # A session like the usual ones is not flagged.
    same = [agent.submit(usual[n % 3], session_id="same", parameters={"m": n}) for n in range(12)]
    assert not [f for f in same[-1].findings if f.type == "profile_deviation"]


@pytest.mark.parametrize("spelling", ["sendEmail", "Send-Email", "mail.SEND_EMAIL", "send.email"])
def test_renamed_suspicious_types_are_held(gw: RunningGateway, spelling: str) -> None:
    decision = gw.agent().submit(spelling, session_id="s")
    assert decision.verdict == gateway_pb2.VERDICT_HOLD
    [finding] = [f for f in decision.findings if f.type == "suspicious_action"]
    assert "send_email" in finding.description
    assert (finding.severity, finding.recommended_action) == (
        pytest.approx(0.7),
        "require_approval",
    )


def test_a_loop_spread_over_new_sessions_is_caught(gw: RunningGateway) -> None:
    agent = gw.agent()
    decisions = [
        agent.submit("fetch_page", session_id=f"fresh-{n}", parameters={"url": "/same"})
        for n in range(10)
    ]
    assert all(d.verdict == gateway_pb2.VERDICT_ALLOW for d in decisions[:9])
    last = decisions[-1]
    assert last.verdict == gateway_pb2.VERDICT_HOLD
    [finding] = [f for f in last.findings if f.type == "cross_session_loop"]
    assert finding.description == (
        "the agent's last 10 actions repeated one 'fetch_page' input across 10 sessions"
    )
    # Its session is paused: the next action there is held too.
    after = agent.submit("search", session_id="fresh-9", parameters={"q": 1})
    assert after.verdict == gateway_pb2.VERDICT_HOLD


def test_detectors_can_be_turned_off(make_gateway: Callable[..., RunningGateway]) -> None:
    base = DetectionSettings()
    detection = replace(
        base,
        anomaly=replace(base.anomaly, enabled=False),
        suspicious=replace(base.suspicious, enabled=False),
        loops=replace(base.loops, agent_loop_window=0),
    )
    gw = make_gateway(detection=detection)
    agent = gw.agent()
    decisions = [
        agent.submit("sendEmail", session_id=f"x{n}", parameters={"same": 1}) for n in range(15)
    ]
    assert all(not d.findings for d in decisions)
    assert all(d.verdict == gateway_pb2.VERDICT_ALLOW for d in decisions)
