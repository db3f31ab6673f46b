"""Edits to the `principals:` list of a config file's text that keep the rest of it.

`agentgw tokens issue|rotate|revoke` change one principal and nothing else: the
comments, the order, the quoting and every other section stay byte for byte. The
edits work on the text through the positions of the nodes PyYAML composes, not by
dumping parsed objects again (which would drop the comments). Only a block list
(`- name: ...` items) can be edited this way; a flow list (`principals: [...]`) is
refused with a message. It neither reads nor writes files, and checks no more than
it needs to find its way: the caller parses the result as the gateway would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gateway.domain.principals import Role
from gateway.errors import ConfigError


@dataclass(frozen=True)
class _Item:
    """One principal of the list: its mapping node and where it is in the text."""

    name: str
    node: MappingNode
    first_line: int  # 0-based line of its "- "
    end: int  # index just past the end of its last line (its newline included)


def add_principal(text: str, source: str, name: str, role: Role, token_sha256: str) -> str:
    """The text with a new principal at the end of the list (the list is made if
    there is none). ConfigError if one of that name exists."""
    root = _root(text, source)
    entry = [
        f"name: {_scalar(name)}",
        f"role: {role.value}",
        f"token_sha256: {_scalar(token_sha256)}",
    ]
    principals = _principals_node(root, source)
    if principals is None:
        block = "principals:\n" + "".join(
            f"  {'-' if i == 0 else ' '} {line}\n" for i, line in enumerate(entry)
        )
        return _ending_with_newline(text) + block
    items = _items(text, principals, source)
    if any(item.name == name for item in items):
        raise ConfigError(f"{source}: principals: '{name}' exists already")
    if not items:
        # `principals:` with nothing under it, or `principals: []` (an empty flow
        # list has nothing to keep): written again as a block list.
        key_end = principals.end_mark.index
        key_line_start = text.rfind("\n", 0, principals.start_mark.index) + 1
        head = text[:key_line_start] + "principals:\n"
        block = "".join(f"  {'-' if i == 0 else ' '} {line}\n" for i, line in enumerate(entry))
        return head + block + _rest_of_line_dropped(text, key_end)
    last = items[-1]
    dash = _dash_column(text, last)
    column = last.node.start_mark.column
    block = f"{' ' * dash}- {entry[0]}\n" + "".join(f"{' ' * column}{e}\n" for e in entry[1:])
    before = _ending_with_newline(text[: last.end])
    return before + block + text[last.end :]


def replace_token(text: str, source: str, name: str, token_sha256: str) -> str:
    """The text with principal `name`'s token_sha256 replaced. ConfigError if there
    is no such principal, or it has no token (it is known by its certificate only)."""
    item = _find(text, source, name)
    for key, value in item.node.value:
        if isinstance(key, ScalarNode) and key.value == "token_sha256":
            start, end = value.start_mark.index, value.end_mark.index
            return text[:start] + _scalar(token_sha256) + text[end:]
    raise ConfigError(
        f"{source}: principals: '{name}' has no token (it is known by its client "
        "certificate); add a token_sha256 to it by hand if it should have one"
    )


def remove_principal(text: str, source: str, name: str) -> str:
    """The text without principal `name`. ConfigError if there is none, or it is the
    only one (the gateway needs at least one principal)."""
    root = _root(text, source)
    principals = _principals_node(root, source)
    items = _items(text, principals, source) if principals is not None else []
    found = [item for item in items if item.name == name]
    if not found:
        raise ConfigError(f"{source}: principals: no principal named '{name}'")
    if len(items) == 1:
        raise ConfigError(
            f"{source}: principals: '{name}' is the only principal; the gateway needs one"
        )
    item = found[0]
    start = _line_start(text, item.first_line)
    return text[:start] + text[item.end :]


def _find(text: str, source: str, name: str) -> _Item:
    principals = _principals_node(_root(text, source), source)
    items = _items(text, principals, source) if principals is not None else []
    for item in items:
        if item.name == name:
            return item
    raise ConfigError(f"{source}: principals: no principal named '{name}'")


def _root(text: str, source: str) -> MappingNode | None:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    if root is None:
        return None
    if not isinstance(root, MappingNode):
        raise ConfigError(f"{source}: expected a mapping at the top of the file")
    return root


def _principals_node(root: MappingNode | None, source: str) -> Node | None:
    if root is None:
        return None
    for key, value in root.value:
        if isinstance(key, ScalarNode) and key.value == "principals":
            if isinstance(value, ScalarNode) and value.value in ("", "~", "null"):
                return value  # `principals:` with nothing under it
            if not isinstance(value, SequenceNode):
                raise ConfigError(
                    f"{source}:{key.start_mark.line + 1}: principals: expected a list"
                )
            if value.flow_style and value.value:
                raise ConfigError(
                    f"{source}:{key.start_mark.line + 1}: principals: written as a flow list "
                    "([...]); write it as a block list (one '- name: ...' item per "
                    "principal) to change it with agentgw tokens"
                )
            return value
    return None


def _items(text: str, principals: Node, source: str) -> list[_Item]:
    if not isinstance(principals, SequenceNode):
        return []
    items = []
    for node in principals.value:
        if not isinstance(node, MappingNode) or node.flow_style:
            line = node.start_mark.line + 1
            raise ConfigError(
                f"{source}:{line}: principals: each principal must be a block mapping "
                "(name:, role:, ... on lines of their own) to change it with agentgw tokens"
            )
        names = [
            v.value
            for k, v in node.value
            if isinstance(k, ScalarNode) and k.value == "name" and isinstance(v, ScalarNode)
        ]
        end = _line_end(text, _last_index(node))
        items.append(_Item(names[0] if names else "", node, node.start_mark.line, end))
    return items


def _last_index(node: Node) -> int:
    """Where the last character of a node's text is: the end of its last scalar (a
    block collection's own end mark lies past the comments and blank lines after it)."""
    if isinstance(node, ScalarNode) or getattr(node, "flow_style", False):
        return int(node.end_mark.index)
    if isinstance(node, MappingNode) and node.value:
        return _last_index(node.value[-1][1])
    if isinstance(node, SequenceNode) and node.value:
        return _last_index(node.value[-1])
    return int(node.end_mark.index)


def _line_end(text: str, index: int) -> int:
    """Index just past the newline that ends the line holding `index` (or the end)."""
    newline = text.find("\n", max(index - 1, 0))
    return len(text) if newline < 0 else newline + 1


def _line_start(text: str, line: int) -> int:
    start = 0
    for _ in range(line):
        start = text.index("\n", start) + 1
    return start


def _dash_column(text: str, item: _Item) -> int:
    """The column of the "- " that opens an item (PyYAML keeps the mapping's, after it)."""
    start = _line_start(text, item.first_line)
    return text.rfind("-", start, start + item.node.start_mark.column) - start


def _rest_of_line_dropped(text: str, index: int) -> str:
    """The text after the line that holds `index` (the rest of an emptied key's line)."""
    return text[_line_end(text, index) :] if index < len(text) else ""


def _ending_with_newline(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


def _scalar(value: str) -> str:
    """`value` as YAML: plain when it reads back as the same string, else quoted (a
    name such as `true`, a digest of digits only or with one `e`: a number to YAML)."""
    try:
        plain = yaml.safe_load(value)
    except yaml.YAMLError:
        plain = None
    return value if plain == value else json.dumps(value)
