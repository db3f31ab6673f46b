"""The YAML reader: every error names the source, the line and the dotted key path."""

from __future__ import annotations

import textwrap

import pytest
from yaml.nodes import Node

from gateway.domain.yaml_reader import YamlReader, describe, join, line
from gateway.errors import ConfigError

SOURCE = "file.yaml"


def compose(body: str) -> tuple[YamlReader, Node]:
    reader = YamlReader(SOURCE)
    root = reader.compose(textwrap.dedent(body).lstrip("\n"))
    assert root is not None
    return reader, root


def value(body: str) -> tuple[YamlReader, Node]:
    """The reader and the node of the only key, `k`."""
    reader, root = compose(body)
    return reader, reader.mapping(root, "", ("k",))["k"]


def error(call: object) -> str:
    assert callable(call)
    with pytest.raises(ConfigError) as caught:
        call()
    return str(caught.value)


# -- structure -----------------------------------------------------------------------


def test_nested_keys_name_their_own_line_and_dotted_path() -> None:
    r, root = compose(
        """
        outer:
          # a comment

          inner:
            - first: 1
            - second: nope
        """
    )
    outer = r.mapping(root, "", ("outer",))["outer"]
    inner = r.mapping(outer, "outer", ("inner",))["inner"]
    (first_path, _), (second_path, second) = r.sequence(inner, "outer.inner")
    assert (first_path, second_path) == ("outer.inner[0]", "outer.inner[1]")
    entries = r.mapping(second, second_path, ("second",))
    assert line(entries["second"]) == 6
    message = error(lambda: r.integer(entries["second"], join(second_path, "second"), 1))
    assert message == "file.yaml:6: outer.inner[1].second: expected an integer >= 1"


def test_unknown_key_lists_the_allowed_ones_in_the_order_given() -> None:
    r, root = compose("b: 1\nzz: 2\n")
    assert error(lambda: r.mapping(root, "", ("b", "a"))) == (
        "file.yaml:2: zz: unknown key (expected one of b, a)"
    )


def test_unknown_nested_key_names_its_path() -> None:
    r, root = compose("top:\n  good: 1\n  bad: 2\n")
    top = r.mapping(root, "", ("top",))["top"]
    assert error(lambda: r.mapping(top, "top", ("good",))).startswith(
        "file.yaml:3: top.bad: unknown key"
    )


def test_duplicate_key_names_the_second_one() -> None:
    r, root = compose("a: 1\nb: 2\na: 3\n")
    assert error(lambda: r.mapping(root, "", ("a", "b"))) == "file.yaml:3: a: duplicate key"


def test_duplicate_key_is_refused_in_a_mapping_of_any_keys() -> None:
    r, root = compose("m:\n  x: 1\n  x: 2\n")
    m = r.mapping(root, "")["m"]
    assert error(lambda: r.mapping(m, "m")) == "file.yaml:3: m.x: duplicate key"


def test_a_mapping_of_any_keys_keeps_the_file_order() -> None:
    r, root = compose("z: 1\na: 2\nm: 3\n")
    assert list(r.mapping(root, "")) == ["z", "a", "m"]


def test_keys_must_be_strings() -> None:
    r, root = compose("m:\n  1: one\n")
    m = r.mapping(root, "")["m"]
    assert (
        error(lambda: r.mapping(m, "m")) == "file.yaml:2: m: keys must be strings, got an integer"
    )


def test_missing_required_key_names_the_mapping() -> None:
    r, root = compose("list:\n  - a: 1\n")
    [(path, item)] = r.sequence(r.mapping(root, "")["list"], "list")
    assert error(lambda: r.mapping(item, path, ("a", "b"), required=("a", "b"))) == (
        "file.yaml:2: list[0]: missing required key 'b'"
    )


def test_missing_required_key_at_the_top_uses_the_document_name() -> None:
    r = YamlReader(SOURCE, document="policy")
    root = r.compose("a: 1\n")
    assert root is not None
    assert error(lambda: r.mapping(root, "", ("a", "b"), required=("b",))) == (
        "file.yaml:1: policy: missing required key 'b'"
    )


