"""What an action_id stands for: the keyed digest of the request as submitted."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.domain.actions import ActionRequest, request_digest

KEY = b"k" * 64
BASE = ActionRequest(
    action_id="a1",
    agent_id="agent-1",
    session_id="s1",
    action_type="search",
    resource="web",
    parameters={"q": "weather", "nested": {"pin": "1234", "n": 1.0}},
    reasoning="look it up",
    labels={"team": "a"},
)


def test_the_same_request_has_the_same_digest_whatever_the_key_order() -> None:
    reordered = replace(
        BASE,
        parameters={"nested": {"n": 1.0, "pin": "1234"}, "q": "weather"},
        labels={"team": "a"},
    )
    assert request_digest(reordered, KEY) == request_digest(BASE, KEY)


@pytest.mark.parametrize(
    "change",
    [
        {"agent_id": "agent-2"},
        {"session_id": "s2"},
        {"action_type": "search2"},
        {"resource": "web2"},
        {"parameters": {"q": "weather", "nested": {"pin": "1235", "n": 1.0}}},
        {"parameters": {"q": "weather", "nested": {"pin": "1234", "n": 2.0}}},
        {"parameters": {"q": "weather"}},
        {"reasoning": ""},
        {"labels": {}},
        {"labels": {"team": "b"}},
    ],
)
def test_every_part_of_the_content_changes_the_digest(change: dict[str, object]) -> None:
    assert request_digest(replace(BASE, **change), KEY) != request_digest(BASE, KEY)  # type: ignore[arg-type]


def test_the_action_id_itself_is_not_part_of_the_content() -> None:
    assert request_digest(replace(BASE, action_id="a2"), KEY) == request_digest(BASE, KEY)


def test_the_digest_is_keyed() -> None:
    assert request_digest(BASE, KEY) != request_digest(BASE, b"other key")
    assert len(request_digest(BASE, KEY)) == 64
