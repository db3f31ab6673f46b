"""Conditions of alert rules: data, never Python.

A condition is evaluated over an event's *activation*: a plain mapping of
`event_type`, `subject`, `agent_id`, `session_id`, `metrics` (name -> number),
`findings` (list of {type, severity, recommended_action}), `finding_types`, `data`.

Two forms, both read from YAML:

- a CEL expression (the Common Expression Language, through the maintained
  `common-expression-language` package), compiled once at start:

      cel: 'event_type == "outcome" && metrics.error_rate > 0.1'

- simple comparisons, all of which must hold:

      when:
        event_type: outcome                 # equality
        metrics.error_rate: {">": 0.1}      # >, >=, <, <=, ==, !=
        finding_types: {contains_any: [infinite_loop, stuck_pattern]}
        data.kind: {in: [authentication_failed, permission_denied]}

A field the event does not have makes a comparison false (an outcome has no
`metrics.resource_usage`); it is not an error. A CEL expression that fails at
evaluation (a missing field without `has()`, a type mismatch) raises `RuleError`, so
that the caller logs the broken rule and goes on with the others.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import cel

MISSING = object()


class RuleError(Exception):
    """A rule could not be evaluated (or rendered) for an event."""


class Condition(Protocol):
    @property
    def source(self) -> str: ...

    def matches(self, activation: Mapping[str, Any]) -> bool: ...


def lookup(activation: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (`metrics.error_rate`), or MISSING."""
    value: Any = activation
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return MISSING
        value = value[part]
    return value


@dataclass(frozen=True)
class CelCondition:
    source: str
    program: Any  # cel.Program

    @classmethod
    def compile(cls, source: str) -> CelCondition:
        """Raises ValueError with the parser's message for an expression that does not
        parse."""
        try:
            return cls(source, cel.compile(source))
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"invalid CEL expression: {_first_line(e)}") from None

    def matches(self, activation: Mapping[str, Any]) -> bool:
        try:
            result = self.program.execute(dict(activation))
        except Exception as e:  # the library raises KeyError, TypeError, RuntimeError...
            raise RuleError(f"CEL evaluation failed: {type(e).__name__}: {_first_line(e)}") from e
        if not isinstance(result, bool):
            raise RuleError(f"CEL expression gave {type(result).__name__}, not a bool")
        return result


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:300]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _ordered(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(actual: Any, expected: Any) -> bool:
        return _number(actual) and op(actual, expected)

    return compare


def _contains(actual: Any, expected: Any) -> bool:
    return isinstance(actual, Sequence) and not isinstance(actual, str) and expected in actual


def _contains_any(actual: Any, expected: Any) -> bool:
    return any(_contains(actual, e) for e in expected)


def _one_of(actual: Any, expected: Any) -> bool:
    return actual in expected


OPERATORS: Mapping[str, Callable[[Any, Any], bool]] = {
    ">": _ordered(operator.gt),
    ">=": _ordered(operator.ge),
    "<": _ordered(operator.lt),
    "<=": _ordered(operator.le),
    "==": operator.eq,
    "!=": operator.ne,
    "in": _one_of,
    "contains": _contains,
    "contains_any": _contains_any,
}
LIST_OPERATORS = frozenset({"in", "contains_any"})
NUMBER_OPERATORS = frozenset({">", ">=", "<", "<="})


@dataclass(frozen=True)
class Comparison:
    path: str
    op: str
    expected: Any

    def holds(self, activation: Mapping[str, Any]) -> bool:
        actual = lookup(activation, self.path)
        if actual is MISSING:
            return False
        return OPERATORS[self.op](actual, self.expected)


@dataclass(frozen=True)
class Comparisons:
    """All of `comparisons` hold."""

    source: str
    comparisons: tuple[Comparison, ...]

    def matches(self, activation: Mapping[str, Any]) -> bool:
        return all(c.holds(activation) for c in self.comparisons)


def check_comparison(path: str, op: str, expected: Any) -> Comparison:
    """One comparison, checked; ValueError says what is wrong with it."""
    if op not in OPERATORS:
        raise ValueError(f"unknown operator '{op}' (expected one of {', '.join(OPERATORS)})")
    if op in NUMBER_OPERATORS and not _number(expected):
        raise ValueError(f"'{op}' compares numbers; got {expected!r}")
    if op in LIST_OPERATORS and not isinstance(expected, list):
        raise ValueError(f"'{op}' takes a list; got {expected!r}")
    if op in LIST_OPERATORS:
        expected = tuple(expected)
    return Comparison(path, op, expected)
