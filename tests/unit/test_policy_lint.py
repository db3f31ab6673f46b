"""The policy linter: every kind of finding, the cases it must leave alone (a live rule
called dead is worse than a dead one missed), and property tests holding every rule it
calls dead against the real evaluator: random policies with random actions built from
their literals, and, denser, contradictions and shadowing over whole pools of values."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from gateway.domain.actions import ActionRequest
from gateway.domain.policy import Policy, default_policy, evaluate_rules, load_policy
from gateway.domain.policy.globs import GlobDialect
from gateway.domain.policy.lint import (
    FindingKind,
    PolicyFinding,
    Severity,
    glob_covers,
    lint_policy,
    rule_lines,
)
from gateway.domain.policy.model import Operator
from gateway.errors import ConfigError
from tests.unit.test_policy_loader import doc_example

ROOT = Path(__file__).resolve().parents[2]

NEVER = (FindingKind.NEVER_MATCHES, Severity.ERROR)
REDUNDANT = (FindingKind.REDUNDANT, Severity.WARNING)
AFTER_CATCH_ALL = (FindingKind.UNREACHABLE_AFTER_CATCH_ALL, Severity.ERROR)


def rule(name: str, verdict: str = "deny", quorum: int = 1, **match: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "verdict": verdict}
    if quorum != 1:
        entry["quorum"] = quorum
    if match:
        entry["match"] = match
    return entry


def p(path: str, op: str, value: Any) -> dict[str, Any]:
    return {"path": path, "op": op, "value": value}


def policy_text(*rules: dict[str, Any], default: str = "allow") -> str:
    document = {"version": 1, "default_verdict": default, "rules": list(rules)}
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


def lint(*rules: dict[str, Any]) -> tuple[PolicyFinding, ...]:
    text = policy_text(*rules)
    return lint_policy(load_policy(text, "policy.yaml"), text)


def found(*rules: dict[str, Any]) -> dict[str, tuple[FindingKind, Severity]]:
    """Rule name -> (kind, severity) of its finding."""
    return {f.rule: (f.kind, f.severity) for f in lint(*rules)}


def message(*rules: dict[str, Any]) -> str:
    (only,) = lint(*rules)
    return only.message


# -- after a catch-all -----------------------------------------------------------------


def test_rule_after_a_rule_without_conditions_is_unreachable() -> None:
    assert found(rule("all", "allow"), rule("late", "deny", action_type="x")) == {
        "late": AFTER_CATCH_ALL
    }
    said = message(rule("all", "allow"), rule("late", "deny", action_type="x"))
    assert said == (
        "rule 'late' is unreachable: rule 'all' (line 4) comes first and matches every "
        "action, deciding allow, not deny; move 'late' above 'all' or remove it"
    )


def test_rule_after_catch_all_with_the_same_verdict_is_only_a_warning() -> None:
    assert found(rule("all", "hold"), rule("late", "hold", action_type="x")) == {
        "late": (FindingKind.UNREACHABLE_AFTER_CATCH_ALL, Severity.WARNING)
    }


def test_conditions_that_match_anything_make_a_catch_all() -> None:
    catch_all = rule("all", "allow", action_type="*", agent="**", resource="***")
    assert found(catch_all, rule("late", "deny", agent="x")) == {"late": AFTER_CATCH_ALL}


def test_every_rule_after_a_catch_all_is_reported() -> None:
    findings = found(rule("all", "allow"), rule("a", action_type="x"), rule("b", agent="y"))
    assert findings == {"a": AFTER_CATCH_ALL, "b": AFTER_CATCH_ALL}


# -- shadowed by an earlier rule -------------------------------------------------------


def test_identical_conditions_with_another_verdict_never_match() -> None:
    match = {"action_type": "refund", "resource": "/prod/**", "labels": {"env": "prod"}}
    assert found(rule("a", "hold", **match), rule("b", "deny", **match)) == {"b": NEVER}
    said = message(rule("a", "hold", **match), rule("b", "deny", **match))
    assert said == (
        "rule 'b' never matches: rule 'a' (line 4) comes first and matches every action it "
        "matches, deciding hold, not deny; move 'b' above 'a', narrow 'a', or remove 'b'"
    )


def test_identical_conditions_with_the_same_verdict_are_redundant() -> None:
    assert found(rule("a", action_type="refund"), rule("b", action_type="refund")) == {
        "b": REDUNDANT
    }
    assert message(rule("a", action_type="refund"), rule("b", action_type="refund")) == (
        "rule 'b' is redundant: rule 'a' (line 4) comes first and matches every action it "
        "matches, deciding deny as 'b' would; remove 'b'"
    )


def test_a_hold_with_another_quorum_is_not_redundant() -> None:
    first = rule("a", "hold", action_type="refund")
    assert found(first, rule("b", "hold", quorum=2, action_type="refund")) == {"b": NEVER}
    assert "deciding hold, not hold with quorum 2;" in message(
        first, rule("b", "hold", 2, action_type="refund")
    )


def test_a_prefix_glob_shadows_its_literals_in_any_case() -> None:
    first = rule("payments", "hold", action_type="payment.*")
    assert found(first, rule("create", "deny", action_type="PAYMENT.Create")) == {"create": NEVER}
    assert found(first, rule("cards", "deny", action_type="payment.card.*")) == {"cards": NEVER}


def test_suffix_and_substring_globs_shadow() -> None:
    assert found(rule("a", action_type="*_delete"), rule("b", "hold", action_type="DB_DELETE"))
    contains = rule("a", "hold", action_type="*delete*")
    assert found(contains, rule("b", action_type="bulk_delete_*")) == {"b": NEVER}
    assert found(contains, rule("b", action_type="*.undelete")) == {"b": NEVER}


def test_a_glob_list_shadows_its_subsets() -> None:
    first = rule("a", "hold", action_type=["read", "write", "list.*"])
    assert found(first, rule("b", action_type=["list.files", "READ"])) == {"b": NEVER}


def test_a_path_glob_with_double_star_shadows_deeper_paths() -> None:
    first = rule("a", "hold", resource="/prod/**")
    assert found(first, rule("b", resource=["/prod/*", "/prod/db/users"])) == {"b": NEVER}


def test_labels_that_are_a_subset_shadow() -> None:
    first = rule("a", "hold", labels={"env": "prod*"})
    later = rule("b", labels={"env": "production", "team": "ops"})
    assert found(first, later) == {"b": NEVER}


def test_parameter_predicates_implied_by_the_later_rule_shadow() -> None:
    implied = [
        (p("amount", "gt", 100), p("amount", "gt", 1000)),
        (p("amount", "gte", 1000), p("amount", "eq", 1000)),
        (p("amount", "lt", 10), p("amount", "lte", 5)),
        (p("currency", "in", ["USD", "EUR"]), p("currency", "eq", "USD")),
        (p("currency", "ne", "USD"), p("currency", "in", ["EUR", "GBP"])),
        (p("currency", "ne", "USD"), p("currency", "exists", False)),
        (p("amount", "exists", True), p("amount", "gt", 5)),
        (p("to", "glob", "*.example.com"), p("to", "glob", "*@mail.example.com")),
        (p("to", "glob", "[a-z]*"), p("to", "glob", "bob")),
        (p("items.0.sku", "contains", "RPT"), p("items", "eq", [{"sku": "RPT-1"}])),
    ]
    for earlier, later in implied:
        findings = found(rule("a", "hold", parameters=[earlier]), rule("b", parameters=[later]))
        assert findings == {"b": NEVER}, (earlier, later)


def test_a_predicate_true_of_every_value_makes_a_catch_all() -> None:
    anything = rule("a", "hold", parameters=[p("tags", "not_in", [])])
    assert found(anything, rule("b", parameters=[p("x", "eq", 1)])) == {"b": AFTER_CATCH_ALL}


# -- shadowing that must not be reported -----------------------------------------------


def test_a_narrower_rule_first_shadows_nothing() -> None:
    narrow = rule("create", action_type="payment.create", parameters=[p("amount", "gt", 5)])
    assert found(narrow, rule("payments", "hold", action_type="payment.*")) == {}
    wide_but_conditional = rule(
        "payments", "hold", action_type="payment.*", parameters=[p("amount", "gt", 5)]
    )
    assert found(wide_but_conditional, rule("create", action_type="payment.create")) == {}


def test_a_rule_shadowed_for_some_actions_only_is_not_reported() -> None:
    first = rule("a", "hold", action_type="payment.*")
    assert found(first, rule("b", action_type=["payment.create", "refund"])) == {}
    assert found(first, rule("b", action_type="payment")) == {}
    assert found(first, rule("b", action_type="pay*")) == {}


def test_an_earlier_rule_with_more_conditions_does_not_shadow() -> None:
    first = rule("a", "hold", action_type="refund", agent="billing-*")
    assert found(first, rule("b", action_type="refund")) == {}
    labelled = rule("a", "hold", labels={"env": "*"})
    assert found(labelled, rule("b", action_type="refund")) == {}, "a label must be present"


def test_a_single_star_path_glob_does_not_cross_slashes() -> None:
    first = rule("a", "hold", agent="billing-*")
    assert found(first, rule("b", agent="billing-**")) == {}
    assert found(first, rule("b", agent="billing-7/x")) == {}
    assert found(rule("a", "hold", agent="*"), rule("b", action_type="x")) == {}


def test_glob_forms_that_are_not_certain_are_not_claimed() -> None:
    cases = [
        ("p?yment.*", "payment.*"),
        ("payment.*", "p?yment.create"),
        ("payment.*", "[p]ayment.create"),
        ("a*b*c", "abc*"),
    ]
    for outer, inner in cases:
        first = rule("a", "hold", action_type=outer)
        assert found(first, rule("b", action_type=inner)) == {}, (outer, inner)


def test_predicates_that_are_not_implied_do_not_shadow() -> None:
    not_implied = [
        (p("amount", "gt", 1000), p("amount", "gte", 1000)),
        (p("amount", "gt", 5), p("amount", "ne", 3)),
        (p("currency", "ne", "USD"), p("currency", "not_in", ["EUR"])),
        (p("currency", "in", ["USD"]), p("currency", "in", ["USD", "EUR"])),
        (p("to", "glob", "*@example.com"), p("to", "glob", "*@mail.example.com")),
        (p("name", "contains", "RPT"), p("name", "contains", "RPT-1")),
        (p("amount", "exists", True), p("amount", "ne", 5)),
        (p("a.b", "eq", 1), p("a", "exists", True)),
        (p("flag", "eq", 1), p("flag", "eq", True)),
    ]
    for earlier, later in not_implied:
        findings = found(rule("a", "hold", parameters=[earlier]), rule("b", parameters=[later]))
        assert findings == {}, (earlier, later)


def test_non_ascii_case_variants_are_not_claimed() -> None:
    # `re` folds case beyond ASCII in ways `str.lower` does not: stay out of it.
    assert found(rule("a", "hold", action_type="é*"), rule("b", action_type="É.x")) == {}
    assert found(rule("a", "hold", action_type="straße"), rule("b", action_type="STRASSE")) == {}


def test_a_contradictory_rule_shadows_nothing() -> None:
    dead = rule("a", "hold", action_type="*", parameters=[p("x", "in", [])])
    assert found(dead, rule("b", action_type="refund")) == {"a": NEVER}


# -- contradictions inside one rule ----------------------------------------------------

CONTRADICTIONS = {
    "in-empty": [p("currency", "in", [])],
    "empty-range": [p("amount", "gt", 10), p("amount", "lt", 5)],
    "point-open": [p("amount", "gt", 5), p("amount", "lte", 5)],
    "absent-and-compared": [p("amount", "exists", False), p("amount", "gte", 0)],
    "absent-and-present": [p("amount", "exists", True), p("amount", "exists", False)],
    "absent-parent": [p("items", "exists", False), p("items.0.sku", "eq", "RPT")],
    "two-values": [p("currency", "eq", "USD"), p("currency", "eq", "EUR")],
    "eq-and-ne": [p("currency", "eq", "USD"), p("currency", "ne", "USD")],
    "in-and-not-in": [p("currency", "in", ["USD", "EUR"]), p("currency", "not_in", ["EUR", "USD"])],
    "number-has-no-keys": [p("amount", "eq", 5), p("amount.cents", "exists", True)],
    "number-and-glob": [p("amount", "gt", 5), p("amount", "glob", "1*")],
    "number-and-contains": [p("amount", "lt", 5), p("amount", "contains", "1")],
    "string-and-list": [p("to", "glob", "*@x.org"), p("to", "contains", 1)],
}


@pytest.mark.parametrize("name", sorted(CONTRADICTIONS))
def test_contradictory_parameters_never_match(name: str) -> None:
    findings = lint(rule("r", parameters=CONTRADICTIONS[name]))
    assert [(f.rule, f.kind, f.severity) for f in findings] == [("r", *NEVER)]
    assert "can never match" in findings[0].message


def test_contradiction_message_names_the_predicates() -> None:
    said = message(rule("r", parameters=CONTRADICTIONS["empty-range"]))
    assert "'amount gt 10' and 'amount lt 5' leave no number between them" in said
    said = message(rule("r", parameters=CONTRADICTIONS["two-values"]))
    assert "'currency eq \"USD\"' leaves no value for 'currency eq \"EUR\"'" in said


CONSISTENT = {
    "point-closed": [p("amount", "gte", 5), p("amount", "lte", 5)],
    "absent-and-negative": [p("a", "exists", False), p("a", "ne", 1), p("a", "not_in", [1])],
    "absent-sibling": [p("a", "exists", False), p("b", "eq", 1)],
    "absent-child": [p("a.b", "exists", False), p("a", "exists", True)],
    "eq-and-glob": [p("to", "eq", "bob@x.org"), p("to", "glob", "*@x.org")],
    "glob-and-contains": [p("to", "glob", "*@x.org"), p("to", "contains", "@")],
    "list-and-contains": [p("tags", "contains", 1), p("tags", "contains", "a")],
    "in-overlap": [p("c", "in", ["USD", "EUR"]), p("c", "not_in", ["USD"])],
    "number-equal": [p("n", "eq", 1), p("n", "in", [1.0])],
    "eq-object": [p("o", "eq", {"k": [1]}), p("o.k.0", "gte", 1)],
}


@pytest.mark.parametrize("name", sorted(CONSISTENT))
def test_satisfiable_parameters_are_not_reported(name: str) -> None:
    assert lint(rule("r", parameters=CONSISTENT[name])) == ()


def test_a_character_class_that_matches_nothing_never_matches() -> None:
    assert found(rule("r", resource="/prod[/]db")) == {"r": NEVER}
    assert found(rule("r", agent=["[/]", "[/-/]x"])) == {"r": NEVER}
    assert 'resource "/prod[/]db" matches no value' in message(rule("r", resource="/prod[/]db"))


def test_character_classes_that_match_something_are_not_reported() -> None:
    assert found(rule("r", agent=["[/]", "ops"])) == {}, "one glob of the list can match"
    assert found(rule("r", action_type="x[/]y")) == {}, "text globs let a class match /"
    assert found(rule("r", agent="[!/]x")) == {}
    assert found(rule("r", resource="[.-0]")) == {}, "the range has more than /"
    assert found(rule("r", parameters=[p("to", "glob", "[/]")])) == {}


def test_action_type_case_never_makes_a_rule_dead() -> None:
    # The evaluator compares action types without case, so no spelling is unmatchable.
    assert found(rule("r", action_type=["DELETE_*", "Drop.Table", "ÉCRIRE"])) == {}


# -- lines, documents, the shipped policies --------------------------------------------


def test_findings_carry_the_line_each_rule_starts_on() -> None:
    text = textwrap.dedent("""\
        version: 1
        default_verdict: allow
        rules:
          - name: all
            verdict: allow

          # a comment
          - verdict: deny
            name: late
    """)
    (finding,) = lint_policy(load_policy(text, "p.yaml"), text)
    assert (finding.rule, finding.line) == ("late", 8)
    assert "rule 'all' (line 4)" in finding.message
    assert rule_lines(text) == {"all": 4, "late": 8}


def test_text_that_is_not_the_loaded_policy_gives_no_lines() -> None:
    text = policy_text(rule("all", "allow"), rule("late"))
    policy = load_policy(text, "p.yaml")
    (finding,) = lint_policy(policy, text + "# edited since\n")
    assert finding.line is None
    assert "rule 'all' comes first" in finding.message
    assert rule_lines("rules: [") == {}


def test_a_finding_document_has_the_json_keys() -> None:
    (finding,) = lint(rule("all", "allow"), rule("late"))
    assert finding.document() == {
        "rule": "late",
        "line": 6,
        "kind": "unreachable-after-catch-all",
        "severity": "error",
        "message": finding.message,
    }


def test_the_built_in_default_policy_lints_clean() -> None:
    assert lint_policy(default_policy()) == ()


def test_the_complete_example_in_the_docs_lints_clean() -> None:
    text = doc_example()
    assert lint_policy(load_policy(text, "docs/policy.md"), text) == ()


def test_the_allowlist_example_lints_clean() -> None:
    text = (ROOT / "examples" / "policy-allowlist.yaml").read_text(encoding="utf-8")
    assert lint_policy(load_policy(text, "policy-allowlist.yaml"), text) == ()


def test_glob_covers_is_conservative_about_dialects() -> None:
    assert glob_covers("*", "a/b", GlobDialect.TEXT)
    assert glob_covers("*", "*", GlobDialect.PATH), "identical"
    assert not glob_covers("*", "**", GlobDialect.PATH)
    assert glob_covers("/a/**", "/a/*/b", GlobDialect.PATH)
    assert not glob_covers("/a/*", "/a/*/b", GlobDialect.PATH)
    assert glob_covers("PAY*", "pay.x*", GlobDialect.TEXT, ignore_case=True)
    assert not glob_covers("PAY*", "pay.x*", GlobDialect.TEXT)
    assert not glob_covers("ab*ba", "aba", GlobDialect.TEXT), "prefix and suffix overlap"


# -- the linter against the evaluator --------------------------------------------------

ACTION_GLOBS = [
    "*",
    "payment.*",
    "payment.create",
    "PAYMENT.CREATE",
    "*.create",
    "*email*",
    "send_email",
    "p?yment.*",
    "[ps]ayment.create",
    "pay*ate",
    "é*",
    "É",
]
AGENT_GLOBS = ["**", "*", "billing-*", "billing-**", "billing-7", "ops/1", "ops/*", "[/]x"]
RESOURCE_GLOBS = ["/prod/**", "/prod/*", "/prod/db", "**", "/prod[/]db", "*"]
LABEL_GLOBS = ["prod", "prod*", "*", "dev"]
PATHS = ["amount", "currency", "items", "items.0"]
NUMBERS = [0, 5, 10, 1000]
SCALARS = [5, 1000, "USD", "EUR", True, None, ["USD"], {"k": 1}]
LISTS = [[], ["USD"], ["USD", "EUR"], [5, 10]]
PATTERNS = ["*", "U*", "USD", "*D", "[/]"]


def predicates() -> st.SearchStrategy[dict[str, Any]]:
    values = {
        "eq": SCALARS,
        "ne": SCALARS,
        "gt": NUMBERS,
        "gte": NUMBERS,
        "lt": NUMBERS,
        "lte": NUMBERS,
        "in": LISTS,
        "not_in": LISTS,
        "contains": SCALARS,
        "glob": PATTERNS,
        "exists": [True, False],
    }
    return st.sampled_from(sorted(values)).flatmap(
        lambda op: st.builds(p, st.sampled_from(PATHS), st.just(op), st.sampled_from(values[op]))
    )


def globs(pool: Sequence[str]) -> st.SearchStrategy[Any]:
    return st.sampled_from(pool) | st.lists(st.sampled_from(pool), min_size=1, max_size=3)


MATCHES = st.fixed_dictionaries(
    {},
    optional={
        "action_type": globs(ACTION_GLOBS),
        "agent": globs(AGENT_GLOBS),
        "resource": globs(RESOURCE_GLOBS),
        "labels": st.dictionaries(
            st.sampled_from(["env", "team"]), globs(LABEL_GLOBS), min_size=1, max_size=2
        ),
        "parameters": st.lists(predicates(), min_size=1, max_size=3),
    },
)


@st.composite
def policies(draw: st.DrawFn) -> tuple[str, Policy]:
    count = draw(st.integers(1, 6))
    rules = [
        rule(f"r{i}", draw(st.sampled_from(["allow", "hold", "deny"])), **draw(MATCHES))
        for i in range(count)
    ]
    text = policy_text(*rules)
    return text, load_policy(text, "random.yaml")


def fill(pattern: str, filler: str) -> str:
    """A value a glob likely matches: `*` as `filler`, `?` as a letter, a set as its
    first member."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            out.append(filler)
        elif char == "?":
            out.append("a")
        elif char == "[":
            end = pattern.index("]", i + 2)
            out.append(pattern[i + 1])
            i = end
        else:
            out.append(char)
        i += 1
    return "".join(out)


