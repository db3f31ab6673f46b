"""Decide one action against a loaded policy: the first matching rule wins.

Owns the meaning of every match condition and parameter operator. It is on the hot
path of every decision, so it only runs regexes and comparisons that the loader
prepared; and it must never raise on any request content (arbitrary JSON
parameters): a condition that cannot be evaluated is simply false.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.domain.actions import ActionRequest, Verdict
from gateway.domain.policy.model import Match, Operator, ParameterPredicate, PathSegment, Policy


@dataclass(frozen=True)
class PolicyResult:
    verdict: Verdict
    matched_rules: tuple[str, ...]
    reason: str
    quorum: int = 1  # approvers a hold needs (the matching rule's `quorum`)


def evaluate_rules(policy: Policy, request: ActionRequest) -> PolicyResult:
    for rule in policy.rules:
        if rule_matches(rule.match, request):
            return PolicyResult(rule.verdict, (rule.name,), rule.reason, rule.quorum)
    verdict = policy.default_verdict
    return PolicyResult(verdict, (), f"no rule matched; default {verdict.name.lower()}")


def rule_matches(match: Match, request: ActionRequest) -> bool:
    # Cheapest conditions first: most rules are decided by the action type alone.
    if match.action_type is not None and not match.action_type.matches(request.action_type):
        return False
    if match.agent is not None and not match.agent.matches(request.agent_id):
        return False
    if match.resource is not None and not match.resource.matches(request.resource):
        return False
    for label in match.labels:
        value = request.labels.get(label.key)
        if value is None or not label.glob.matches(value):
            return False
    return all(predicate_holds(p, request.parameters) for p in match.parameters)


class _Missing:
    """Marks a parameter path that does not resolve; distinct from a JSON null."""


_MISSING = _Missing()


def _resolve_path(parameters: Mapping[str, Any], segments: tuple[PathSegment, ...]) -> object:
    """The value at `segments`, or `_MISSING` if any step does not exist."""
    current: object = parameters
    for segment in segments:
        if isinstance(current, Mapping):
            if segment.key not in current:
                return _MISSING
            current = current[segment.key]
        elif isinstance(current, list | tuple) and segment.index is not None:
            if segment.index >= len(current):
                return _MISSING
            current = current[segment.index]
        else:
            return _MISSING
    return current


def predicate_holds(predicate: ParameterPredicate, parameters: Mapping[str, Any]) -> bool:
    found = _resolve_path(parameters, predicate.segments)
    if found is _MISSING:
        # A negative test on an absent parameter succeeds: "currency ne USD" should
        # catch a request that does not say USD, including one that says nothing.
        op = predicate.op
        return (
            op is Operator.NE
            or op is Operator.NOT_IN
            or (op is Operator.EXISTS and predicate.value is False)
        )
    return _OPERATORS[predicate.op](found, predicate)


def json_equal(left: object, right: object) -> bool:
    """Equality of JSON values: 1 == 1.0, but true != 1 and a list != a string."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left is right
    if _is_number(left) or _is_number(right):
        return _is_number(left) and _is_number(right) and left == right
    if isinstance(left, str) or isinstance(right, str):
        return isinstance(left, str) and isinstance(right, str) and left == right
    if left is None or right is None:
        return left is None and right is None
    if isinstance(left, list | tuple) and isinstance(right, list | tuple):
        return len(left) == len(right) and all(map(json_equal, left, right))
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    return False


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_Test = Callable[[object, ParameterPredicate], bool]


def _ordered(compare: Callable[[float, float], bool]) -> _Test:
    def holds(found: object, predicate: ParameterPredicate) -> bool:
        limit = predicate.value
        # The loader guarantees a numeric limit; a non-number here is the request's,
        # and "amount > 1000" is simply not true of a string (or of true).
        if isinstance(found, bool) or not isinstance(found, int | float):
            return False
        return isinstance(limit, float) and compare(found, limit)

    return holds


def _in(found: object, predicate: ParameterPredicate) -> bool:
    members = predicate.value
    return isinstance(members, tuple) and any(json_equal(found, m) for m in members)


def _contains(found: object, predicate: ParameterPredicate) -> bool:
    needle = predicate.value
    if isinstance(found, str):
        return isinstance(needle, str) and needle in found
    if isinstance(found, list | tuple):
        return any(json_equal(item, needle) for item in found)
    return False


def _glob(found: object, predicate: ParameterPredicate) -> bool:
    pattern = predicate.pattern
    return isinstance(found, str) and pattern is not None and pattern.fullmatch(found) is not None


_OPERATORS: dict[Operator, _Test] = {
    Operator.EQ: lambda found, p: json_equal(found, p.value),
    Operator.NE: lambda found, p: not json_equal(found, p.value),
    Operator.GT: _ordered(lambda a, b: a > b),
    Operator.GTE: _ordered(lambda a, b: a >= b),
    Operator.LT: _ordered(lambda a, b: a < b),
    Operator.LTE: _ordered(lambda a, b: a <= b),
    Operator.IN: _in,
    Operator.NOT_IN: lambda found, p: not _in(found, p),
    Operator.CONTAINS: _contains,
    Operator.GLOB: _glob,
    Operator.EXISTS: lambda found, p: p.value is True,
}
