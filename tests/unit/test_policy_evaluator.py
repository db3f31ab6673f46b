"""Evaluating rules: every operator, both glob dialects, ordering, the default policy."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.actions import ActionRequest, Verdict
from gateway.domain.policy import Policy, default_policy, evaluate_rules, load_policy
from gateway.domain.policy.evaluator import json_equal


def request(
    action_type: str = "noop",
    *,
    agent: str = "agent-1",
    resource: str = "",
    parameters: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
) -> ActionRequest:
    return ActionRequest(
        action_id="act-1",
        agent_id=agent,
        session_id="sess-1",
        action_type=action_type,
        resource=resource,
        parameters=parameters or {},
        labels=labels or {},
    )


def single_rule(match_yaml: str, default: str = "allow") -> Policy:
    """A policy whose one rule `r` denies when `match_yaml` (a YAML mapping) matches."""
    match = textwrap.indent(textwrap.dedent(match_yaml).strip(), " " * 6)
    text = (
        f"version: 1\ndefault_verdict: {default}\nrules:\n"
        f"  - name: r\n    verdict: deny\n    match:\n{match}\n"
    )
    return load_policy(text, "test.yaml")


def matches(policy: Policy, req: ActionRequest) -> bool:
    return evaluate_rules(policy, req).matched_rules == ("r",)


def predicate(op: str, value: Any, path: str = "p") -> Policy:
    return single_rule(f"parameters: [{{path: {path}, op: {op}, value: {json.dumps(value)}}}]")


def with_param(value: Any) -> ActionRequest:
    return request(parameters={"p": value})


MISSING = request(parameters={"other": 1.0})


# -- results -------------------------------------------------------------------------------


def test_matching_rule_decides_with_its_reason() -> None:
    policy = load_policy(
        "version: 1\ndefault_verdict: allow\nrules:\n"
        "  - name: hold-all\n    verdict: hold\n    reason: everything waits\n",
        "p.yaml",
    )
    result = evaluate_rules(policy, request())
    assert result.verdict is Verdict.HOLD
    assert result.matched_rules == ("hold-all",)
    assert result.reason == "everything waits"


@pytest.mark.parametrize("default", ["allow", "hold", "deny"])
def test_no_match_gives_default_verdict(default: str) -> None:
    policy = single_rule("action_type: never", default=default)
    result = evaluate_rules(policy, request("something"))
    assert result.verdict is Verdict[default.upper()]
    assert result.matched_rules == ()
    assert result.reason == f"no rule matched; default {default}"


def test_empty_rules_give_default() -> None:
    policy = load_policy("version: 1\ndefault_verdict: deny\nrules: []\n", "p.yaml")
    assert evaluate_rules(policy, request()).verdict is Verdict.DENY


def test_first_matching_rule_wins_even_if_a_later_one_is_stricter() -> None:
    policy = load_policy(
        textwrap.dedent("""
            version: 1
            default_verdict: deny
            rules:
              - {name: allow-reads, verdict: allow, match: {action_type: "read*"}}
              - {name: deny-secrets, verdict: deny, match: {resource: "/secrets/**"}}
              - {name: hold-rest, verdict: hold}
        """),
        "p.yaml",
    )
    read_secret = request("read_file", resource="/secrets/key")
    assert evaluate_rules(policy, read_secret).matched_rules == ("allow-reads",)
    assert evaluate_rules(policy, read_secret).verdict is Verdict.ALLOW
    write_secret = request("write_file", resource="/secrets/key")
    assert evaluate_rules(policy, write_secret).matched_rules == ("deny-secrets",)
    assert evaluate_rules(policy, request("write_file", resource="/tmp/x")).matched_rules == (
        "hold-rest",
    )


def test_all_conditions_must_hold() -> None:
    policy = single_rule("""
        action_type: pay
        agent: billing-*
        resource: /acct/*
        labels: {env: prod}
        parameters: [{path: amount, op: gt, value: 10}]
    """)
    full: dict[str, Any] = {
        "action_type": "pay",
        "agent": "billing-1",
        "resource": "/acct/9",
        "labels": {"env": "prod"},
        "parameters": {"amount": 11.0},
    }
    assert matches(policy, request(**full))
    spoilers: dict[str, Any] = {
        "action_type": "refund",
        "agent": "support-1",
        "resource": "/other/9",
        "labels": {"env": "dev"},
        "parameters": {"amount": 5.0},
    }
    for key, spoiled in spoilers.items():
        assert not matches(policy, request(**{**full, key: spoiled})), key


# -- action_type: text glob, case-insensitive ---------------------------------------------


@pytest.mark.parametrize(
    ("glob", "action_type", "expected"),
    [
        ("*delete*", "fs.delete_file", True),
        ("*delete*", "FS.DELETE_FILE", True),
        ("*DELETE*", "fs.Delete_File", True),
        ("delete", "delete_file", False),  # whole value, not a substring
        ("read?file", "read_file", True),
        ("read?file", "read__file", False),
        ("*", "a/b/c", True),  # in text globs * crosses "/"
        ("db/*", "db/x/y", True),
        ("[ab]*", "Beta", True),  # classes are case-insensitive too
        ("[!ab]*", "alpha", False),
        ("[!ab]*", "gamma", True),
        ("file[*]", "file*", True),
        ("file[*]", "files", False),
        ("a.b", "aXb", False),  # "." is literal
        ("x+", "xx", False),  # regex syntax is literal
    ],
)
def test_action_type_glob(glob: str, action_type: str, expected: bool) -> None:
    policy = single_rule(f"action_type: {json.dumps(glob)}")
    assert matches(policy, request(action_type)) is expected


def test_action_type_list_matches_any() -> None:
    policy = single_rule('action_type: ["read_*", "list_*"]')
    assert matches(policy, request("LIST_FILES"))
    assert matches(policy, request("read_file"))
    assert not matches(policy, request("write_file"))


# -- agent and resource: path glob, case-sensitive -----------------------------------------


@pytest.mark.parametrize(
    ("glob", "resource", "expected"),
    [
        ("/prod/*", "/prod/db", True),
        ("/prod/*", "/prod/db/users", False),
        ("/prod/**", "/prod/db/users", True),
        ("/prod/**", "/prod/", True),
        ("/prod/**", "/prod", False),
        ("/prod/**/users", "/prod/a/b/users", True),
        ("/prod/*/users", "/prod/a/b/users", False),
        ("/prod/*/users", "/prod/a/users", True),
        ("/prod/?", "/prod/a", True),
        ("/prod/?", "/prod//", False),  # ? never matches "/"
        ("/prod/[!x]", "/prod//", False),  # nor does a class
        ("/prod/*", "/PROD/db", False),  # case-sensitive
        ("**", "", True),
        ("*", "", True),
        ("", "", True),
        ("", "/x", False),
        ("s3://bucket/*", "s3://bucket/key", True),
        ("/data/*.csv", "/data/x.csv", True),
        ("/data/*.csv", "/data/xcsv", False),
    ],
)
def test_resource_glob(glob: str, resource: str, expected: bool) -> None:
    policy = single_rule(f"resource: {json.dumps(glob)}")
    assert matches(policy, request(resource=resource)) is expected