def literals(pool: Sequence[str]) -> list[str]:
    """Values built from a pool of globs: each with its wildcards filled in several ways,
    in upper and lower case, and a few that match no glob."""
    base = {fill(pattern, filler) for pattern in pool for filler in ("", "x", "/", "a/b.create")}
    return sorted(base | {v.upper() for v in base} | {v.lower() for v in base} | {"", "other"})


ACTION_TYPES = literals(ACTION_GLOBS)
AGENTS = literals(AGENT_GLOBS)
RESOURCES = literals(RESOURCE_GLOBS)
LABEL_VALUES = literals(LABEL_GLOBS)
PARAMETER_VALUES = st.sampled_from(
    [*NUMBERS, *SCALARS, *LISTS, 7, 1000.5, "UUSD", "/", "x", [{"k": 1}], ["USD", "EUR"]]
)


@st.composite
def actions(draw: st.DrawFn) -> ActionRequest:
    parameters: dict[str, Any] = {}
    for key in ("amount", "currency"):
        if draw(st.booleans()):
            parameters[key] = draw(PARAMETER_VALUES)
    items = draw(st.sampled_from(["missing", "value", "list"]))
    if items == "value":
        parameters["items"] = draw(PARAMETER_VALUES)
    elif items == "list":
        parameters["items"] = draw(st.lists(PARAMETER_VALUES, max_size=2))
    labels = {}
    for key in ("env", "team"):
        if draw(st.booleans()):
            labels[key] = draw(st.sampled_from(LABEL_VALUES))
    return ActionRequest(
        action_id="act-1",
        agent_id=draw(st.sampled_from(AGENTS)),
        session_id="sess-1",
        action_type=draw(st.sampled_from(ACTION_TYPES)),
        resource=draw(st.sampled_from(RESOURCES)),
        parameters=parameters,
        labels=labels,
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies(), requests=st.lists(actions(), min_size=20, max_size=20))
def test_no_action_is_decided_by_a_rule_the_linter_calls_dead(
    policy: tuple[str, Policy], requests: list[ActionRequest]
) -> None:
    text, loaded = policy
    dead = {finding.rule for finding in lint_policy(loaded, text)}
    for request in requests:
        decided = evaluate_rules(loaded, request).matched_rules
        assert not dead.intersection(decided), (text, request)


