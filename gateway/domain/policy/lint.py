"""Find the rules of a loaded policy that can never decide an action: the linter behind
`agentgw policy check`.

Owns the reasoning about rules as sets of actions: a rule whose own conditions
contradict each other, and a rule shadowed by an earlier one that matches every action
it matches (the first matching rule decides, so the later one never does). It is
conservative: it reports a rule only when that is certain, so it misses some dead
rules but never calls a live one dead. It reads `Policy` values and, for line numbers,
the policy text; it never loads files, and it leaves the meaning of globs to `globs`
and of parameter operators to `evaluator` instead of restating them.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from gateway.domain.policy.evaluator import predicate_holds
from gateway.domain.policy.globs import GlobDialect, character_class, compile_globs
from gateway.domain.policy.model import (
    GlobSet,
    JsonValue,
    Match,
    Operator,
    ParameterPredicate,
    PathSegment,
    Policy,
    Rule,
)
from gateway.domain.yaml_reader import line


class Severity(enum.Enum):
    ERROR = "error"  # the policy does not do what it says: fails `policy check`
    WARNING = "warning"  # dead but harmless: fails only `policy check --strict`


class FindingKind(enum.Enum):
    NEVER_MATCHES = "never-matches"
    UNREACHABLE_AFTER_CATCH_ALL = "unreachable-after-catch-all"
    REDUNDANT = "redundant"


@dataclass(frozen=True)
class PolicyFinding:
    """One rule that can never decide an action, and why."""

    rule: str
    line: int | None  # where the rule starts in the policy file; None when unknown
    kind: FindingKind
    severity: Severity
    message: str

    def document(self) -> dict[str, Any]:
        """The finding as `policy check -o json` prints it."""
        return {
            "rule": self.rule,
            "line": self.line,
            "kind": self.kind.value,
            "severity": self.severity.value,
            "message": self.message,
        }


def lint_policy(policy: Policy, text: str | None = None) -> tuple[PolicyFinding, ...]:
    """The findings about `policy`, in rule order, at most one per rule.

    `text` is the policy's source, for line numbers; it is used only when its digest
    is the policy's (a file that changed since it was loaded gives no lines).
    """
    lines: dict[str, int] = {}
    if text is not None and hashlib.sha256(text.encode("utf-8")).hexdigest() == policy.digest:
        lines = rule_lines(text)
    findings: list[PolicyFinding] = []
    contradictory: set[str] = set()
    for index, rule in enumerate(policy.rules):
        why = contradiction(rule.match)
        if why is not None:
            contradictory.add(rule.name)
            findings.append(
                PolicyFinding(
                    rule.name,
                    lines.get(rule.name),
                    FindingKind.NEVER_MATCHES,
                    Severity.ERROR,
                    f"rule {rule.name!r} can never match: {why}; fix its conditions or remove it",
                )
            )
            continue
        for earlier in policy.rules[:index]:
            if earlier.name not in contradictory and covers(earlier.match, rule.match):
                findings.append(_shadowed(rule, earlier, lines))
                break
    return tuple(findings)


def rule_lines(text: str) -> dict[str, int]:
    """Rule name -> the 1-based line its entry starts on, read again from the YAML
    (the model keeps no marks); {} for text that is not YAML."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    found: dict[str, int] = {}
    rules = _entry(root, "rules")
    if isinstance(rules, SequenceNode):
        for item in rules.value:
            name = _entry(item, "name")
            if isinstance(name, ScalarNode):
                found.setdefault(str(name.value), line(item))
    return found


def _entry(node: object, key: str) -> object:
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.value == key:
                return value_node
    return None


def _shadowed(rule: Rule, earlier: Rule, lines: Mapping[str, int]) -> PolicyFinding:
    name, other = repr(rule.name), repr(earlier.name)
    at = f" (line {lines[earlier.name]})" if earlier.name in lines else ""
    same = rule.verdict is earlier.verdict and rule.quorum == earlier.quorum
    if matches_everything(earlier.match):
        kind = FindingKind.UNREACHABLE_AFTER_CATCH_ALL
        why = f"rule {name} is unreachable: rule {other}{at} comes first and matches every action"
        fix = f"move {name} above {other} or remove it"
    else:
        kind = FindingKind.REDUNDANT if same else FindingKind.NEVER_MATCHES
        state = "is redundant" if same else "never matches"
        why = (
            f"rule {name} {state}: rule {other}{at} comes first and matches every action it matches"
        )
        fix = f"move {name} above {other}, narrow {other}, or remove {name}"
    if same:
        said = f"{why}, deciding {_outcome(earlier)} as {name} would; remove {name}"
    else:
        said = f"{why}, deciding {_outcome(earlier)}, not {_outcome(rule)}; {fix}"
    severity = Severity.WARNING if same else Severity.ERROR
    return PolicyFinding(rule.name, lines.get(rule.name), kind, severity, said)


