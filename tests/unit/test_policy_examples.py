"""The example policies in examples/: they load with the real loader and decide as their
comments say."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.domain.actions import ActionRequest, Verdict
from gateway.domain.detect.suspicious import SuspiciousSettings, detect_suspicious
from gateway.domain.policy import Policy, evaluate_rules, load_policy_file

ROOT = Path(__file__).resolve().parents[2]
ALLOWLIST = ROOT / "examples" / "policy-allowlist.yaml"


def allowlist() -> Policy:
    return load_policy_file(ALLOWLIST)


def request(
    action_type: str, resource: str = "", parameters: dict[str, Any] | None = None
) -> ActionRequest:
    return ActionRequest(
        action_id="act-1",
        agent_id="agent-1",
        session_id="sess-1",
        action_type=action_type,
        resource=resource,
        parameters=parameters or {},
    )


def test_allowlist_loads_and_denies_by_default() -> None:
    policy = allowlist()
    assert policy.version == 1
    assert policy.default_verdict is Verdict.DENY
    assert policy.source == str(ALLOWLIST)
    assert [rule.name for rule in policy.rules] == [
        "allow-search",
        "allow-workspace-reads",
        "hold-workspace-writes",
        "hold-outbound-email",
        "hold-small-payments",
    ]
    assert all(rule.description for rule in policy.rules)


@pytest.mark.parametrize(
    ("action_type", "resource", "parameters", "verdict", "rule"),
    [
        # unknown, renamed or never listed: denied
        ("custom_tool", "", None, Verdict.DENY, None),
        ("delete_everything", "", None, Verdict.DENY, None),
        ("fs.read_and_delete", "/workspace/a.txt", None, Verdict.DENY, None),
        ("", "", None, Verdict.DENY, None),
        # listed reads: allowed, case-insensitively, inside the workspace
        ("search", "", None, Verdict.ALLOW, "allow-search"),
        ("WEB.SEARCH", "", None, Verdict.ALLOW, "allow-search"),
        ("read_file", "/workspace/notes.md", None, Verdict.ALLOW, "allow-workspace-reads"),
        ("list_files", "/workspace/src/app", None, Verdict.ALLOW, "allow-workspace-reads"),
        ("Read_File", "/workspace/", None, Verdict.ALLOW, "allow-workspace-reads"),
        ("read_file", "/etc/passwd", None, Verdict.DENY, None),
        ("read_file", "/workspace", None, Verdict.DENY, None),
        # risky ones: held where the rule says, denied elsewhere
        ("write_file", "/workspace/out.txt", None, Verdict.HOLD, "hold-workspace-writes"),
        ("write_file", "/home/user/.ssh/authorized_keys", None, Verdict.DENY, None),
        ("send_email", "", {"to": "a@example.com"}, Verdict.HOLD, "hold-outbound-email"),
        (
            "create_payment",
            "",
            {"amount": 120.0, "currency": "EUR"},
            Verdict.HOLD,
            "hold-small-payments",
        ),
        ("create_payment", "", {"amount": 5000.0, "currency": "USD"}, Verdict.DENY, None),
        ("create_payment", "", {"amount": 120.0, "currency": "GBP"}, Verdict.DENY, None),
        ("create_payment", "", {"amount": "120", "currency": "USD"}, Verdict.DENY, None),
        ("create_payment", "", {"currency": "USD"}, Verdict.DENY, None),
    ],
)
def test_allowlist_decides_as_its_comments_say(
    action_type: str,
    resource: str,
    parameters: dict[str, Any] | None,
    verdict: Verdict,
    rule: str | None,
) -> None:
    result = evaluate_rules(allowlist(), request(action_type, resource, parameters))
    assert result.verdict is verdict
    assert result.matched_rules == ((rule,) if rule else ())
    if rule is None:
        assert result.reason == "no rule matched; default deny"


def test_allowlist_allows_exact_names_only() -> None:
    # The example's advice: no wildcards in an allow rule.
    for rule in allowlist().rules:
        if rule.verdict is Verdict.ALLOW:
            assert rule.match.action_type is not None, rule.name
            for pattern in rule.match.action_type.patterns:
                assert not set(pattern) & set("*?["), (rule.name, pattern)


def test_what_the_allowlist_allows_is_not_held_by_the_suspicious_detector() -> None:
    for rule in allowlist().rules:
        if rule.verdict is Verdict.ALLOW and rule.match.action_type is not None:
            for action_type in rule.match.action_type.patterns:
                assert detect_suspicious(action_type, SuspiciousSettings()) == [], action_type


def test_policy_doc_points_to_the_allowlist_example() -> None:
    doc = (ROOT / "docs" / "policy.md").read_text(encoding="utf-8")
    section = doc.split("## Choosing a policy: permissive default or allowlist", 1)[1]
    assert "examples/policy-allowlist.yaml" in section
