"""Parse policy YAML into a `Policy`, rejecting anything the format does not define.

Owns validation of the policy file, read with `yaml_reader` so every error names the
source, the 1-based line and the key path, as in
`policy.yaml:14: rules[2].match.parameters[0].op: unknown operator 'gte='`. All
globs are compiled here, once, so evaluation never parses anything. It reads files
but never watches them; reloading belongs to `reload.py`.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gateway.domain.actions import Verdict
from gateway.domain.policy.globs import GlobDialect, compile_globs, translate_glob
from gateway.domain.policy.model import (
    GlobSet,
    JsonValue,
    LabelCondition,
    Match,
    Operator,
    ParameterPredicate,
    PathSegment,
    Policy,
    Rule,
)
from gateway.domain.yaml_reader import YamlReader, describe, join, line
from gateway.errors import ConfigError

SUPPORTED_VERSIONS = (1,)

_RULE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_DIGITS = re.compile(r"[0-9]+")

_VERDICTS = {"allow": Verdict.ALLOW, "hold": Verdict.HOLD, "deny": Verdict.DENY}

_POLICY_KEYS = ("version", "default_verdict", "rules")
_RULE_KEYS = ("name", "description", "verdict", "reason", "match", "quorum")
MAX_QUORUM = 10
_MATCH_KEYS = ("action_type", "agent", "resource", "labels", "parameters")
_PARAMETER_KEYS = ("path", "op", "value")

_TAG = "tag:yaml.org,2002:"
_STR = _TAG + "str"
_INT = _TAG + "int"

DEFAULT_POLICY_SOURCE = "gateway/domain/policy/default.yaml"


def load_policy(text: str, source: str) -> Policy:
    """Parse and validate policy `text`; `source` names it in error messages."""
    r = YamlReader(source, document="policy")
    return _policy(r, _compose(r, text), hashlib.sha256(text.encode("utf-8")).hexdigest())


def load_policy_file(path: Path) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read policy: {exc}") from None
    return load_policy(text, str(path))


@functools.cache
def default_policy() -> Policy:
    """The policy shipped with the gateway, served when no policy file is configured."""
    text = (
        resources.files("gateway.domain.policy")
        .joinpath("default.yaml")
        .read_text(encoding="utf-8")
    )
    return load_policy(text, DEFAULT_POLICY_SOURCE)


def _compose(r: YamlReader, text: str) -> MappingNode:
    root = r.compose(text)
    if root is None:
        raise ConfigError(f"{r.source}:1: policy is empty")
    if not isinstance(root, MappingNode):
        raise r.fail(
            root,
            "",
            f"policy must be a mapping with keys {', '.join(_POLICY_KEYS)}, got {describe(root)}",
        )
    return root


def _policy(r: YamlReader, root: MappingNode, digest: str) -> Policy:
    entries = r.mapping(root, "", _POLICY_KEYS, required=_POLICY_KEYS)
    version_node = entries["version"]
    version = None
    if isinstance(version_node, ScalarNode) and version_node.tag == _INT:
        version = r.scalar(version_node, "version")
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
        shown = version_node.value if isinstance(version_node, ScalarNode) else "?"
        raise r.fail(
            version_node, "version", f"unsupported version {shown!r} (supported: {supported})"
        )
    return Policy(
        version=int(version),
        default_verdict=_verdict(r, entries["default_verdict"], "default_verdict"),
        rules=_rules(r, entries["rules"], "rules"),
        source=r.source,
        digest=digest,
    )


def _rules(r: YamlReader, node: Node, path: str) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    first_line: dict[str, int] = {}
    for rule_path, rule_node in r.sequence(node, path):
        entries = r.mapping(rule_node, rule_path, _RULE_KEYS, required=("name", "verdict"))
        rule = _rule(r, entries, rule_path)
        name_node = entries["name"]
        if rule.name in first_line:
            raise r.fail(
                name_node,
                join(rule_path, "name"),
                f"duplicate rule name {rule.name!r} (first used on line {first_line[rule.name]})",
            )
        first_line[rule.name] = line(name_node)
        rules.append(rule)
    return tuple(rules)


def _rule(r: YamlReader, entries: dict[str, Node], path: str) -> Rule:
    name = r.string(entries["name"], join(path, "name"), allow_empty=True)
    if not _RULE_NAME.fullmatch(name):
        raise r.fail(
            entries["name"],
            join(path, "name"),
            f"invalid rule name {name!r} (use letters, digits, '_', '.', '-')",
        )
    description = ""
    if "description" in entries:
        description = r.string(entries["description"], join(path, "description"), allow_empty=True)
    reason = f"matched rule {name}"
    if "reason" in entries:
        reason = r.string(entries["reason"], join(path, "reason"), allow_empty=True)
    match = Match()
    if "match" in entries:
        match = _match(r, entries["match"], join(path, "match"))
    verdict = _verdict(r, entries["verdict"], join(path, "verdict"))
    quorum = 1
    if "quorum" in entries:
        where = join(path, "quorum")
        quorum = r.integer(entries["quorum"], where, 1)
        if verdict is not Verdict.HOLD:
            raise r.fail(entries["quorum"], where, "only a hold rule can need a quorum")
        if quorum > MAX_QUORUM:
            raise r.fail(entries["quorum"], where, f"expected at most {MAX_QUORUM} approvers")
    return Rule(
        name=name,
        description=description,
        verdict=verdict,
        reason=reason,
        match=match,
        quorum=quorum,
    )


def _verdict(r: YamlReader, node: Node, path: str) -> Verdict:
    text = r.string(node, path, allow_empty=True)
    verdict = _VERDICTS.get(text)
    if verdict is None:
        raise r.fail(
            node, path, f"unknown verdict {text!r} (expected one of {', '.join(_VERDICTS)})"
        )
    return verdict


def _match(r: YamlReader, node: Node, path: str) -> Match:
    entries = r.mapping(node, path, _MATCH_KEYS)

    def globs(key: str, dialect: GlobDialect, ignore_case: bool = False) -> GlobSet | None:
        if key not in entries:
            return None
        return _globs(r, entries[key], join(path, key), dialect, ignore_case)

    labels: tuple[LabelCondition, ...] = ()
    if "labels" in entries:
        labels = _labels(r, entries["labels"], join(path, "labels"))
    parameters: tuple[ParameterPredicate, ...] = ()
    if "parameters" in entries:
        items = r.sequence(entries["parameters"], join(path, "parameters"))
        parameters = tuple(_predicate(r, item, item_path) for item_path, item in items)
    return Match(
        action_type=globs("action_type", GlobDialect.TEXT, ignore_case=True),
        agent=globs("agent", GlobDialect.PATH),
        resource=globs("resource", GlobDialect.PATH),
        labels=labels,
        parameters=parameters,
    )


# -- conditions ------------------------------------------------------------------------


def _globs(
    r: YamlReader, node: Node, path: str, dialect: GlobDialect, ignore_case: bool
) -> GlobSet:
    items: list[tuple[str, Node]]
    if isinstance(node, SequenceNode):
        items = r.sequence(node, path)
        if not items:
            raise r.fail(node, path, "expected at least one glob, got an empty list")
    elif isinstance(node, ScalarNode) and node.tag == _STR:
        items = [(path, node)]
    else:
        raise r.fail(node, path, f"expected a glob or a list of globs, got {describe(node)}")
    patterns = tuple(_glob(r, item, item_path, dialect) for item_path, item in items)
    return GlobSet(patterns, compile_globs(patterns, dialect, ignore_case=ignore_case))


def _glob(r: YamlReader, node: Node, path: str, dialect: GlobDialect) -> str:
    pattern = r.string(node, path, allow_empty=True)
    try:
        translate_glob(pattern, dialect)
    except ValueError as exc:
        raise r.fail(node, path, f"invalid glob {pattern!r}: {exc}") from None
    return pattern


def _labels(r: YamlReader, node: Node, path: str) -> tuple[LabelCondition, ...]:
    if not isinstance(node, MappingNode):
        raise r.fail(node, path, f"expected a mapping of label globs, got {describe(node)}")
    return tuple(
        LabelCondition(key, _globs(r, glob, join(path, key), GlobDialect.TEXT, ignore_case=False))
        for key, glob in r.mapping(node, path).items()
    )


def _predicate(r: YamlReader, node: Node, path: str) -> ParameterPredicate:
    entries = r.mapping(node, path, _PARAMETER_KEYS, required=_PARAMETER_KEYS)
    dotted = r.string(entries["path"], join(path, "path"), allow_empty=True)
    keys = dotted.split(".")
    if not all(keys):
        raise r.fail(
            entries["path"],
            join(path, "path"),
            f"invalid path {dotted!r} (dot-separated keys, none empty)",
        )
    segments = tuple(PathSegment(key, int(key) if _DIGITS.fullmatch(key) else None) for key in keys)

    op_node = entries["op"]
    op_text = r.string(op_node, join(path, "op"), allow_empty=True)
    try:
        op = Operator(op_text)
    except ValueError:
        raise r.fail(
            op_node,
            join(path, "op"),
            f"unknown operator {op_text!r} (expected one of "
            f"{', '.join(o.value for o in Operator)})",
        ) from None

    value_node = entries["value"]
    value_path = join(path, "value")
    value = _json(r, value_node, value_path)
    pattern: re.Pattern[str] | None = None
    if op in (Operator.GT, Operator.GTE, Operator.LT, Operator.LTE):
        if not isinstance(value, float) or isinstance(value, bool):
            raise r.fail(value_node, value_path, f"'{op.value}' needs a number")
    elif op in (Operator.IN, Operator.NOT_IN):
        if not isinstance(value, tuple):
            raise r.fail(value_node, value_path, f"'{op.value}' needs a list")
    elif op is Operator.GLOB:
        glob = _glob(r, value_node, value_path, GlobDialect.TEXT)
        pattern = compile_globs((glob,), GlobDialect.TEXT)
    elif op is Operator.EXISTS and not isinstance(value, bool):
        raise r.fail(value_node, value_path, "'exists' needs true or false")
    return ParameterPredicate(dotted, segments, op, value, pattern)


def _json(r: YamlReader, node: Node, path: str, within: frozenset[int] = frozenset()) -> JsonValue:
    """A parameter value as JSON. `within` holds the collections being read, so an
    alias of one of them inside itself (`&v [*v]`) is refused, not followed forever."""
    if isinstance(node, SequenceNode | MappingNode):
        if id(node) in within:
            raise r.fail(node, path, "refers to itself through a YAML alias")
        within = within | {id(node)}
    if isinstance(node, SequenceNode):
        return tuple(
            _json(r, item, item_path, within) for item_path, item in r.sequence(node, path)
        )
    if isinstance(node, MappingNode):
        entries = r.mapping(node, path)
        return MappingProxyType({k: _json(r, v, join(path, k), within) for k, v in entries.items()})
    if node.tag in (_STR, _TAG + "null", _TAG + "bool"):
        scalar: str | bool | None = r.scalar(node, path)
        return scalar
    if node.tag in (_INT, _TAG + "float"):
        # Request parameters carry every number as a float, so the policy does too.
        try:
            number = float(r.scalar(node, path))
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise r.fail(node, path, f"expected a finite number, got {node.value!r}")
        return number
    raise r.fail(
        node,
        path,
        f"expected a JSON value (null, boolean, number, string, list or mapping), "
        f"got {describe(node)}; quote it to make it a string",
    )