def _outcome(rule: Rule) -> str:
    verdict = rule.verdict.name.lower()
    return f"{verdict} with quorum {rule.quorum}" if rule.quorum > 1 else verdict


# -- shadowing: does one match cover another ----------------------------------------------


def matches_everything(match: Match) -> bool:
    """Whether `match` is certain to match every action (no conditions, or only ones
    such as `action_type: "*"` that hold for any action)."""
    return covers(match, Match())


def covers(earlier: Match, later: Match) -> bool:
    """Whether every action `later` matches is certainly matched by `earlier` too.

    False means "not certain", not "no": each condition of `earlier` must follow from
    a condition of `later` on the same field, by the glob forms `glob_covers` knows
    and the predicate implications `predicate_implied` knows.
    """
    return (
        globs_cover(earlier.action_type, later.action_type, GlobDialect.TEXT, ignore_case=True)
        and globs_cover(earlier.agent, later.agent, GlobDialect.PATH)
        and globs_cover(earlier.resource, later.resource, GlobDialect.PATH)
        and _labels_cover(earlier, later)
        and all(predicate_implied(p, later.parameters) for p in earlier.parameters)
    )


def _labels_cover(earlier: Match, later: Match) -> bool:
    # A label condition needs the label present, so `later` must test the same label.
    later_labels = {label.key: label.glob for label in later.labels}
    return all(
        label.key in later_labels
        and globs_cover(label.glob, later_labels[label.key], GlobDialect.TEXT)
        for label in earlier.labels
    )


def globs_cover(
    outer: GlobSet | None,
    inner: GlobSet | None,
    dialect: GlobDialect,
    *,
    ignore_case: bool = False,
) -> bool:
    """Whether every value `inner` matches is certainly matched by `outer` (None is a
    condition left out: it matches anything)."""
    if outer is None:
        return True
    if inner is None:
        return any(_is_catch_all(pattern, dialect) for pattern in outer.patterns)
    return all(_pattern_covered(outer, pattern, dialect, ignore_case) for pattern in inner.patterns)


def _pattern_covered(outer: GlobSet, inner: str, dialect: GlobDialect, ignore_case: bool) -> bool:
    # A literal is covered when the outer globs match it, as the evaluator would. Without
    # case, only for ASCII: every ASCII character has case variants `re` treats alike
    # (k, K and the Kelvin sign K), which is not so for every character.
    if _is_literal(inner) and (inner.isascii() or not ignore_case) and outer.matches(inner):
        return True
    return any(
        glob_covers(pattern, inner, dialect, ignore_case=ignore_case) for pattern in outer.patterns
    )


_STARS = re.compile(r"\*+")


def glob_covers(outer: str, inner: str, dialect: GlobDialect, *, ignore_case: bool = False) -> bool:
    """Whether every value glob `inner` matches is certainly matched by glob `outer`.

    Knows identical globs, catch-alls (`*` in text globs, `**` in path globs), and an
    `outer` of the forms `P*`, `*S`, `P*S` and `*X*` around literal text, against an
    `inner` made of literal text and `*` (`payment.*` covers `payment.create` and
    `payment.create.*`). Anything with `?` or `[...]` is covered only by an identical
    glob or a catch-all; literal values are `globs_cover`'s to match.
    """
    if outer == inner or _is_catch_all(outer, dialect):
        return True
    if not (_is_simple(outer) and _is_simple(inner)):
        return False
    if ignore_case:
        if not (outer.isascii() and inner.isascii()):
            return False
        outer, inner = outer.lower(), inner.lower()
    stars = _STARS.findall(outer)
    # In a path glob only `**` crosses "/"; a single `*` there is not a catch-all run.
    if dialect is GlobDialect.PATH and any(len(run) < 2 for run in stars):
        return False
    pieces = _STARS.split(outer)
    inner_pieces = _STARS.split(inner)
    # Every value of `inner` starts with its first piece, ends with its last, and
    # contains each piece; for a literal that is all one piece, the whole value.
    first, last = inner_pieces[0], inner_pieces[-1]
    if len(pieces) == 2:
        prefix, suffix = pieces
        if len(inner_pieces) == 1:
            return len(inner) >= len(prefix) + len(suffix) and (
                inner.startswith(prefix) and inner.endswith(suffix)
            )
        return first.startswith(prefix) and last.endswith(suffix)
    if len(pieces) == 3 and pieces[0] == "" and pieces[2] == "":
        return any(pieces[1] in piece for piece in inner_pieces)
    return False


def _is_catch_all(pattern: str, dialect: GlobDialect) -> bool:
    stars = bool(pattern) and set(pattern) == {"*"}
    return stars and (dialect is GlobDialect.TEXT or len(pattern) >= 2)