def test_agent_glob_is_case_sensitive_path_glob() -> None:
    policy = single_rule('agent: ["billing-*", "team/**"]')
    assert matches(policy, request(agent="billing-7"))
    assert not matches(policy, request(agent="Billing-7"))
    assert not matches(policy, request(agent="billing-7/sub"))
    assert matches(policy, request(agent="team/a/b"))


# -- labels --------------------------------------------------------------------------------


def test_labels_must_all_exist_and_match() -> None:
    policy = single_rule('labels: {env: "prod*", team: [core, infra]}')
    assert matches(policy, request(labels={"env": "production", "team": "infra", "x": "y"}))
    assert not matches(policy, request(labels={"env": "production"}))  # team missing
    assert not matches(policy, request(labels={"env": "Prod", "team": "core"}))  # case
    assert not matches(policy, request(labels={"env": "prod", "team": "ops"}))
    assert not matches(policy, request())


def test_label_glob_star_crosses_slash() -> None:
    policy = single_rule('labels: {repo: "org/*"}')
    assert matches(policy, request(labels={"repo": "org/a/b"}))


def test_empty_labels_and_parameters_match_anything() -> None:
    policy = single_rule("labels: {}\nparameters: []")
    assert matches(policy, request())


# -- parameter operators -------------------------------------------------------------------
# Each row: op, policy value, parameter value, expected. Parameters are as a protobuf
# Struct delivers them: numbers are floats.

