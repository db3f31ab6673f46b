"""Parse policy YAML into a `Policy`, rejecting anything the format does not define.

Owns validation of the policy file: it walks YAML's node tree (not the constructed
Python objects) so every error can name the source, the 1-based line and the key path,
as in `policy.yaml:14: rules[2].match.parameters[0].op: unknown operator 'gte='`. All
globs are compiled here, once, so evaluation never parses anything. It reads files
but never watches them; reloading belongs to `reload.py`.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import NoReturn

import yaml
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
from gateway.errors import ConfigError

SUPPORTED_VERSIONS = (1,)

_RULE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_DIGITS = re.compile(r"[0-9]+")

_VERDICTS = {"allow": Verdict.ALLOW, "hold": Verdict.HOLD, "deny": Verdict.DENY}

_POLICY_KEYS = ("version", "default_verdict", "rules")
_RULE_KEYS = ("name", "description", "verdict", "reason", "match")
_MATCH_KEYS = ("action_type", "agent", "resource", "labels", "parameters")
_PARAMETER_KEYS = ("path", "op", "value")

_TAG = "tag:yaml.org,2002:"
_TAG_NAMES = {
    _TAG + "str": "a string",
    _TAG + "int": "an integer",
    _TAG + "float": "a number",
    _TAG + "bool": "a boolean",
    _TAG + "null": "null",
    _TAG + "timestamp": "a timestamp",
    _TAG + "binary": "binary data",
}

DEFAULT_POLICY_SOURCE = "gateway/domain/policy/default.yaml"


def load_policy(text: str, source: str) -> Policy:
    """Parse and validate policy `text`; `source` names it in error messages."""
    root = _compose(text, source)
    return _Parser(source).policy(root, hashlib.sha256(text.encode("utf-8")).hexdigest())


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


def _compose(text: str, source: str) -> MappingNode:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(f"{source}:{line}: invalid YAML: {problem}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(f"{source}:{line}: invalid YAML: {exc.reason}") from None
    if root is None:
        raise ConfigError(f"{source}:1: policy is empty")
    if not isinstance(root, MappingNode):
        raise ConfigError(
            f"{source}:{_line(root)}: policy must be a mapping with keys "
            f"{', '.join(_POLICY_KEYS)}, got {_describe(root)}"
        )
    return root


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _TAG_NAMES.get(node.tag, f"a value tagged {node.tag}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Parser:
    def __init__(self, source: str) -> None:
        self._source = source
        # Turns scalar nodes into Python values by YAML's own rules (0x1F, 1e3, true);
        # one per parse because a constructor remembers every node it has seen.
        self._scalars = yaml.constructor.SafeConstructor()

    def _fail(self, node: Node, path: str, why: str) -> NoReturn:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{self._source}:{_line(node)}: {where}{why}")

    # -- structure -----------------------------------------------------------------

    def _mapping(
        self, node: Node, path: str, allowed: Iterable[str], required: Iterable[str] = ()
    ) -> dict[str, Node]:
        if not isinstance(node, MappingNode):
            self._fail(node, path, f"expected a mapping, got {_describe(node)}")
        allowed = tuple(allowed)
        entries: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node, path)
            if key not in allowed:
                self._fail(
                    key_node,
                    _join(path, key),
                    f"unknown key (expected one of {', '.join(allowed)})",
                )
            if key in entries:
                self._fail(key_node, _join(path, key), "duplicate key")
            entries[key] = value_node
        for key in required:
            if key not in entries:
                self._fail(node, path or "policy", f"missing required key '{key}'")
        return entries

    def _key(self, node: Node, path: str) -> str:
        if not (isinstance(node, ScalarNode) and node.tag == _TAG + "str"):
            self._fail(node, path, f"keys must be strings, got {_describe(node)}")
        return str(node.value)

    def _sequence(self, node: Node, path: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            self._fail(node, path, f"expected a list, got {_describe(node)}")
        return list(node.value)

    def _string(self, node: Node, path: str) -> str:
        if not (isinstance(node, ScalarNode) and node.tag == _TAG + "str"):
            self._fail(node, path, f"expected a string, got {_describe(node)}")
        return str(node.value)

    def _verdict(self, node: Node, path: str) -> Verdict:
        text = self._string(node, path)
        verdict = _VERDICTS.get(text)
        if verdict is None:
            self._fail(
                node, path, f"unknown verdict {text!r} (expected one of {', '.join(_VERDICTS)})"
            )
        return verdict

    # -- policy and rules ----------------------------------------------------------

    def policy(self, root: MappingNode, digest: str) -> Policy:
        entries = self._mapping(root, "", _POLICY_KEYS, required=_POLICY_KEYS)
        version_node = entries["version"]
        version = None
        if isinstance(version_node, ScalarNode) and version_node.tag == _TAG + "int":
            version = self._scalars.construct_object(version_node)
        if version not in SUPPORTED_VERSIONS:
            supported = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
            shown = version_node.value if isinstance(version_node, ScalarNode) else "?"
            self._fail(
                version_node,
                "version",
                f"unsupported version {shown!r} (supported: {supported})",
            )
        default_verdict = self._verdict(entries["default_verdict"], "default_verdict")
        rules: list[Rule] = []
        first_line: dict[str, int] = {}
        for index, rule_node in enumerate(self._sequence(entries["rules"], "rules")):
            rule = self._rule(rule_node, f"rules[{index}]")
            # _rule accepted the mapping, so this second look cannot fail.
            name_node = self._mapping(rule_node, f"rules[{index}]", _RULE_KEYS)["name"]
            if rule.name in first_line:
                self._fail(
                    name_node,
                    f"rules[{index}].name",
                    f"duplicate rule name {rule.name!r} (first used on line "
                    f"{first_line[rule.name]})",
                )
            first_line[rule.name] = _line(name_node)
            rules.append(rule)
        return Policy(
            version=int(version),
            default_verdict=default_verdict,
            rules=tuple(rules),
            source=self._source,
            digest=digest,
        )

    def _rule(self, node: Node, path: str) -> Rule:
        entries = self._mapping(node, path, _RULE_KEYS, required=("name", "verdict"))
        name = self._string(entries["name"], _join(path, "name"))
        if not _RULE_NAME.fullmatch(name):
            self._fail(
                entries["name"],
                _join(path, "name"),
                f"invalid rule name {name!r} (use letters, digits, '_', '.', '-')",
            )
        description = ""
        if "description" in entries:
            description = self._string(entries["description"], _join(path, "description"))
        reason = f"matched rule {name}"
        if "reason" in entries:
            reason = self._string(entries["reason"], _join(path, "reason"))
        match = Match()
        if "match" in entries:
            match = self._match(entries["match"], _join(path, "match"))
        return Rule(
            name=name,
            description=description,
            verdict=self._verdict(entries["verdict"], _join(path, "verdict")),
            reason=reason,
            match=match,
        )

    def _match(self, node: Node, path: str) -> Match:
        entries = self._mapping(node, path, _MATCH_KEYS)

        def globs(key: str, dialect: GlobDialect, ignore_case: bool = False) -> GlobSet | None:
            if key not in entries:
                return None
            return self._globs(entries[key], _join(path, key), dialect, ignore_case)

        labels: tuple[LabelCondition, ...] = ()
        if "labels" in entries:
            labels = self._labels(entries["labels"], _join(path, "labels"))
        parameters: tuple[ParameterPredicate, ...] = ()
        if "parameters" in entries:
            parameters_path = _join(path, "parameters")
            parameters = tuple(
                self._predicate(item, f"{parameters_path}[{index}]")
                for index, item in enumerate(self._sequence(entries["parameters"], parameters_path))
            )
        return Match(
            action_type=globs("action_type", GlobDialect.TEXT, ignore_case=True),
            agent=globs("agent", GlobDialect.PATH),
            resource=globs("resource", GlobDialect.PATH),
            labels=labels,
            parameters=parameters,
        )

    # -- conditions ----------------------------------------------------------------

    def _globs(self, node: Node, path: str, dialect: GlobDialect, ignore_case: bool) -> GlobSet:
        items: list[tuple[Node, str]]
        if isinstance(node, SequenceNode):
            if not node.value:
                self._fail(node, path, "expected at least one glob, got an empty list")
            items = [
                (item, f"{path}[{index}]") for index, item in enumerate(self._sequence(node, path))
            ]
        elif isinstance(node, ScalarNode) and node.tag == _TAG + "str":
            items = [(node, path)]
        else:
            self._fail(node, path, f"expected a glob or a list of globs, got {_describe(node)}")
        patterns = tuple(self._glob(item, item_path, dialect) for item, item_path in items)
        return GlobSet(patterns, compile_globs(patterns, dialect, ignore_case=ignore_case))

    def _glob(self, node: Node, path: str, dialect: GlobDialect) -> str:
        pattern = self._string(node, path)
        try:
            translate_glob(pattern, dialect)
        except ValueError as exc:
            self._fail(node, path, f"invalid glob {pattern!r}: {exc}")
        return pattern

    def _labels(self, node: Node, path: str) -> tuple[LabelCondition, ...]:
        if not isinstance(node, MappingNode):
            self._fail(node, path, f"expected a mapping of label globs, got {_describe(node)}")
        conditions: list[LabelCondition] = []
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = self._key(key_node, path)
            if key in seen:
                self._fail(key_node, _join(path, key), "duplicate key")
            seen.add(key)
            glob = self._globs(value_node, _join(path, key), GlobDialect.TEXT, ignore_case=False)
            conditions.append(LabelCondition(key, glob))
        return tuple(conditions)

    def _predicate(self, node: Node, path: str) -> ParameterPredicate:
        entries = self._mapping(node, path, _PARAMETER_KEYS, required=_PARAMETER_KEYS)
        dotted = self._string(entries["path"], _join(path, "path"))
        keys = dotted.split(".")
        if not all(keys):
            self._fail(
                entries["path"],
                _join(path, "path"),
                f"invalid path {dotted!r} (dot-separated keys, none empty)",
            )
        segments = tuple(
            PathSegment(key, int(key) if _DIGITS.fullmatch(key) else None) for key in keys
        )

        op_node = entries["op"]
        op_text = self._string(op_node, _join(path, "op"))
        try:
            op = Operator(op_text)
        except ValueError:
            self._fail(
                op_node,
                _join(path, "op"),
                f"unknown operator {op_text!r} (expected one of "
                f"{', '.join(o.value for o in Operator)})",
            )

        value_node = entries["value"]
        value_path = _join(path, "value")
        value = self._json(value_node, value_path)
        pattern: re.Pattern[str] | None = None
        if op in (Operator.GT, Operator.GTE, Operator.LT, Operator.LTE):
            if not isinstance(value, float) or isinstance(value, bool):
                self._fail(value_node, value_path, f"'{op.value}' needs a number")
        elif op in (Operator.IN, Operator.NOT_IN):
            if not isinstance(value, tuple):
                self._fail(value_node, value_path, f"'{op.value}' needs a list")
        elif op is Operator.GLOB:
            glob = self._glob(value_node, value_path, GlobDialect.TEXT)
            pattern = compile_globs((glob,), GlobDialect.TEXT)
        elif op is Operator.EXISTS and not isinstance(value, bool):
            self._fail(value_node, value_path, "'exists' needs true or false")
        return ParameterPredicate(dotted, segments, op, value, pattern)

    def _json(self, node: Node, path: str) -> JsonValue:
        if isinstance(node, SequenceNode):
            return tuple(
                self._json(item, f"{path}[{index}]") for index, item in enumerate(node.value)
            )
        if isinstance(node, MappingNode):
            result: dict[str, JsonValue] = {}
            for key_node, value_node in node.value:
                key = self._key(key_node, path)
                if key in result:
                    self._fail(key_node, _join(path, key), "duplicate key")
                result[key] = self._json(value_node, _join(path, key))
            return MappingProxyType(result)
        if node.tag in (_TAG + "str", _TAG + "null", _TAG + "bool"):
            scalar: str | bool | None = self._scalars.construct_object(node)
            return scalar
        if node.tag in (_TAG + "int", _TAG + "float"):
            # Request parameters carry every number as a float, so the policy does too.
            try:
                number = float(self._scalars.construct_object(node))
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                self._fail(node, path, f"expected a finite number, got {node.value!r}")
            return number
        self._fail(
            node,
            path,
            f"expected a JSON value (null, boolean, number, string, list or mapping), "
            f"got {_describe(node)}; quote it to make it a string",
        )
