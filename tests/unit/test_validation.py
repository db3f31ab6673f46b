"""Request validation: every rule refuses with InvalidRequest naming the field and the rule."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.actions import ActionRequest
from gateway.domain.validation import Limits, require_identifier, validate_request
from gateway.errors import InvalidRequest

LIMITS = Limits()


def request(**changes: Any) -> ActionRequest:
    base = ActionRequest(
        action_id="act-1",
        agent_id="agent-1",
        session_id="sess-1",
        action_type="search",
        resource="https://example.com/a?b=c",
        parameters={"query": "weather", "count": 3.0, "flags": [True, None]},
        reasoning="the user asked\nfor the weather",
        labels={"team": "ops", "env/tier": "prod"},
    )
    return replace(base, **changes)


def refusal(req: ActionRequest, limits: Limits = LIMITS) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        validate_request(req, limits)
    return caught.value


def nested(depth: int) -> dict[str, Any]:
    """Parameters whose deepest value sits at `depth` (the parameters object is depth 1).

    The path to the deepest value is parameters.k2.k3...k<depth>.
    """
    assert depth >= 2
    value: Any = "leaf"
    for level in range(depth, 1, -1):
        value = {f"k{level}": value}
    return value


def nested_path(depth: int) -> str:
    return "parameters" + "".join(f".k{level}" for level in range(2, depth + 1))


# -- a good request -----------------------------------------------------------------------


def test_well_formed_request_passes() -> None:
    validate_request(request(), LIMITS)


def test_minimal_request_with_only_the_required_fields_passes() -> None:
    validate_request(
        ActionRequest(action_id="a", agent_id="b", session_id="c", action_type="d"), LIMITS
    )


def test_error_message_is_field_then_rule() -> None:
    error = refusal(request(action_id=""))
    assert error.field == "action_id"
    assert error.why == "is required"
    assert str(error) == "action_id: is required"


# -- identifiers ----------------------------------------------------------------------------

ID_FIELDS = ["action_id", "agent_id", "session_id"]


@pytest.mark.parametrize("field", ID_FIELDS)
def test_missing_identifier_is_required(field: str) -> None:
    error = refusal(request(**{field: ""}))
    assert (error.field, error.why) == (field, "is required")


@pytest.mark.parametrize("field", ID_FIELDS)
def test_identifier_at_the_length_limit_passes(field: str) -> None:
    validate_request(request(**{field: "a" * LIMITS.max_id_chars}), LIMITS)


@pytest.mark.parametrize("field", ID_FIELDS)
def test_identifier_one_over_the_length_limit_is_refused(field: str) -> None:
    error = refusal(request(**{field: "a" * (LIMITS.max_id_chars + 1)}))
    assert error.field == field
    assert error.why == "length 129 exceeds the limit of 128"


def test_identifier_length_limit_comes_from_limits() -> None:
    limits = Limits(max_id_chars=4)
    short = request(action_id="a", session_id="s", labels={})
    validate_request(replace(short, agent_id="abcd"), limits)
    error = refusal(replace(short, agent_id="abcde"), limits)
    assert (error.field, error.why) == ("agent_id", "length 5 exceeds the limit of 4")


@pytest.mark.parametrize("field", ID_FIELDS)
@pytest.mark.parametrize(
    "value",
    [
        "a{b}",  # a Redis cluster hash tag
        "{a}",
        "a}",
        "a b",
        " a",
        "a ",
        "a\tb",
        "a\nb",
        "a\n",
        "a\x00b",
        "a\x7f",
        "-a",  # must start with a letter or digit
        ".a",
        "_a",
        "@a",
        "/a",
        "a*b",
        "a?b",
        "a#b",
        "a,b",
        "a'b",
        'a"b',
        "a\\b",
        "é",
        "aé",
        "a\u200bb",  # zero-width space
    ],
)
def test_identifier_with_a_forbidden_character_is_refused(field: str, value: str) -> None:
    error = refusal(request(**{field: value}))
    assert error.field == field
    assert error.why == (
        "must start with a letter or digit and contain only A-Z a-z 0-9 . _ : @ / -"
    )


@pytest.mark.parametrize(
    "value", ["a", "0", "agent-1", "a.b_c:d@e/f-g", "Z9", "user@example.com", "x/y/z", "a::b"]
)
def test_identifier_with_allowed_characters_passes(value: str) -> None:
    require_identifier("agent_id", value, 128)
    validate_request(request(agent_id=value, session_id=value, action_id=value), LIMITS)


def test_require_identifier_names_the_given_field() -> None:
    with pytest.raises(InvalidRequest) as caught:
        require_identifier("hold_id", "", 10)
    assert (caught.value.field, caught.value.why) == ("hold_id", "is required")
    with pytest.raises(InvalidRequest) as caught:
        require_identifier("hold_id", "abcdefghijk", 10)
    assert caught.value.why == "length 11 exceeds the limit of 10"
    with pytest.raises(InvalidRequest) as caught:
        require_identifier("hold_id", "a{b}", 10)
    assert caught.value.field == "hold_id"


def test_identifiers_are_checked_in_order_action_agent_session() -> None:
    error = refusal(request(action_id="", agent_id="", session_id=""))
    assert error.field == "action_id"
    error = refusal(request(agent_id="", session_id=""))
    assert error.field == "agent_id"


# -- action_type ----------------------------------------------------------------------------


def test_missing_action_type_is_required() -> None:
    error = refusal(request(action_type=""))
    assert (error.field, error.why) == ("action_type", "is required")


def test_action_type_at_the_length_limit_passes() -> None:
    validate_request(request(action_type="a" * LIMITS.max_action_type_chars), LIMITS)


def test_action_type_one_over_the_length_limit_is_refused() -> None:
    error = refusal(request(action_type="a" * (LIMITS.max_action_type_chars + 1)))
    assert (error.field, error.why) == ("action_type", "length 129 exceeds the limit of 128")


@pytest.mark.parametrize("value", ["send_email", "fs.read", "db:drop", "tools/search", "a-b", "9"])
def test_action_type_with_allowed_characters_passes(value: str) -> None:
    validate_request(request(action_type=value), LIMITS)


@pytest.mark.parametrize(
    "value", ["send email", "a{b}", "a@b", "-a", "_a", "a\nb", "a\x00", "a*", "é"]
)
def test_action_type_with_a_forbidden_character_is_refused(value: str) -> None:
    error = refusal(request(action_type=value))
    assert error.field == "action_type"
    assert error.why == ("must start with a letter or digit and contain only A-Z a-z 0-9 . _ : / -")


# -- resource and reasoning -------------------------------------------------------------------


def test_empty_resource_passes() -> None:
    validate_request(request(resource=""), LIMITS)


def test_resource_may_contain_spaces_and_unicode() -> None:
    validate_request(request(resource="file:///home/ana/Résumé final.pdf"), LIMITS)


def test_resource_at_the_length_limit_passes() -> None:
    validate_request(request(resource="r" * LIMITS.max_resource_chars), LIMITS)


def test_resource_one_over_the_length_limit_is_refused() -> None:
    error = refusal(request(resource="r" * (LIMITS.max_resource_chars + 1)))
    assert (error.field, error.why) == ("resource", "length 2049 exceeds the limit of 2048")


@pytest.mark.parametrize("char", ["\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x1f", "\x7f"])
def test_resource_with_a_control_character_is_refused(char: str) -> None:
    error = refusal(request(resource=f"file://a{char}b"))
    assert (error.field, error.why) == ("resource", "must not contain control characters")


def test_reasoning_may_contain_newlines_and_tabs() -> None:
    validate_request(request(reasoning="step 1\n\tstep 2\r\n"), LIMITS)


def test_reasoning_at_the_length_limit_passes() -> None:
    validate_request(request(reasoning="x" * LIMITS.max_reasoning_chars), LIMITS)


def test_reasoning_one_over_the_length_limit_is_refused() -> None:
    error = refusal(request(reasoning="x" * (LIMITS.max_reasoning_chars + 1)))
    assert (error.field, error.why) == ("reasoning", "length 8193 exceeds the limit of 8192")


# -- labels -----------------------------------------------------------------------------------


def test_labels_at_the_count_limit_pass() -> None:
    labels = {f"l{i}": "v" for i in range(LIMITS.max_labels)}
    validate_request(request(labels=labels), LIMITS)


def test_labels_one_over_the_count_limit_are_refused() -> None:
    labels = {f"l{i}": "v" for i in range(LIMITS.max_labels + 1)}
    error = refusal(request(labels=labels))
    assert (error.field, error.why) == ("labels", "33 labels exceed the limit of 32")


@pytest.mark.parametrize("key", ["", "a b", "a{b}", "-a", "a@b", "a:b", "a\nb", "é"])
def test_invalid_label_key_is_refused_naming_the_key(key: str) -> None:
    error = refusal(request(labels={key: "v"}))
    assert error.field == f"labels[{key!r}]"
    assert error.why == "is not a valid label key"


@pytest.mark.parametrize("key", ["team", "a.b", "a_b", "a-b", "example.com/tier", "9"])
def test_valid_label_key_passes(key: str) -> None:
    validate_request(request(labels={key: "v"}), LIMITS)


def test_label_key_at_the_identifier_length_limit_passes() -> None:
    validate_request(request(labels={"k" * LIMITS.max_id_chars: "v"}), LIMITS)


def test_label_key_one_over_the_identifier_length_limit_is_refused() -> None:
    key = "k" * (LIMITS.max_id_chars + 1)
    error = refusal(request(labels={key: "v"}))
    assert error.why == "is not a valid label key"
    assert error.field == f"labels['{'k' * 64}... (129 chars)']"


def test_a_huge_label_key_is_named_by_a_bounded_preview() -> None:
    error = refusal(request(labels={"k" * 100_000: "v"}))
    assert len(str(error)) < 200 and "(100000 chars)" in str(error)


def test_empty_label_value_passes() -> None:
    validate_request(request(labels={"team": ""}), LIMITS)


def test_label_value_at_the_length_limit_passes() -> None:
    validate_request(request(labels={"team": "v" * LIMITS.max_label_value_chars}), LIMITS)


def test_label_value_one_over_the_length_limit_is_refused() -> None:
    error = refusal(request(labels={"team": "v" * (LIMITS.max_label_value_chars + 1)}))
    assert (error.field, error.why) == ("labels['team']", "length 257 exceeds the limit of 256")


@pytest.mark.parametrize("char", ["\x00", "\t", "\n", "\x7f"])
def test_label_value_with_a_control_character_is_refused(char: str) -> None:
    error = refusal(request(labels={"team": f"o{char}ps"}))
    assert (error.field, error.why) == ("labels['team']", "must not contain control characters")


# -- parameters: depth ---------------------------------------------------------------------------


def test_empty_parameters_pass() -> None:
    validate_request(request(parameters={}), LIMITS)


def test_depth_exactly_at_the_limit_passes() -> None:
    validate_request(request(parameters=nested(LIMITS.max_parameter_depth)), LIMITS)


def test_depth_one_over_the_limit_names_the_path() -> None:
    error = refusal(request(parameters=nested(LIMITS.max_parameter_depth + 1)))
    assert error.field == nested_path(33)
    assert error.field.startswith("parameters.k2.k3.")
    assert error.field.endswith(".k32.k33")
    assert error.why == "depth 33 exceeds the limit of 32"
    assert str(error) == f"{nested_path(33)}: depth 33 exceeds the limit of 32"


def test_depth_far_over_the_limit_names_the_first_path_over_it() -> None:
    error = refusal(request(parameters=nested(200)))
    assert error.field == nested_path(33)
    assert error.why == "depth 33 exceeds the limit of 32"


def test_depth_limit_comes_from_limits_and_names_a_short_path() -> None:
    limits = Limits(max_parameter_depth=2)
    validate_request(request(parameters={"a": 1.0, "b": "x"}), limits)
    error = refusal(request(parameters={"a": {"b": 1.0}}), limits)
    assert error.field == "parameters.a.b"
    assert error.why == "depth 3 exceeds the limit of 2"


def test_an_empty_mapping_at_the_depth_limit_passes_but_a_value_inside_it_does_not() -> None:
    limits = Limits(max_parameter_depth=3)
    validate_request(request(parameters={"a": {"b": {}}}), limits)
    error = refusal(request(parameters={"a": {"b": {"c": None}}}), limits)
    assert (error.field, error.why) == ("parameters.a.b.c", "depth 4 exceeds the limit of 3")


def test_depth_counts_lists_and_names_list_indexes() -> None:
    limits = Limits(max_parameter_depth=4)
    validate_request(request(parameters={"a": [[1.0, 2.0], []]}), limits)
    error = refusal(request(parameters={"a": [{"b": [0.0, 1.0]}]}), limits)
    assert error.field == "parameters.a[0].b[0]"
    assert error.why == "depth 5 exceeds the limit of 4"


def test_depth_is_checked_in_every_branch_not_only_the_first() -> None:
    limits = Limits(max_parameter_depth=3)
    error = refusal(request(parameters={"shallow": 1.0, "deep": {"x": {"y": "z"}}}), limits)
    assert error.field == "parameters.deep.x.y"


# -- parameters: non-finite numbers --------------------------------------------------------------


@pytest.mark.parametrize("number", [math.inf, -math.inf, math.nan])
def test_non_finite_number_is_refused_with_its_path(number: float) -> None:
    error = refusal(request(parameters={"payment": {"amount": number}}))
    assert (error.field, error.why) == ("parameters.payment.amount", "must be a finite number")


def test_non_finite_number_inside_a_list_is_refused_with_its_index() -> None:
    error = refusal(request(parameters={"amounts": [1.0, 2.0, math.nan]}))
    assert (error.field, error.why) == ("parameters.amounts[2]", "must be a finite number")


def test_finite_extremes_pass() -> None:
    params = {"big": 1.7976931348623157e308, "tiny": 5e-324, "neg": -0.0, "int": 2**53}
    validate_request(request(parameters=params), LIMITS)


# -- parameters: size -------------------------------------------------------------------------


def json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def test_parameters_well_under_the_size_limit_pass() -> None:
    limits = Limits(max_parameters_bytes=100)
    params = {"s": "x" * 80}
    assert json_size(params) < 100
    validate_request(request(parameters=params), limits)


def test_parameters_over_the_size_limit_are_refused() -> None:
    limits = Limits(max_parameters_bytes=100)
    params = {"s": "x" * 100}
    error = refusal(request(parameters=params), limits)
    assert error.field == "parameters"
    assert error.why.startswith("size ")
    assert error.why.endswith(" bytes exceeds the limit of 100")
    assert int(error.why.split()[1]) > 100


def test_size_counts_multibyte_characters_as_bytes() -> None:
    limits = Limits(max_parameters_bytes=100)
    validate_request(request(parameters={"s": "x" * 60}), limits)
    # 60 characters but 180 bytes of UTF-8
    error = refusal(request(parameters={"s": "€" * 60}), limits)
    assert error.field == "parameters"


def test_size_adds_up_across_many_small_values() -> None:
    limits = Limits(max_parameters_bytes=1000)
    params = {"items": [f"item-{i}" for i in range(200)]}
    assert json_size(params) > 1000
    error = refusal(request(parameters=params), limits)
    assert error.field == "parameters"


def test_size_counts_keys() -> None:
    limits = Limits(max_parameters_bytes=1000)
    params = {"k" * 2000: 1.0}
    error = refusal(request(parameters=params), limits)
    assert error.field == "parameters"


def test_default_parameters_size_limit_is_64_kib() -> None:
    validate_request(request(parameters={"s": "x" * 60_000}), LIMITS)
    error = refusal(request(parameters={"s": "x" * 70_000}))
    assert error.field == "parameters"
    assert error.why.endswith("exceeds the limit of 65536")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(
        alphabet=st.characters(
            min_codepoint=0x20, exclude_characters='"\\', exclude_categories=("Cs",)
        ),
        max_size=30,
    ),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(alphabet="abcxyz_", min_size=1, max_size=8), children, max_size=5)
    ),
    max_leaves=40,
)


@given(st.dictionaries(st.text(alphabet="abc", min_size=1, max_size=4), json_values, max_size=6))
def test_parameters_whose_json_exceeds_the_limit_are_always_refused(params: Any) -> None:
    limits = Limits(max_parameters_bytes=200)
    if json_size(params) > 200:
        error = refusal(request(parameters=params), limits)
        assert error.field == "parameters"
    else:
        # under the limit, the only possible refusal is a (deliberately generous) estimate
        try:
            validate_request(request(parameters=params), limits)
        except InvalidRequest as error:
            assert error.field == "parameters"


@pytest.mark.parametrize("char", ['"', "\\", "\x00"])
def test_escaped_characters_count_toward_the_size_limit(char: str) -> None:
    limits = Limits(max_parameters_bytes=100)
    params = {"s": char * 60}
    assert json_size(params) > 100
    refusal(request(parameters=params), limits)