OPERATOR_CASES = [
    # eq / ne: JSON equality
    ("eq", 1, 1.0, True),
    ("eq", 1, 1.5, False),
    ("eq", "USD", "USD", True),
    ("eq", "USD", "usd", False),
    ("eq", 1, "1", False),
    ("eq", 1, True, False),  # booleans are not numbers
    ("eq", 0, False, False),
    ("eq", True, True, True),
    ("eq", None, None, True),
    ("eq", None, "", False),
    ("eq", [1, "a"], [1.0, "a"], True),
    ("eq", [1, "a"], ["a", 1.0], False),
    ("eq", {"k": [1]}, {"k": [1.0]}, True),
    ("eq", {"k": 1}, {"k": 1.0, "j": 2.0}, False),
    ("ne", 1, 2.0, True),
    ("ne", 1, 1.0, False),
    ("ne", "a", ["a"], True),
    # ordering: numbers only
    ("gt", 1000, 1000.5, True),
    ("gt", 1000, 1000.0, False),
    ("gt", 1000, "5000", False),
    ("gt", 0, True, False),
    ("gt", 1000, None, False),
    ("gt", 1000, [5000.0], False),
    ("gte", 1000, 1000.0, True),
    ("gte", 1000, 999.9, False),
    ("lt", 0, -0.5, True),
    ("lt", 0, 0.0, False),
    ("lt", 10, "1", False),
    ("lte", 0.5, 0.5, True),
    ("lte", 0.5, 0.6, False),
    ("gt", 0, float("nan"), False),
    ("lt", 0, float("-inf"), True),
    # in / not_in
    ("in", ["USD", "EUR"], "EUR", True),
    ("in", ["USD", "EUR"], "GBP", False),
    ("in", [1, 2], 2.0, True),
    ("in", [1, 2], True, False),
    ("in", [], "x", False),
    ("in", [[1, 2]], [1.0, 2.0], True),
    ("not_in", ["USD", "EUR"], "GBP", True),
    ("not_in", ["USD", "EUR"], "USD", False),
    ("not_in", [None], None, False),
    # contains: substring of strings, membership of lists
    ("contains", "drop", "please drop table", True),
    ("contains", "DROP", "please drop table", False),
    ("contains", "x", "", False),
    ("contains", "admin", ["user", "admin"], True),
    ("contains", "adm", ["user", "admin"], False),
    ("contains", 2, [1.0, 2.0], True),
    ("contains", 2, "123", False),
    ("contains", "a", {"a": 1.0}, False),  # objects are neither
    ("contains", "1", 1.0, False),
    ("contains", [1], [[1.0], [2.0]], True),
    # glob: text glob, case-sensitive, strings only
    ("glob", "*@example.com", "ceo@example.com", True),
    ("glob", "*@example.com", "ceo@example.com.evil", False),
    ("glob", "*@example.com", "CEO@EXAMPLE.COM", False),
    ("glob", "*/*", "a/b/c", True),
    ("glob", "*", 1.0, False),
    ("glob", "*", None, False),
    # exists: presence, including of a null
    ("exists", True, None, True),
    ("exists", True, "", True),
    ("exists", False, "x", False),
    ("exists", False, None, False),
]


@pytest.mark.parametrize(("op", "value", "parameter", "expected"), OPERATOR_CASES)
def test_operator_on_present_parameter(op: str, value: Any, parameter: Any, expected: bool) -> None:
    assert matches(predicate(op, value), with_param(parameter)) is expected


MISSING_CASES = [
    ("eq", 1, False),
    ("eq", None, False),  # absent is not null
    ("ne", 1, True),
    ("gt", 0, False),
    ("gte", 0, False),
    ("lt", 0, False),
    ("lte", 0, False),
    ("in", [1], False),
    ("not_in", [1], True),
    ("contains", "x", False),
    ("glob", "*", False),
    ("exists", True, False),
    ("exists", False, True),
]


@pytest.mark.parametrize(("op", "value", "expected"), MISSING_CASES)
def test_operator_on_missing_parameter(op: str, value: Any, expected: bool) -> None:
    assert matches(predicate(op, value), MISSING) is expected