def _is_literal(pattern: str) -> bool:
    return not any(char in pattern for char in "*?[")


def _is_simple(pattern: str) -> bool:
    return not any(char in pattern for char in "?[")


# -- parameters: what a rule's predicates imply --------------------------------------------


class _Absent:
    """A pinned parameter that must be missing (`exists: false`)."""


_ABSENT = _Absent()
_Pinned: TypeAlias = "JsonValue | _Absent"
_LOWER = (Operator.GT, Operator.GTE)
_UPPER = (Operator.LT, Operator.LTE)
_ORDERED = _LOWER + _UPPER


def predicate_implied(wanted: ParameterPredicate, given: Iterable[ParameterPredicate]) -> bool:
    """Whether `wanted` certainly holds whenever every predicate of `given` does."""
    if wanted.op is Operator.NOT_IN and wanted.value == ():
        return True  # true of every value and of a missing one
    for known in given:
        if _implies(known, wanted):
            return True
        # A parameter pinned to a few values (or to absence) decides every predicate on
        # its path and below it: try each value with the evaluator itself.
        values = _pinned_values(known)
        if (
            values is not None
            and _within(known.segments, wanted.segments)
            and all(_holds_with(wanted, known.segments, value) for value in values)
        ):
            return True
    return False


def _implies(known: ParameterPredicate, wanted: ParameterPredicate) -> bool:
    if known.segments != wanted.segments:
        return False
    if known.op is wanted.op and _same_json(known.value, wanted.value):
        return True
    if wanted.op is Operator.EXISTS and wanted.value is True:
        return _needs_presence(known)
    if known.op is Operator.GLOB and wanted.op is Operator.GLOB:
        assert isinstance(known.value, str) and isinstance(wanted.value, str)
        pattern = wanted.pattern
        if _is_literal(known.value) and pattern is not None and pattern.fullmatch(known.value):
            return True
        return glob_covers(wanted.value, known.value, GlobDialect.TEXT)
    if known.op in _ORDERED and wanted.op in _ORDERED:
        return _bound_implies(known, wanted)
    return False


def _bound_implies(known: ParameterPredicate, wanted: ParameterPredicate) -> bool:
    """`amount gt 10` implies `amount gte 5`, `amount gt 5` and `amount gte 10`."""
    have, want = known.value, wanted.value
    assert isinstance(have, float) and isinstance(want, float)
    if known.op in _LOWER and wanted.op in _LOWER:
        loose = known.op is Operator.GT or wanted.op is Operator.GTE
        return have > want or (have == want and loose)
    if known.op in _UPPER and wanted.op in _UPPER:
        loose = known.op is Operator.LT or wanted.op is Operator.LTE
        return have < want or (have == want and loose)
    return False


def _pinned_values(predicate: ParameterPredicate) -> tuple[_Pinned, ...] | None:
    """The only values the parameter can have when `predicate` holds, or None when
    there are too many to list."""
    if predicate.op is Operator.EQ:
        return (predicate.value,)
    if predicate.op is Operator.IN and isinstance(predicate.value, tuple):
        return predicate.value
    if predicate.op is Operator.EXISTS and predicate.value is False:
        return (_ABSENT,)
    return None


def _within(outer: tuple[PathSegment, ...], inner: tuple[PathSegment, ...]) -> bool:
    """Whether path `inner` is `outer` or below it (its value is found inside)."""
    return inner[: len(outer)] == outer


def _holds_with(
    predicate: ParameterPredicate, segments: tuple[PathSegment, ...], value: _Pinned
) -> bool:
    """Whether `predicate` holds of parameters that have `value` at `segments` (and are
    missing it, for `_ABSENT`). What is beside that path does not matter to a
    predicate on or below it."""
    parameters: Any = {}
    if not isinstance(value, _Absent):
        parameters = value
        for segment in reversed(segments):
            parameters = {segment.key: parameters}
    return predicate_holds(predicate, parameters)


def _needs_presence(predicate: ParameterPredicate) -> bool:
    """Whether `predicate` is false when its parameter is missing."""
    return not predicate_holds(predicate, {})


def _same_json(left: JsonValue, right: JsonValue) -> bool:
    """Equal as policy values, type included (so `true` is not `1`)."""
    return json.dumps(_plain(left), sort_keys=True) == json.dumps(_plain(right), sort_keys=True)


def _plain(value: JsonValue) -> Any:
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


# -- contradictions: a rule that matches nothing by itself ---------------------------------