@pytest.mark.parametrize(
    ("body", "call", "message"),
    [
        ("k: [1]\n", "mapping", "file.yaml:1: k: expected a mapping, got a list"),
        ("k: {a: 1}\n", "sequence", "file.yaml:1: k: expected a list, got a mapping"),
        ("k: 5\n", "string", "file.yaml:1: k: expected a string, got an integer"),
        ("k: 1.5\n", "string", "file.yaml:1: k: expected a string, got a number"),
        ("k: true\n", "string", "file.yaml:1: k: expected a string, got a boolean"),
        ("k:\n", "string", "file.yaml:1: k: expected a string, got null"),
        ("k: 2024-01-01\n", "string", "file.yaml:1: k: expected a string, got a timestamp"),
        ("k: ''\n", "string", "file.yaml:1: k: expected a non-empty string"),
        ("k: [a]\n", "scalar", "file.yaml:1: k: expected a single value"),
        ("k: '3'\n", "integer", "file.yaml:1: k: expected an integer >= 1"),
        ("k: 2.0\n", "integer", "file.yaml:1: k: expected an integer >= 1"),
        ("k: true\n", "integer", "file.yaml:1: k: expected an integer >= 1"),
        ("k: 0\n", "integer", "file.yaml:1: k: expected an integer >= 1"),
        ("k: '3'\n", "number", "file.yaml:1: k: expected a number >= 1"),
        ("k: yes\n", "number", "file.yaml:1: k: expected a number >= 1"),
        ("k: 0.5\n", "number", "file.yaml:1: k: expected a number >= 1"),
        ("k: 'true'\n", "boolean", "file.yaml:1: k: expected true or false"),
        ("k: 1\n", "boolean", "file.yaml:1: k: expected true or false"),
    ],
)
def test_wrong_type_names_line_key_and_what_was_expected(
    body: str, call: str, message: str
) -> None:
    r, node = value(body)
    calls = {
        "mapping": lambda: r.mapping(node, "k"),
        "sequence": lambda: r.sequence(node, "k"),
        "string": lambda: r.string(node, "k"),
        "scalar": lambda: r.scalar(node, "k"),
        "integer": lambda: r.integer(node, "k", 1),
        "number": lambda: r.number(node, "k", 1),
        "boolean": lambda: r.boolean(node, "k"),
    }
    assert error(calls[call]) == message


# -- values --------------------------------------------------------------------------


def test_values_follow_yaml_rules() -> None:
    r, root = compose("i: 0x10\nf: 1.0e+3\nb: on\ns: ' x '\nn: 7\ne: ''\n")
    m = r.mapping(root, "")
    assert r.integer(m["i"], "i", 0) == 16
    assert r.number(m["f"], "f", 0) == 1000.0
    assert r.number(m["n"], "n", 0) == 7.0 and type(r.number(m["n"], "n", 0)) is float
    assert r.boolean(m["b"], "b") is True
    assert r.string(m["s"], "s") == " x "
    assert r.string(m["e"], "e", allow_empty=True) == ""
    assert r.scalar(m["i"], "i") == 16


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", "1" + "0" * 400])
def test_non_finite_numbers_are_refused(text: str) -> None:
    r, node = value(f"k: {text}\n")
    assert error(lambda: r.number(node, "k", -1e300)) == (
        "file.yaml:1: k: expected a number >= -1e+300"
    )


@pytest.mark.parametrize(
    "text",
    [
        "!!python/name:os.system",
        "!!python/object/apply:os.system ['true']",
        "!custom x",
        "!!int abc",
        "!!float abc",
        "!!bool maybe",
        "!!timestamp nonsense",
    ],
)
def test_tags_that_do_not_construct_are_refused_with_their_line(text: str) -> None:
    r, root = compose(f"a: 1\nk: {text}\n")
    node = r.mapping(root, "")["k"]
    message = error(lambda: r.integer(node, "k", 0))
    assert message.startswith("file.yaml:2: k: ")


def test_python_tags_are_never_a_string() -> None:
    r, node = value("k: !!python/name:os.system\n")
    assert error(lambda: r.string(node, "k")) == (
        "file.yaml:1: k: expected a string, "
        "got a value tagged tag:yaml.org,2002:python/name:os.system"
    )
    assert error(lambda: r.scalar(node, "k")) == "file.yaml:1: k: invalid value (ConstructorError)"


# -- documents -----------------------------------------------------------------------


def test_an_empty_document_has_no_root() -> None:
    assert YamlReader(SOURCE).compose("") is None
    assert YamlReader(SOURCE).compose("# only a comment\n") is None


@pytest.mark.parametrize(
    ("text", "start"),
    [
        ("a: 1\nb: [\n", "file.yaml:3: invalid YAML: "),
        ("a: 1\n---\na: 2\n", "file.yaml:2: invalid YAML: but found another document"),
        ("a: 1\nb: \x07\n", "file.yaml:2: invalid YAML: special characters are not allowed"),
        ("a: 1\n b: 2\n", "file.yaml:2: invalid YAML: "),
    ],
)
def test_invalid_yaml_names_its_line(text: str, start: str) -> None:
    assert error(lambda: YamlReader(SOURCE).compose(text)).startswith(start)


def test_an_error_without_a_node_names_only_the_source() -> None:
    assert str(YamlReader("--listen").fail(None, "listen", "bad")) == "--listen: listen: bad"


def test_describe_names_the_kind_of_node() -> None:
    r, root = compose("m: {}\nl: []\nt: !x y\n")
    m = r.mapping(root, "")
    assert [describe(m[k]) for k in "mlt"] == ["a mapping", "a list", "a value tagged !x"]