@pytest.mark.parametrize("kind", list(FindingKind))
def test_the_random_policies_have_findings_of_every_kind(kind: FindingKind) -> None:
    # Else the property above could pass by never meeting a dead rule.
    find(
        policies(),
        lambda policy: any(f.kind is kind for f in lint_policy(policy[1], policy[0])),
        settings=settings(max_examples=2000, deadline=None),
    )


def test_the_random_actions_reach_rules() -> None:
    # ... or by never matching any rule at all.
    find(
        st.tuples(policies(), actions()),
        lambda pair: (
            len(evaluate_rules(pair[0][1], pair[1]).matched_rules) > 0
            and any(rule.match.parameters for rule in pair[0][1].rules)
        ),
        settings=settings(max_examples=2000, deadline=None),
    )


# Denser checks of the two kinds of reasoning, each over every value of a pool: the
# random policies above rarely put two predicates on one path or two globs side by side.

BASE_VALUES: list[Any] = [*NUMBERS, 7, 1000.5, "USD", "EUR", "UUSD", "/", "", True, False, None]
PARAMETER_POOL: list[Any] = [
    *BASE_VALUES,
    *LISTS,
    *([value] for value in BASE_VALUES),
    *({"k": value} for value in BASE_VALUES),
    {"k": 1, "j": 2},
]
SAME_PATH_VALUES: list[Any] = [0, 5, 7, "USD", "EUR", "U*", [], ["USD", "EUR"], [5, 7], True]
SAME_PATH_VALUES += [False, None, {"k": 5}]