def test_every_operator_has_present_and_missing_cases() -> None:
    ops = {"eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "contains", "glob", "exists"}
    assert {case[0] for case in OPERATOR_CASES} == ops
    assert {case[0] for case in MISSING_CASES} == ops
    for op in ops:
        outcomes = {case[3] for case in OPERATOR_CASES if case[0] == op}
        assert outcomes == {True, False}, op


# -- parameter paths -----------------------------------------------------------------------

NESTED = {
    "order": {"items": [{"sku": "A-1", "qty": 2.0}, {"sku": "B-2", "qty": 5.0}]},
    "map": {"0": "zero-key"},
    "n": 3.0,
}


@pytest.mark.parametrize(
    ("path", "op", "value", "expected"),
    [
        ("order.items.0.sku", "eq", "A-1", True),
        ("order.items.1.qty", "gte", 5, True),
        ("order.items.2.sku", "exists", False, True),  # past the end
        ("order.items.2.sku", "ne", "A-1", True),
        ("order.items.x", "exists", False, True),  # a list has no key "x"
        ("order.items.-1.sku", "exists", False, True),  # no negative indexes
        ("map.0", "eq", "zero-key", True),  # digits name a key in an object
        ("n.0", "exists", False, True),  # a number has no children
        ("n.x", "eq", 3, False),
        ("order.items", "contains", {"sku": "B-2", "qty": 5}, True),
        ("order", "exists", True, True),
    ],
)
def test_dotted_paths(path: str, op: str, value: Any, expected: bool) -> None:
    assert matches(predicate(op, value, path=path), request(parameters=NESTED)) is expected


def test_all_predicates_must_hold() -> None:
    policy = single_rule("""
        parameters:
          - {path: amount, op: gt, value: 100}
          - {path: currency, op: eq, value: USD}
    """)
    assert matches(policy, request(parameters={"amount": 500.0, "currency": "USD"}))
    assert not matches(policy, request(parameters={"amount": 500.0, "currency": "EUR"}))
    assert not matches(policy, request(parameters={"amount": 5.0, "currency": "USD"}))


def test_json_equal_treats_tuples_and_lists_alike() -> None:
    assert json_equal((1.0, "a"), [1, "a"])
    assert not json_equal({"a": 1.0}, [("a", 1.0)])
    assert not json_equal(object(), object())


# -- the default policy --------------------------------------------------------------------


@pytest.mark.parametrize(
    "action_type",
    [
        "delete",
        "fs.delete_file",
        "DeleteUser",
        "remove_member",
        "repo.REMOVE",
        "db.drop_table",
        "DROP",
        "truncate_log",
        "send_email",
        "SEND_EMAIL",
        "mail.send_email_now",
        "transfer",
        "wire_transfer",
        "bank.TransferFunds",
        "payment",
        "create_payment_intent",
        "PAYMENTS.refund",
    ],
)
def test_default_policy_holds_suspicious_action_types(action_type: str) -> None:
    result = evaluate_rules(default_policy(), request(action_type))
    assert result.verdict is Verdict.HOLD
    assert result.matched_rules == ("hold-suspicious",)
    assert result.reason == "suspicious action type requires human approval"


@pytest.mark.parametrize(
    "action_type", ["search", "read_file", "list_files", "send_sms", "email.read", "pay", ""]
)
def test_default_policy_allows_other_action_types(action_type: str) -> None:
    result = evaluate_rules(default_policy(), request(action_type))
    assert result.verdict is Verdict.ALLOW
    assert result.matched_rules == ()


# -- never raises --------------------------------------------------------------------------

EVERY_OPERATOR = load_policy(
    textwrap.dedent("""
        version: 1
        default_verdict: allow
        rules:
          - name: r0
            verdict: deny
            match:
              action_type: "*x*"
              agent: "a*"
              resource: "/r/**"
              labels: {k: "v*"}
              parameters: [{path: a, op: eq, value: 1}]
          - {name: r1, verdict: hold, match: {parameters: [{path: a, op: ne, value: [1]}]}}
          - {name: r2, verdict: hold, match: {parameters: [{path: a.b, op: gt, value: 0}]}}
          - {name: r3, verdict: hold, match: {parameters: [{path: a.0, op: gte, value: 0}]}}
          - {name: r4, verdict: hold, match: {parameters: [{path: b, op: lt, value: 0}]}}
          - {name: r5, verdict: hold, match: {parameters: [{path: b.0.a, op: lte, value: 0}]}}
          - {name: r6, verdict: hold, match: {parameters: [{path: a, op: in, value: [1, a]}]}}
          - {name: r7, verdict: hold, match: {parameters: [{path: b, op: not_in, value: [{}]}]}}
          - {name: r8, verdict: hold, match: {parameters: [{path: a, op: contains, value: a}]}}
          - {name: r9, verdict: hold, match: {parameters: [{path: b.a, op: contains, value: 1}]}}
          - {name: r10, verdict: hold, match: {parameters: [{path: a, op: glob, value: "*a*"}]}}
          - {name: r11, verdict: hold, match: {parameters: [{path: b.1, op: exists, value: true}]}}
          - {name: r12, verdict: hold, match: {parameters: [{path: c, op: eq, value: {a: [1]}}]}}
    """),
    "every-operator.yaml",
)

KEYS = st.sampled_from(["a", "b", "c", "0", "1", "x"])
JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(KEYS | st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(
    parameters=st.dictionaries(KEYS, JSON, max_size=4),
    action_type=st.text(max_size=8),
    agent=st.text(max_size=8),
    resource=st.text(max_size=8),
    labels=st.dictionaries(st.sampled_from(["k", "j"]), st.text(max_size=4), max_size=2),
)
def test_evaluate_rules_never_raises(
    parameters: dict[str, Any],
    action_type: str,
    agent: str,
    resource: str,
    labels: dict[str, str],
) -> None:
    req = request(action_type, agent=agent, resource=resource, parameters=parameters, labels=labels)
    result = evaluate_rules(EVERY_OPERATOR, req)
    assert result.verdict in Verdict
    assert len(result.matched_rules) <= 1
