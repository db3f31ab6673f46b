"""Reading YAML with line numbers: the one reader behind the config file and the policy.

It walks the node tree PyYAML composes (not the constructed Python objects), so every
error is a `ConfigError` naming the source, the 1-based line and the dotted key path,
as in `agentgw.yaml:7: principals[1].role: ...`. It checks the shape and the type of a
value (a mapping with these keys, a list, a string, a number >= 1); what a value means
(a role, a glob, a port) is for the caller. It never opens files, and never builds
the Python objects of tags such as `!!python/name`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gateway.errors import ConfigError

_TAG = "tag:yaml.org,2002:"
_STR = _TAG + "str"
_KINDS = {
    _STR: "a string",
    _TAG + "int": "an integer",
    _TAG + "float": "a number",
    _TAG + "bool": "a boolean",
    _TAG + "null": "null",
    _TAG + "timestamp": "a timestamp",
    _TAG + "binary": "binary data",
}
# What constructing a scalar with a bad value raises: `!!int abc` a ValueError,
# `!!bool maybe` a KeyError, `!!timestamp x` an AttributeError, unknown tags a YAMLError.
_CONSTRUCTION_ERRORS = (yaml.YAMLError, ValueError, TypeError, LookupError, AttributeError)


def line(node: Node) -> int:
    """The 1-based line a node starts on."""
    return int(node.start_mark.line) + 1


def join(path: str, key: str) -> str:
    """The dotted path of `key` inside `path` ("" is the top of the document)."""
    return f"{path}.{key}" if path else key


def describe(node: Node) -> str:
    """What a node is, for messages: "a mapping", "a list", "an integer", ..."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _KINDS.get(node.tag, f"a value tagged {node.tag}")


class YamlReader:
    """Reads the nodes of one YAML text; every error names `source`, line and key path.

    `document` is what messages call the top-level mapping itself (e.g. "policy").
    """

    def __init__(self, source: str, document: str = "") -> None:
        self.source = source
        self.document = document
        # Turns scalar nodes into values by YAML's own rules (0x1F, 1e3, true); one
        # per reader because a constructor remembers every node it has seen.
        self._constructor = yaml.constructor.SafeConstructor()

    def compose(self, text: str) -> Node | None:
        """The node tree of `text` (one document), or None when it holds none."""
        try:
            return yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            at = mark.line + 1 if mark is not None else 1
            problem = exc.problem or exc.context or "syntax error"
            raise ConfigError(f"{self.source}:{at}: invalid YAML: {problem}") from None
        except yaml.reader.ReaderError as exc:
            # Not a MarkedYAMLError: it carries a character position instead of a mark.
            at = text.count("\n", 0, exc.position) + 1
            raise ConfigError(f"{self.source}:{at}: invalid YAML: {exc.reason}") from None

    def fail(self, node: Node | None, path: str, why: str) -> ConfigError:
        """The error to raise about `node` (None: a value that came from no file line)."""
        at = f":{line(node)}" if node is not None else ""
        where = f"{path}: " if path else ""
        return ConfigError(f"{self.source}{at}: {where}{why}")

    def mapping(
        self,
        node: Node,
        path: str,
        allowed: Iterable[str] | None = None,
        required: Iterable[str] = (),
    ) -> dict[str, Node]:
        """The entries of a mapping with string keys, each once, in file order.

        With `allowed`, any other key is an error listing them in the order given;
        a key of `required` that is missing is an error naming the mapping's line.
        """
        if not isinstance(node, MappingNode):
            raise self.fail(node, path, f"expected a mapping, got {describe(node)}")
        names = None if allowed is None else tuple(allowed)
        entries: dict[str, Node] = {}
        for key_node, value_node in node.value:
            if not (isinstance(key_node, ScalarNode) and key_node.tag == _STR):
                raise self.fail(key_node, path, f"keys must be strings, got {describe(key_node)}")
            key = str(key_node.value)
            if names is not None and key not in names:
                raise self.fail(
                    key_node, join(path, key), f"unknown key (expected one of {', '.join(names)})"
                )
            if key in entries:
                raise self.fail(key_node, join(path, key), "duplicate key")
            entries[key] = value_node
        for key in required:
            if key not in entries:
                raise self.fail(node, path or self.document, f"missing required key '{key}'")
        return entries

    def sequence(self, node: Node, path: str) -> list[tuple[str, Node]]:
        """The items of a list, each with its path (`rules[0]`, `rules[1]`, ...)."""
        if not isinstance(node, SequenceNode):
            raise self.fail(node, path, f"expected a list, got {describe(node)}")
        return [(f"{path}[{index}]", item) for index, item in enumerate(node.value)]

    def scalar(self, node: Node, path: str) -> Any:
        """The value YAML's safe rules make of a scalar: str, int, float, bool, None,
        a date or bytes. Any other tag, or a value its tag cannot hold, is an error."""
        if not isinstance(node, ScalarNode):
            raise self.fail(node, path, "expected a single value")
        try:
            return self._constructor.construct_object(node)
        except _CONSTRUCTION_ERRORS as exc:
            raise self.fail(node, path, f"invalid value ({exc.__class__.__name__})") from None

    def string(self, node: Node, path: str, *, allow_empty: bool = False) -> str:
        if not (isinstance(node, ScalarNode) and node.tag == _STR):
            raise self.fail(node, path, f"expected a string, got {describe(node)}")
        value = str(node.value)
        if not value and not allow_empty:
            raise self.fail(node, path, "expected a non-empty string")
        return value

    def number(self, node: Node, path: str, minimum: float) -> float:
        """A finite integer or float, at least `minimum`, as a float (never a bool)."""
        value = self.scalar(node, path)
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond any float
                number = None
        if number is None or not math.isfinite(number) or number < minimum:
            raise self.fail(node, path, f"expected a number >= {minimum}")
        return number

    def integer(self, node: Node, path: str, minimum: int) -> int:
        value = self.scalar(node, path)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(node, path, f"expected an integer >= {minimum}")
        return value

    def boolean(self, node: Node, path: str) -> bool:
        value = self.scalar(node, path)
        if not isinstance(value, bool):
            raise self.fail(node, path, "expected true or false")
        return value