def loadable(predicate: dict[str, Any]) -> bool:
    try:
        load_policy(policy_text(rule("r", parameters=[predicate])), "p.yaml")
    except ConfigError:
        return False
    return True


SAME_PATH_PREDICATES = st.lists(
    st.builds(
        p,
        st.sampled_from(["v", "v.k", "v.0"]),
        st.sampled_from([op.value for op in Operator]),
        st.sampled_from(SAME_PATH_VALUES),
    ).filter(loadable),
    min_size=1,
    max_size=3,
)


def parameter_requests() -> list[ActionRequest]:
    """The action `x` with `parameters.v` missing or any value of the pool."""
    each = [{}, *({"v": value} for value in PARAMETER_POOL)]
    return [ActionRequest("a", "agent", "s", "x", parameters=parameters) for parameters in each]


@settings(max_examples=400, deadline=None)
@given(SAME_PATH_PREDICATES)
def test_a_contradiction_holds_for_every_value(parameters: list[dict[str, Any]]) -> None:
    text = policy_text(rule("r", parameters=parameters))
    policy = load_policy(text, "p.yaml")
    if lint_policy(policy, text):
        for request in parameter_requests():
            assert evaluate_rules(policy, request).matched_rules == (), request.parameters


@settings(max_examples=400, deadline=None)
@given(SAME_PATH_PREDICATES, SAME_PATH_PREDICATES)
def test_shadowing_holds_for_every_value(
    earlier: list[dict[str, Any]], later: list[dict[str, Any]]
) -> None:
    text = policy_text(rule("a", "hold", parameters=earlier), rule("b", parameters=later))
    policy = load_policy(text, "p.yaml")
    if any(finding.rule == "b" for finding in lint_policy(policy, text)):
        for request in parameter_requests():
            assert evaluate_rules(policy, request).matched_rules != ("b",), request.parameters