def contradiction(match: Match) -> str | None:
    """Why no action can satisfy all of `match`'s conditions, or None when that is not
    certain."""
    for name, globs, dialect in (
        ("action_type", match.action_type, GlobDialect.TEXT),
        ("agent", match.agent, GlobDialect.PATH),
        ("resource", match.resource, GlobDialect.PATH),
        *((f"labels.{label.key}", label.glob, GlobDialect.TEXT) for label in match.labels),
    ):
        if globs is not None and all(_matches_nothing(p, dialect) for p in globs.patterns):
            return f"{name} {_globs_text(globs.patterns)} matches no value{_EMPTY_CLASS}"
    for predicate in match.parameters:
        glob = predicate.value if predicate.op is Operator.GLOB else None
        if isinstance(glob, str) and _matches_nothing(glob, GlobDialect.TEXT):
            return f"{_show(predicate)} matches no value{_EMPTY_CLASS}"
    return _parameters_contradiction(match.parameters)


_EMPTY_CLASS = " (a character class with no character it can match)"


def _globs_text(patterns: tuple[str, ...]) -> str:
    return json.dumps(patterns[0] if len(patterns) == 1 else list(patterns))


def _matches_nothing(pattern: str, dialect: GlobDialect) -> bool:
    """Whether the glob certainly matches no value: it has a `[...]` set none of whose
    characters it can match, as `[/]` in a path glob. (A `[!...]` set is never
    claimed empty.) Every other part of a glob matches something."""
    for negated, body in _character_classes(pattern):
        if negated:
            continue
        one = compile_globs((f"[{body}]",), dialect)
        # A set matches each character it lists (a range its ends) unless the dialect
        # excludes it, so if none of them matches, nothing does.
        if not any(one.fullmatch(char) for char in body):
            return True
    return False


def _character_classes(pattern: str) -> list[tuple[bool, str]]:
    """The `[...]` sets of a glob the loader accepted, as (negated, members): where they
    start and end, by the rules of `globs.translate_glob`."""
    found: list[tuple[bool, str]] = []
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] == "[":
            negated, members, i = character_class(pattern, i)
            found.append((negated, members))
        i += 1
    return found


def _parameters_contradiction(predicates: tuple[ParameterPredicate, ...]) -> str | None:
    for predicate in predicates:
        if predicate.op is Operator.IN and predicate.value == ():
            return f"{_show(predicate)} holds for no value"
    # A pinned parameter: some predicate on its path, or below it, fails for every one
    # of its values.
    for pin in predicates:
        values = _pinned_values(pin)
        if values is None:
            continue
        others = [p for p in predicates if p is not pin and _within(pin.segments, p.segments)]
        failing: list[ParameterPredicate] = []
        for value in values:
            fails = next((p for p in others if not _holds_with(p, pin.segments, value)), None)
            if fails is None:
                break
            failing.append(fails)
        else:
            if failing:
                shown = " or ".join(dict.fromkeys(_show(p) for p in failing))
                return f"{_show(pin)} leaves no value for {shown}"
    by_path: dict[tuple[PathSegment, ...], list[ParameterPredicate]] = {}
    for predicate in predicates:
        by_path.setdefault(predicate.segments, []).append(predicate)
    for same_path in by_path.values():
        why = _range_contradiction(same_path) or _type_contradiction(same_path)
        if why is not None:
            return why
    return None


def _range_contradiction(predicates: list[ParameterPredicate]) -> str | None:
    for low in (p for p in predicates if p.op in _LOWER):
        for high in (p for p in predicates if p.op in _UPPER):
            lo, hi = low.value, high.value
            assert isinstance(lo, float) and isinstance(hi, float)
            strict = low.op is Operator.GT or high.op is Operator.LT
            if lo > hi or (lo == hi and strict):
                return f"{_show(low)} and {_show(high)} leave no number between them"
    return None


def _type_contradiction(predicates: list[ParameterPredicate]) -> str | None:
    """Two predicates that need different JSON types of the same parameter: ordered
    comparisons a number, `glob` a string, `contains` a string or a list (a list
    only, when its value is not a string)."""
    kinds: dict[str, ParameterPredicate] = {}
    for predicate in predicates:
        if predicate.op in _ORDERED:
            kinds.setdefault("a number", predicate)
        elif predicate.op is Operator.GLOB:
            kinds.setdefault("a string", predicate)
        elif predicate.op is Operator.CONTAINS:
            text = isinstance(predicate.value, str)
            kinds.setdefault("a string or a list" if text else "a list", predicate)
    compatible = {
        frozenset({"a string", "a string or a list"}),
        frozenset({"a list", "a string or a list"}),
    }
    names = list(kinds)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            if frozenset({first, second}) not in compatible:
                return (
                    f"{_show(kinds[first])} needs {first} and {_show(kinds[second])} needs {second}"
                )
    return None


def _show(predicate: ParameterPredicate) -> str:
    """`'amount gt 1000'`, as the predicate reads in the file."""
    value = _plain(predicate.value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"'{predicate.path} {predicate.op.value} {json.dumps(value, ensure_ascii=False)}'"
