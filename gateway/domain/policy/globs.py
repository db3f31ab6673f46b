"""Translate the policy's two glob dialects into compiled regular expressions.

Owns glob syntax only: `TEXT` globs (fnmatch-style, used for action types, labels and
the `glob` parameter operator) and `PATH` globs (for agents and resources, where `*`
and `?` stop at "/" and `**` crosses it). Translation happens once, when a policy is
loaded, so evaluation is a single `fullmatch` per condition. Raises `ValueError` with
a short reason for a malformed glob; the loader turns it into a `ConfigError` that
names the file and line.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence

# Escaped inside a character class: "\\" and "]" would end or alter the class, and
# "^", "[", "&", "~", "|" are reserved (or warned about) by `re` for future set syntax.
_CLASS_SPECIAL = frozenset("\\^[]&~|")


class GlobDialect(enum.Enum):
    TEXT = "text"
    PATH = "path"


def translate_glob(pattern: str, dialect: GlobDialect) -> str:
    """Return a regex source that matches exactly the strings `pattern` matches.

    There are no backslash escapes; a literal `*`, `?` or `[` is written `[*]`,
    `[?]`, `[[]`.
    """
    path = dialect is GlobDialect.PATH
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            out.append("[^/]*" if path and j - i == 1 else ".*")
            i = j
            continue
        if char == "?":
            out.append("[^/]" if path else ".")
        elif char == "[":
            negate, members, j = character_class(pattern, i)
            if j >= n:
                raise ValueError(f"unclosed '[' at position {i}")
            body = "".join("\\" + c if c in _CLASS_SPECIAL else c for c in members)
            char_class = f"[^{body}]" if negate else f"[{body}]"
            # In a path a character class never matches the separator.
            out.append("(?!/)" + char_class if path else char_class)
            i = j
        else:
            out.append(re.escape(char))
        i += 1
    source = "".join(out)
    try:
        re.compile(source)
    except re.error as exc:
        raise ValueError(exc.msg) from None
    return source


def character_class(pattern: str, i: int) -> tuple[bool, str, int]:
    """The `[...]` set that opens at `pattern[i]`: (negated, its members, the index of
    its closing "]", or len(pattern) when it is not closed). A "]" right after "[" or
    "[!" is a member, as in fnmatch."""
    j, n = i + 1, len(pattern)
    negated = j < n and pattern[j] == "!"
    if negated:
        j += 1
    start = j
    if j < n and pattern[j] == "]":
        j += 1
    while j < n and pattern[j] != "]":
        j += 1
    return negated, pattern[start:j], j


def compile_globs(
    patterns: Sequence[str], dialect: GlobDialect, *, ignore_case: bool = False
) -> re.Pattern[str]:
    """One regex that full-matches a value when any of `patterns` matches it."""
    sources = [translate_glob(pattern, dialect) for pattern in patterns]
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.compile("|".join(f"(?:{source})" for source in sources), flags)
