"""The policy loader: the documented format loads, and every mistake names its line."""

from __future__ import annotations

import hashlib
import json
import re
import textwrap
from pathlib import Path

import pytest

from gateway.domain.actions import ActionRequest, Verdict
from gateway.domain.policy import default_policy, evaluate_rules, load_policy, load_policy_file
from gateway.domain.policy.model import Operator
from gateway.errors import ConfigError

DOC = Path(__file__).resolve().parents[2] / "docs" / "policy.md"


def policy_text(body: str) -> str:
    return textwrap.dedent(body).lstrip("\n")


def load_error(body: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_policy(policy_text(body), "policy.yaml")
    return str(caught.value)


# -- the documentation -------------------------------------------------------------------


def doc_example() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Complete example", 1)[1]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


def doc_table_rows() -> list[tuple[str, ...]]:
    section = DOC.read_text(encoding="utf-8").split("With this policy:", 1)[1]
    rows = []
    for line in section.split("\n\n", 2)[1].splitlines()[2:]:
        cells = tuple(cell.strip().strip("`") for cell in line.strip().strip("|").split("|"))
        rows.append(cells)
    return rows


def test_doc_example_loads_and_uses_every_key() -> None:
    policy = load_policy(doc_example(), "docs/policy.md")
    assert policy.version == 1
    assert policy.default_verdict is Verdict.ALLOW
    assert [rule.name for rule in policy.rules] == [
        "deny-prod-drops",
        "hold-large-payments",
        "deny-unknown-currency",
        "allow-internal-email",
        "hold-other-email",
        "allow-report-files",
        "deny-everything-else-in-prod",
    ]
    assert policy.rules[4].reason == "matched rule hold-other-email"
    assert [rule.quorum for rule in policy.rules] == [1, 2, 1, 1, 1, 1, 1]


def test_doc_table_has_rows() -> None:
    assert len(doc_table_rows()) >= 10


@pytest.mark.parametrize("row", doc_table_rows(), ids=lambda row: "|".join(row[:3]))
def test_doc_table_row_is_what_the_example_decides(row: tuple[str, ...]) -> None:
    action_type, agent, resource, labels, parameters, expected = row
    request = ActionRequest(
        action_id="a-1",
        agent_id=agent,
        session_id="s-1",
        action_type=action_type,
        resource=resource,
        labels=json.loads(labels) if labels else {},
        parameters=json.loads(parameters, parse_int=float) if parameters else {},
    )
    result = evaluate_rules(load_policy(doc_example(), "docs/policy.md"), request)
    found = re.fullmatch(r"(allow|hold|deny) \((?:`([^`]+)`|default)\)", expected)
    assert found is not None, expected
    assert result.verdict is Verdict[found.group(1).upper()]
    assert result.matched_rules == ((found.group(2),) if found.group(2) else ())


def test_doc_error_example_is_the_real_message() -> None:
    text = DOC.read_text(encoding="utf-8")
    documented = text.split("```text\n", 1)[1].split("\n", 1)[0]
    rules = "\n".join(f"  - name: r{i}\n    verdict: allow" for i in range(2))
    body = (
        f"version: 1\ndefault_verdict: allow\nrules:\n{rules}\n"
        "  - name: r2\n    verdict: hold\n    match:\n      parameters:\n"
        "        - path: amount\n          value: 1\n          op: gte=\n"
    )
    assert body.splitlines()[13] == "          op: gte="
    with pytest.raises(ConfigError) as caught:
        load_policy(body, "policy.yaml")
    assert str(caught.value) == documented


# -- what a valid policy becomes -----------------------------------------------------------


def test_policy_records_source_and_sha256_digest_of_text() -> None:
    text = "version: 1\ndefault_verdict: deny\nrules: []\n"
    policy = load_policy(text, "p.yaml")
    assert policy.source == "p.yaml"
    assert policy.digest == hashlib.sha256(text.encode()).hexdigest()
    assert policy.default_verdict is Verdict.DENY
    assert policy.rules == ()


def test_rule_defaults_reason_description_and_match_all() -> None:
    policy = load_policy(
        policy_text("""
            version: 1
            default_verdict: allow
            rules:
              - name: everything
                verdict: hold
        """),
        "p.yaml",
    )
    rule = policy.rules[0]
    assert (rule.description, rule.reason, rule.verdict) == (
        "",
        "matched rule everything",
        Verdict.HOLD,
    )
    assert rule.match.action_type is None and rule.match.parameters == ()


def test_numbers_in_values_become_floats_and_lists_tuples() -> None:
    policy = load_policy(
        policy_text("""
            version: 1
            default_verdict: allow
            rules:
              - name: r
                verdict: deny
                match:
                  parameters:
                    - {path: a, op: eq, value: 0x10}
                    - {path: b, op: in, value: [1, "x", null, true, {k: [2]}]}
        """),
        "p.yaml",
    )
    first, second = policy.rules[0].match.parameters
    assert first.value == 16.0 and type(first.value) is float
    assert first.op is Operator.EQ
    assert isinstance(second.value, tuple)
    assert second.value[:4] == (1.0, "x", None, True)
    assert dict(second.value[4]) == {"k": (2.0,)}  # type: ignore[arg-type]


def test_parameter_path_segments_mark_list_indexes() -> None:
    policy = load_policy(
        policy_text("""
            version: 1
            default_verdict: allow
            rules:
              - name: r
                verdict: deny
                match:
                  parameters:
                    - {path: items.10.sku, op: exists, value: true}
        """),
        "p.yaml",
    )
    segments = policy.rules[0].match.parameters[0].segments
    assert [(s.key, s.index) for s in segments] == [("items", None), ("10", 10), ("sku", None)]


def test_default_policy_is_the_shipped_file() -> None:
    policy = default_policy()
    assert policy.default_verdict is Verdict.ALLOW
    assert [rule.name for rule in policy.rules] == ["hold-suspicious"]
    assert policy.rules[0].verdict is Verdict.HOLD
    assert "human approval" in policy.rules[0].reason
    shipped = Path(__file__).resolve().parents[2] / "gateway" / "domain" / "policy" / "default.yaml"
    assert policy.digest == hashlib.sha256(shipped.read_bytes()).hexdigest()


def test_version_is_read_as_a_yaml_integer() -> None:
    assert load_policy("version: 0x1\ndefault_verdict: allow\nrules: []\n", "p.yaml").version == 1


def test_load_policy_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\ndefault_verdict: hold\nrules: []\n", encoding="utf-8")
    assert load_policy_file(path).source == str(path)
    path.write_text("version: 2\ndefault_verdict: hold\nrules: []\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:1: version: "):
        load_policy_file(path)


def test_load_policy_file_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read policy"):
        load_policy_file(tmp_path / "absent.yaml")


def test_load_policy_file_rejects_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(b"version: 1\n# \xff\n")
    with pytest.raises(ConfigError, match="cannot read policy"):
        load_policy_file(path)


# -- errors name the line ------------------------------------------------------------------

HEADER = "version: 1\ndefault_verdict: allow\nrules:\n"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            "",
            "policy.yaml:1: policy is empty",
            id="empty-document",
        ),
        pytest.param(
            "# only a comment\n",
            "policy.yaml:1: policy is empty",
            id="comment-only",
        ),
        pytest.param(
            "\n\n- a\n- b\n",
            "policy.yaml:3: policy must be a mapping with keys version, default_verdict, "
            "rules, got a list",
            id="top-level-list",
        ),
        pytest.param(
            "version: 1\nrules: [\n  - name: a\n",
            "policy.yaml:3: invalid YAML:",
            id="yaml-syntax",
        ),
        pytest.param(
            "version: 1\ndefault_verdict: allow\nrules: []\n---\nversion: 1\n",
            "policy.yaml:4: invalid YAML: but found another document",
            id="two-documents",
        ),
        pytest.param(
            "version: 1\ndefault_verdict: allow\n\nrules: \x07\n",
            "policy.yaml:4: invalid YAML: special characters are not allowed",
            id="control-character",
        ),
        pytest.param(
            "version: 1\nrules: []\n",
            "policy.yaml:1: policy: missing required key 'default_verdict'",
            id="missing-default-verdict",
        ),
        pytest.param(
            "\nversion: 2\ndefault_verdict: allow\nrules: []\n",
            "policy.yaml:2: version: unsupported version '2' (supported: 1)",
            id="unsupported-version",
        ),
        pytest.param(
            "version: '1'\ndefault_verdict: allow\nrules: []\n",
            "policy.yaml:1: version: unsupported version '1' (supported: 1)",
            id="version-as-string",
        ),
        pytest.param(
            "version: 1\ndefault_verdict: maybe\nrules: []\n",
            "policy.yaml:2: default_verdict: unknown verdict 'maybe' "
            "(expected one of allow, hold, deny)",
            id="bad-default-verdict",
        ),
        pytest.param(
            "version: 1\ndefault_verdict: allow\nrules: []\nrule: []\n",
            "policy.yaml:4: rule: unknown key (expected one of version, default_verdict, rules)",
            id="unknown-top-level-key",
        ),
        pytest.param(
            "version: 1\ndefault_verdict: allow\nrules: []\nversion: 1\n",
            "policy.yaml:4: version: duplicate key",
            id="duplicate-top-level-key",
        ),
        pytest.param(
            HEADER + "  name: a\n",
            "policy.yaml:4: rules: expected a list, got a mapping",
            id="rules-not-a-list",
        ),
        pytest.param(
            HEADER + "  - just-a-name\n",
            "policy.yaml:4: rules[0]: expected a mapping, got a string",
            id="rule-not-a-mapping",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n  - name: b\n    verdcit: deny\n",
            "policy.yaml:7: rules[1].verdcit: unknown key (expected one of name, description, "
            "verdict, reason, match, quorum)",
            id="unknown-rule-key",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n  - name: b\n    reason: x\n",
            "policy.yaml:6: rules[1]: missing required key 'verdict'",
            id="missing-verdict",
        ),
        pytest.param(
            HEADER + "  - verdict: allow\n",
            "policy.yaml:4: rules[0]: missing required key 'name'",
            id="missing-name",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: block\n",
            "policy.yaml:5: rules[0].verdict: unknown verdict 'block' "
            "(expected one of allow, hold, deny)",
            id="unknown-verdict",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: ALLOW\n",
            "policy.yaml:5: rules[0].verdict: unknown verdict 'ALLOW'",
            id="verdict-is-lowercase",
        ),
        pytest.param(
            HEADER + "  - name: a b\n    verdict: allow\n",
            "policy.yaml:4: rules[0].name: invalid rule name 'a b'",
            id="bad-rule-name",
        ),
        pytest.param(
            HEADER + "  - name: 42\n    verdict: allow\n",
            "policy.yaml:4: rules[0].name: expected a string, got an integer",
            id="rule-name-not-a-string",
        ),
        pytest.param(
            HEADER + "  - verdict: allow\n    name: a\n  - name: b\n    verdict: allow\n"
            "  - name: a\n    verdict: deny\n",
            "policy.yaml:8: rules[2].name: duplicate rule name 'a' (first used on line 5)",
            id="duplicate-rule-name",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    reason: [x]\n",
            "policy.yaml:6: rules[0].reason: expected a string, got a list",
            id="reason-not-a-string",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n",
            "policy.yaml:6: rules[0].match: expected a mapping, got null",
            id="empty-match",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      action: x\n",
            "policy.yaml:7: rules[0].match.action: unknown key (expected one of action_type, "
            "agent, resource, labels, parameters)",
            id="unknown-match-key",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      resource: []\n",
            "policy.yaml:7: rules[0].match.resource: expected at least one glob, got an empty list",
            id="empty-glob-list",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      agent: {a: b}\n",
            "policy.yaml:7: rules[0].match.agent: expected a glob or a list of globs, "
            "got a mapping",
            id="glob-not-a-string",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      action_type:\n"
            "        - ok*\n        - 'bad[x'\n",
            "policy.yaml:9: rules[0].match.action_type[1]: invalid glob 'bad[x': "
            "unclosed '[' at position 3",
            id="unclosed-bracket",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      resource: '/[z-a]'\n",
            "policy.yaml:7: rules[0].match.resource: invalid glob '/[z-a]': bad character range",
            id="reversed-range",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      labels: [env]\n",
            "policy.yaml:7: rules[0].match.labels: expected a mapping of label globs, got a list",
            id="labels-not-a-mapping",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      labels:\n"
            "        env: prod\n        tier: 1\n",
            "policy.yaml:9: rules[0].match.labels.tier: expected a glob or a list of globs, "
            "got an integer",
            id="label-glob-not-a-string",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      labels:\n"
            "        env: prod\n        env: dev\n",
            "policy.yaml:9: rules[0].match.labels.env: duplicate key",
            id="duplicate-label",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      parameters:\n"
            "        path: x\n",
            "policy.yaml:8: rules[0].match.parameters: expected a list, got a mapping",
            id="parameters-not-a-list",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      parameters:\n"
            "        - path: x\n          op: eq\n",
            "policy.yaml:8: rules[0].match.parameters[0]: missing required key 'value'",
            id="predicate-missing-value",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      parameters:\n"
            "        - path: x\n          op: eq\n          value: 1\n          note: hi\n",
            "policy.yaml:11: rules[0].match.parameters[0].note: unknown key "
            "(expected one of path, op, value)",
            id="predicate-unknown-key",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      parameters:\n"
            "        - {path: x, op: eq, value: 1}\n        - {path: x, op: '>', value: 1}\n",
            "policy.yaml:9: rules[0].match.parameters[1].op: unknown operator '>' (expected "
            "one of eq, ne, gt, gte, lt, lte, in, not_in, contains, glob, exists)",
            id="unknown-operator",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      parameters:\n"
            "        - {path: a..b, op: exists, value: true}\n",
            "policy.yaml:8: rules[0].match.parameters[0].path: invalid path 'a..b'",
            id="empty-path-segment",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      parameters:\n"
            "        - path: amount\n          op: gt\n          value: '1000'\n",
            "policy.yaml:10: rules[0].match.parameters[0].value: 'gt' needs a number",
            id="gt-needs-number",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      parameters:\n"
            "        - path: amount\n          op: lte\n          value: true\n",
            "policy.yaml:10: rules[0].match.parameters[0].value: 'lte' needs a number",
            id="lte-rejects-boolean",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      parameters:\n"
            "        - path: c\n          op: in\n          value: USD\n",
            "policy.yaml:10: rules[0].match.parameters[0].value: 'in' needs a list",
            id="in-needs-list",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      parameters:\n"
            "        - path: c\n          op: not_in\n          value: {a: 1}\n",
            "policy.yaml:10: rules[0].match.parameters[0].value: 'not_in' needs a list",
            id="not-in-needs-list",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      parameters:\n"
            "        - path: c\n          op: exists\n          value: 'yes'\n",
            "policy.yaml:10: rules[0].match.parameters[0].value: 'exists' needs true or false",
            id="exists-needs-boolean",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      parameters:\n"
            "        - path: c\n          op: glob\n          value: 3\n",
            "policy.yaml:10: rules[0].match.parameters[0].value: expected a string, got an integer",
            id="glob-needs-string",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      parameters:\n"
            "        - path: c\n          op: glob\n          value: '[abc'\n",
            "policy.yaml:10: rules[0].match.parameters[0].value: invalid glob '[abc'",
            id="parameter-glob-unclosed",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      parameters:\n"
            "        - path: day\n          op: eq\n          value: 2024-01-01\n",
            "policy.yaml:10: rules[0].match.parameters[0].value: expected a JSON value "
            "(null, boolean, number, string, list or mapping), got a timestamp; quote it",
            id="timestamp-value",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      parameters:\n"
            "        - path: c\n          op: in\n          value:\n            - 1\n"
            "            - .nan\n",
            "policy.yaml:12: rules[0].match.parameters[0].value[1]: expected a finite number",
            id="nan-in-list",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      parameters:\n"
            "        - path: c\n          op: eq\n          value:\n            k: 1\n"
            "            k: 2\n",
            "policy.yaml:12: rules[0].match.parameters[0].value.k: duplicate key",
            id="duplicate-key-in-value",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      parameters:\n"
            "        - path: c\n          op: eq\n          value: !!binary aGk=\n",
            "policy.yaml:10: rules[0].match.parameters[0].value: expected a JSON value",
            id="binary-value",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      parameters:\n"
            "        - path: c\n          op: eq\n          value: !!int abc\n",
            "policy.yaml:10: rules[0].match.parameters[0].value: invalid value (ValueError)",
            id="unconstructible-integer",
        ),
        pytest.param(
            HEADER + "  - name: a\n    verdict: allow\n    match:\n      ? [x]\n      : y\n",
            "policy.yaml:7: rules[0].match: keys must be strings, got a list",
            id="non-string-key",
        ),
    ],
)
def test_error_names_source_line_and_key(body: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_policy(body, "policy.yaml")
    assert str(caught.value).startswith(expected)


def test_error_line_counts_blank_and_comment_lines() -> None:
    message = load_error("""
        # a policy with a header comment

        version: 1
        default_verdict: allow

        rules:
          # first a good rule
          - name: good
            verdict: allow

          - name: bad
            verdict: allow
            match:
              resource: "/x/[oops"
    """)
    assert message.startswith("policy.yaml:14: rules[1].match.resource: invalid glob")


def test_a_value_that_refers_to_itself_is_refused_with_its_line() -> None:
    text = textwrap.dedent(
        """\
        version: 1
        default_verdict: allow
        rules:
          - name: loop
            verdict: deny
            match:
              parameters:
                - path: a
                  op: in
                  value: &v [*v]
        """
    )
    with pytest.raises(ConfigError) as refused:
        load_policy(text, "policy.yaml")
    assert "refers to itself" in str(refused.value)
    assert str(refused.value).startswith("policy.yaml:10:")


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("verdict: allow\n    quorum: 2", "only a hold rule can need a quorum"),
        ("verdict: hold\n    quorum: 11", "expected at most 10 approvers"),
        ("verdict: hold\n    quorum: 0", "expected an integer >= 1"),
    ],
)
def test_quorum_is_for_hold_rules_and_bounded(rule: str, message: str) -> None:
    body = f"version: 1\ndefault_verdict: allow\nrules:\n  - name: r\n    {rule}\n"
    assert load_error(body).endswith(f"rules[0].quorum: {message}")