TEXT_GLOBS = [*ACTION_GLOBS, "pay*", "*ate", "*MENT*", "k*", "K", "\u212a*", "s*", "i*"]
TEXT_GLOBS += ["\u017f", "\u0130"]
PATH_GLOBS = [*AGENT_GLOBS, *RESOURCE_GLOBS, "ops/**", "**/1", "*/1", "**1**", "ops"]
# Letters `re` folds together with ASCII ones: Kelvin sign, long s, dotless i, dotted I.
FOLDED = {"k": "\u212a", "s": "\u017f", "i": "\u0131", "I": "\u0130", "e": "é", "E": "É"}


def candidates(pool: Sequence[str]) -> list[str]:
    """`literals(pool)`, and each with its letters swapped for the non-ASCII ones `re`
    folds together with them."""
    found = literals(pool)
    swapped = {"".join(FOLDED.get(char, char) for char in value) for value in found}
    return sorted({*found, *swapped, "é", "É", "\u212a", "K"})


def request_with(field: str, value: str) -> ActionRequest:
    return ActionRequest(
        action_id="a",
        agent_id=value if field == "agent" else "agent",
        session_id="s",
        action_type=value if field == "action_type" else "x",
        resource=value if field == "resource" else "",
    )


GLOB_CASES = st.sampled_from(
    [(TEXT_GLOBS, "action_type"), (PATH_GLOBS, "agent"), (PATH_GLOBS, "resource")]
).flatmap(lambda case: st.tuples(st.just(case), globs(case[0]), globs(case[0])))


@settings(max_examples=400, deadline=None)
@given(GLOB_CASES)
def test_glob_shadowing_holds_for_every_candidate(case: tuple[Any, Any, Any]) -> None:
    (pool, field), outer, inner = case
    text = policy_text(rule("a", "hold", **{field: outer}), rule("b", **{field: inner}))
    policy = load_policy(text, "p.yaml")
    if any(finding.rule == "b" for finding in lint_policy(policy, text)):
        for value in candidates(pool):
            decided = evaluate_rules(policy, request_with(field, value)).matched_rules
            assert decided != ("b",), value
