"""The stored form of holds and decisions: every value round-trips through JSON."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.actions import (
    ActionRequest,
    Decision,
    Finding,
    Resolution,
    ResolutionStatus,
    Verdict,
)
from gateway.domain.holds import Hold, HoldStatus, resolve, with_resolution_seq
from gateway.store.records import decision_from_json, decision_to_json, hold_from_json, hold_to_json
from tests.unit.test_holds import CREATED, pending_hold


def through_json(obj: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(obj))
    return loaded


def test_pending_hold_round_trips_through_json() -> None:
    hold = pending_hold()
    assert hold_from_json(through_json(hold_to_json(hold))) == hold


def test_resolved_hold_round_trips_through_json() -> None:
    done = with_resolution_seq(
        resolve(pending_hold(), ResolutionStatus.REJECTED, "bob", "no", CREATED + 5), 9
    )
    assert hold_from_json(through_json(hold_to_json(done))) == done


def test_hold_json_uses_the_domain_names() -> None:
    obj = hold_to_json(resolve(pending_hold(), ResolutionStatus.APPROVED, "a", "ok", CREATED))
    assert obj["status"] == "approved"
    assert obj["request"]["action_type"] == "payment"
    assert obj["resolution"]["status"] == "approved"
    assert obj["findings"][0]["recommended_action"] == "require_approval"


def test_decision_json_names_the_verdict() -> None:
    obj = decision_to_json(pending_hold().decision())
    assert obj["verdict"] == "HOLD"
    assert obj["resolution"] is None
    assert decision_from_json(through_json(obj)) == pending_hold().decision()


identifiers = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._", min_size=1, max_size=20)
texts = st.text(max_size=40)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
json_leaves = (
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(2**53), 2**53)
    | texts
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=20,
)
findings = st.builds(
    Finding,
    type=identifiers,
    severity=st.floats(min_value=0, max_value=1),
    description=texts,
    recommended_action=identifiers,
)
resolutions = st.builds(
    Resolution,
    status=st.sampled_from(list(ResolutionStatus)),
    decided_by=identifiers,
    reason=texts,
    decided_at=times,
    audit_seq=st.integers(min_value=0, max_value=2**62),
)
requests = st.builds(
    ActionRequest,
    action_id=identifiers,
    agent_id=identifiers,
    session_id=identifiers,
    action_type=identifiers,
    resource=texts,
    parameters=st.dictionaries(texts, json_values, max_size=5),
    reasoning=texts,
    labels=st.dictionaries(identifiers, texts, max_size=4),
)
holds = st.builds(
    Hold,
    hold_id=identifiers,
    request=requests,
    findings=st.lists(findings, max_size=4).map(tuple),
    matched_rules=st.lists(identifiers, max_size=3).map(tuple),
    reason=texts,
    created_at=times,
    expires_at=times,
    paused_session=st.booleans(),
    audit_seq=st.integers(min_value=0, max_value=2**62),
    status=st.sampled_from(list(HoldStatus)),
    resolution=st.none() | resolutions,
)
decisions = st.builds(
    Decision,
    action_id=identifiers,
    session_id=identifiers,
    verdict=st.sampled_from(list(Verdict)),
    reason=texts,
    findings=st.lists(findings, max_size=4).map(tuple),
    matched_rules=st.lists(identifiers, max_size=3).map(tuple),
    hold_id=st.just("") | identifiers,
    expires_at=times,
    resolution=st.none() | resolutions,
    audit_seq=st.integers(min_value=0, max_value=2**62),
)


@given(holds)
def test_any_hold_round_trips_through_its_json_form(hold: Hold) -> None:
    assert hold_from_json(through_json(hold_to_json(hold))) == hold


@given(decisions)
def test_any_decision_round_trips_through_its_json_form(decision: Decision) -> None:
    assert decision_from_json(through_json(decision_to_json(decision))) == decision


@given(holds)
def test_any_hold_decision_round_trips_through_its_json_form(hold: Hold) -> None:
    decision = hold.decision()
    assert decision_from_json(through_json(decision_to_json(decision))) == decision
