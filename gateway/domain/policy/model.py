"""The policy as typed, immutable values: rules with their matchers compiled.

Owns the shape of a loaded policy and nothing else: the loader builds these values
from YAML (and is the only place that validates them), the evaluator reads them. No
I/O and no evaluation logic live here, so a `Policy` can be shared freely between
concurrent decisions and swapped atomically on reload.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

from gateway.domain.actions import Verdict

# A JSON value as written in the policy: numbers are always floats (like request
# parameters), lists are tuples and objects read-only mappings, so values stay immutable.
JsonValue: TypeAlias = "bool | float | str | tuple[JsonValue, ...] | Mapping[str, JsonValue] | None"


class Operator(enum.Enum):
    """A comparison between a request parameter and the policy's `value`."""

    EQ = "eq"
    NE = "ne"
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"
    IN = "in"
    NOT_IN = "not_in"
    CONTAINS = "contains"
    GLOB = "glob"
    EXISTS = "exists"


@dataclass(frozen=True)
class GlobSet:
    """One or more globs (any may match), compiled into one anchored regex."""

    patterns: tuple[str, ...]
    regex: re.Pattern[str]

    def matches(self, value: str) -> bool:
        return self.regex.fullmatch(value) is not None


@dataclass(frozen=True)
class PathSegment:
    """One step of a dotted parameter path.

    `index` is set when the segment is all digits, so the same step can address a
    list element (`items.0`) or, in an object, the key "0".
    """

    key: str
    index: int | None


@dataclass(frozen=True)
class ParameterPredicate:
    path: str
    segments: tuple[PathSegment, ...]
    op: Operator
    value: JsonValue
    # Compiled once for `op: glob`; None for every other operator.
    pattern: re.Pattern[str] | None = None


@dataclass(frozen=True)
class LabelCondition:
    key: str
    glob: GlobSet


@dataclass(frozen=True)
class Match:
    """All present conditions must hold; None or () means "any"."""

    action_type: GlobSet | None = None
    agent: GlobSet | None = None
    resource: GlobSet | None = None
    labels: tuple[LabelCondition, ...] = ()
    parameters: tuple[ParameterPredicate, ...] = ()


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    verdict: Verdict
    reason: str
    match: Match
    quorum: int = 1  # a hold rule: how many distinct approvers release the action


@dataclass(frozen=True)
class Policy:
    version: int
    default_verdict: Verdict
    rules: tuple[Rule, ...]
    source: str
    digest: str  # sha256 hex of the policy text, for audit and reload change detection
