"""Edits to a config's principals keep the rest of the text byte for byte, and what
they write parses as the gateway parses it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.domain.principal_file import add_principal, remove_principal, replace_token
from gateway.domain.principals import Role
from gateway.errors import ConfigError

D1, D2, D3 = "a1" * 32, "b2" * 32, "c3" * 32


def principals_of(text: str) -> dict[str, tuple[str, str]]:
    config = parse_config(text, "c.yaml", Path("."))
    return {p.name: (p.role.value, p.token_sha256) for p in config.principals}


BASE = f"""\
# header comment
listen: 127.0.0.1:1   # trailing
principals:
    # first
    -   name: one
        role: agent
        token_sha256: "{D1}"   # quoted, with a comment
        owns:
          - x
    - name: two
      role: admin
      client_certificate: two.example
# between
log_level: INFO
"""


def test_add_goes_after_the_last_item_with_its_indentation() -> None:
    text = add_principal(BASE, "c.yaml", "three", Role.AUDITOR, D3)
    assert principals_of(text)["three"] == ("auditor", D3)
    assert (
        text.replace(f"    - name: three\n      role: auditor\n      token_sha256: {D3}\n", "")
        == BASE
    )


def test_rotate_changes_the_digest_only_and_keeps_its_quotes_place() -> None:
    text = replace_token(BASE, "c.yaml", "one", D2)
    assert principals_of(text)["one"] == ("agent", D2)
    assert text == BASE.replace(f'"{D1}"', D2)


def test_revoke_removes_the_item_lines_only() -> None:
    text = remove_principal(BASE, "c.yaml", "one")
    assert set(principals_of(text)) == {"two"}
    assert "owns" not in text and "# between" in text and "# first" in text
    assert text == BASE.replace(
        f'    -   name: one\n        role: agent\n        token_sha256: "{D1}"   # quoted, '
        "with a comment\n        owns:\n          - x\n",
        "",
    )


def test_a_principal_known_by_its_certificate_has_no_token_to_rotate() -> None:
    with pytest.raises(ConfigError, match="'two' has no token"):
        replace_token(BASE, "c.yaml", "two", D2)


@pytest.mark.parametrize("name", ["123", "true", "null", "1e3", "a:b", "agent@x/y", "yes"])
def test_names_that_yaml_would_read_as_something_else_are_quoted(name: str) -> None:
    text = add_principal(BASE, "c.yaml", name, Role.AGENT, D3)
    assert principals_of(text)[name] == ("agent", D3)


@pytest.mark.parametrize(
    "text",
    ["listen: 127.0.0.1:1\n", "listen: 127.0.0.1:1", "principals:\nlisten: 127.0.0.1:1\n", ""],
)
def test_a_list_is_made_when_there_is_none(text: str) -> None:
    changed = add_principal(text, "c.yaml", "first", Role.ADMIN, D1)
    assert principals_of(changed) == {"first": ("admin", D1)}


def test_an_empty_flow_list_is_written_again_as_a_block() -> None:
    changed = add_principal("principals: []\nlog_level: INFO\n", "c.yaml", "a", Role.AGENT, D1)
    assert (
        changed
        == f"principals:\n  - name: a\n    role: agent\n    token_sha256: {D1}\nlog_level: INFO\n"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            f'{{"principals": [{{"name": "a", "role": "agent", "token_sha256": "{D1}"}}]}}',
            "flow list",
        ),
        (f"principals:\n  - {{name: a, role: agent, token_sha256: {D1}}}\n", "block mapping"),
        ("principals: 3\n", "expected a list"),
        ("- a\n", "mapping at the top"),
        ("principals: [\n", "not valid YAML"),
    ],
)
def test_shapes_it_cannot_edit_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        add_principal(text, "c.yaml", "b", Role.AGENT, D2)


def test_duplicates_unknown_names_and_the_last_principal_are_refused() -> None:
    with pytest.raises(ConfigError, match="'one' exists already"):
        add_principal(BASE, "c.yaml", "one", Role.AGENT, D3)
    with pytest.raises(ConfigError, match="no principal named 'zed'"):
        replace_token(BASE, "c.yaml", "zed", D3)
    with pytest.raises(ConfigError, match="no principal named 'zed'"):
        remove_principal(BASE, "c.yaml", "zed")
    only = remove_principal(BASE, "c.yaml", "one")
    with pytest.raises(ConfigError, match="only principal"):
        remove_principal(only, "c.yaml", "two")


names = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)
comments = st.sampled_from(["", "  # c", "   # another: comment"])


def _as_written(name: str) -> str:
    """`name` as a careful hand would write it: quoted where YAML would read the bare
    word as something else (`no`, `on`, `null` are booleans or null to YAML 1.1)."""
    return name if yaml.safe_load(name) == name else f'"{name}"'


@settings(max_examples=150, deadline=None)
@example(items=[("no", "")], indent=2, new="yes", trailing_section=False)
@example(items=[("a", "")], indent=2, new="null", trailing_section=True)
@given(
    st.lists(st.tuples(names, comments), min_size=1, max_size=5, unique_by=lambda t: t[0]),
    st.sampled_from([2, 4]),
    names,
    st.booleans(),
)
def test_any_edit_then_its_inverse_gives_the_text_back(
    items: list[tuple[str, str]], indent: int, new: str, trailing_section: bool
) -> None:
    pad = " " * indent
    lines = ["# top", "principals:"]
    for n, (name, comment) in enumerate(items):
        lines += [
            f"{pad}- name: {_as_written(name)}{comment}",
            f"{pad}  role: agent",
            f"{pad}  token_sha256: {n:063x}a",
        ]
    if trailing_section:
        lines += ["", "log_level: INFO  # kept"]
    text = "\n".join(lines) + "\n"
    existing = {name for name, _ in items}
    if new in existing:
        with pytest.raises(ConfigError):
            add_principal(text, "c.yaml", new, Role.AGENT, "f" * 64)
        return
    added = add_principal(text, "c.yaml", new, Role.AGENT, "f" * 64)
    assert principals_of(added)[new] == ("agent", "f" * 64)
    assert set(principals_of(added)) == existing | {new}
    assert remove_principal(added, "c.yaml", new) == text
    first = items[0][0]
    rotated = replace_token(text, "c.yaml", first, "e" * 64)
    assert principals_of(rotated)[first] == ("agent", "e" * 64)
    assert replace_token(rotated, "c.yaml", first, f"{0:063x}a") == text


@pytest.mark.parametrize("digest", ["1" * 64, "1" * 30 + "e" + "1" * 33])
def test_a_digest_yaml_would_read_as_a_number_is_quoted(digest: str) -> None:
    assert principals_of(add_principal(BASE, "c.yaml", "n", Role.AGENT, digest))["n"][1] == digest
    assert principals_of(replace_token(BASE, "c.yaml", "one", digest))["one"][1] == digest
