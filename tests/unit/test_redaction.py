"""Redaction: values under secret-looking keys never leave the gateway."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.redaction import REDACTED, SENSITIVE_KEY_PARTS, is_sensitive_key, redact


def test_sensitive_key_parts_match_the_design() -> None:
    assert set(SENSITIVE_KEY_PARTS) == {"password", "token", "key", "secret", "credential"}


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "PASSWORD",
        "Password",
        "db_password",
        "passwordHash",
        "token",
        "access_token",
        "refreshToken",
        "X-Auth-TOKEN",
        "key",
        "api_key",
        "apiKey",
        "KEY_ID",
        "secret",
        "client_secret",
        "SecretValue",
        "credential",
        "credentials",
        "aws_Credentials",
    ],
)
def test_names_containing_a_sensitive_part_are_sensitive(name: str) -> None:
    assert is_sensitive_key(name)


@pytest.mark.parametrize(
    "name", ["", "user", "amount", "to", "passw", "tok", "ke", "secre", "credit", "pass_word"]
)
def test_other_names_are_not_sensitive(name: str) -> None:
    assert not is_sensitive_key(name)


def test_top_level_sensitive_values_are_redacted() -> None:
    out = redact({"user": "ana", "password": "hunter2", "API_KEY": "abc123"})
    assert out == {"user": "ana", "password": REDACTED, "API_KEY": REDACTED}


def test_whole_subtree_under_a_sensitive_key_is_redacted() -> None:
    out = redact({"credentials": {"user": "ana", "pin": 1234.0}, "tokens": ["a", "b"]})
    assert out == {"credentials": REDACTED, "tokens": REDACTED}


def test_nested_sensitive_values_are_redacted_at_any_depth() -> None:
    value = {"a": {"b": {"c": {"d": {"Secret": "s3", "e": "kept"}}}}}
    assert redact(value) == {"a": {"b": {"c": {"d": {"Secret": REDACTED, "e": "kept"}}}}}


def test_sensitive_values_inside_lists_of_objects_are_redacted() -> None:
    value = {
        "accounts": [
            {"name": "main", "access_token": "t1"},
            {"name": "backup", "nested": [{"password": "p2"}, "plain"]},
        ]
    }
    assert redact(value) == {
        "accounts": [
            {"name": "main", "access_token": REDACTED},
            {"name": "backup", "nested": [{"password": REDACTED}, "plain"]},
        ]
    }


def test_top_level_list_is_walked() -> None:
    assert redact([{"token": "t"}, 1.0, None]) == [{"token": REDACTED}, 1.0, None]


def test_tuples_are_walked_and_come_back_as_lists() -> None:
    assert redact({"items": ({"secret": "s"}, "x")}) == {"items": [{"secret": REDACTED}, "x"]}


def test_non_sensitive_values_are_untouched() -> None:
    value = {
        "amount": 12.5,
        "count": 3,
        "flag": False,
        "nothing": None,
        "to": "bob@example.com",
        "note": "my password is hunter2",  # the key decides, not the value
        "items": [1.0, "two", {"three": 3.0}],
    }
    assert redact(value) == value


def test_scalars_are_returned_as_they_are() -> None:
    for scalar in ("text", 1, 2.5, True, None):
        assert redact(scalar) == scalar


def test_sensitive_key_with_a_null_or_empty_value_is_still_redacted() -> None:
    assert redact({"token": None, "secret": ""}) == {"token": REDACTED, "secret": REDACTED}


def test_non_string_keys_are_checked_by_their_text() -> None:
    assert redact({1: "one", "key": "k"}) == {1: "one", "key": REDACTED}


def test_input_is_not_mutated() -> None:
    value = {
        "password": "hunter2",
        "nested": {"token": "t", "list": [{"secret": "s"}, {"ok": "v"}]},
    }
    before = copy.deepcopy(value)
    out = redact(value)
    assert value == before
    out["nested"]["list"][1]["ok"] = "changed"
    assert value == before  # the output shares no containers with the input


# -- property: nothing under a sensitive key survives ------------------------------------------

SENSITIVE_KEYS = ["password", "Api_Key", "ACCESS_TOKEN", "clientSecret", "credentials"]
PLAIN_KEYS = ["user", "amount", "items", "to", "note", "data"]

plain_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-1000, 1000)
    | st.text(alphabet="abcdefghij ", max_size=10)
)
secret_leaves = st.integers(0, 10**6).map(lambda n: f"SECRET-{n}")


def trees(leaves: st.SearchStrategy[Any], secrets: st.SearchStrategy[Any]) -> Any:
    """JSON-like trees; every value under a sensitive key is drawn from `secrets` trees."""
    secret_trees = st.recursive(
        secrets,
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.sampled_from(PLAIN_KEYS + SENSITIVE_KEYS), children, max_size=3)
        ),
        max_leaves=8,
    )

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        plain = st.dictionaries(st.sampled_from(PLAIN_KEYS), children, max_size=3)
        secret = st.dictionaries(st.sampled_from(SENSITIVE_KEYS), secret_trees, max_size=2)
        mixed = st.tuples(plain, secret).map(lambda pair: {**pair[0], **pair[1]})
        return st.lists(children, max_size=3) | mixed

    return st.recursive(leaves, extend, max_leaves=25)


def values_under_sensitive_keys(value: Any) -> list[Any]:
    found: list[Any] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if is_sensitive_key(str(k)):
                found.append(v)
            else:
                found += values_under_sensitive_keys(v)
    elif isinstance(value, list):
        for item in value:
            found += values_under_sensitive_keys(item)
    return found


@given(trees(plain_leaves, secret_leaves))
def test_no_value_under_a_sensitive_key_survives_anywhere(value: Any) -> None:
    out = redact(value)
    assert "SECRET-" not in json.dumps(out)
    assert all(v == REDACTED for v in values_under_sensitive_keys(out))


@given(trees(plain_leaves, secret_leaves))
def test_redaction_is_idempotent_and_does_not_mutate(value: Any) -> None:
    before = copy.deepcopy(value)
    once = redact(value)
    assert value == before
    assert redact(once) == once


@given(trees(plain_leaves, plain_leaves))
def test_values_without_sensitive_keys_anywhere_are_unchanged(value: Any) -> None:
    if not values_under_sensitive_keys(value):
        assert redact(value) == value
