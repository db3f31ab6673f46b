"""`guard` on both agent clients against an in-process gateway: a guarded function
runs only once its action is allowed (at once, or when an approver approves it), its
outcome is reported exactly when it ran, and the call's arguments reach the audit log.

Each test runs with `AgentClient` and with `AsyncAgentClient` (the `kind` fixture).
The docs/agent-client.md example is run here too.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import pickle
import re
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from agentgw.v1 import approvals_pb2, gateway_pb2
from clients.agent import ActionDenied, AgentClient, ApprovalTimeout, AsyncAgentClient
from tests.harness import RunningGateway, token_for, wait_for

AGENT = "agent-1"
SESSION = "invoice-run-7"
DOC = Path(__file__).resolve().parents[2] / "docs" / "agent-client.md"

DENY_POLICY = """\
version: 1
default_verdict: allow
rules:
  - name: deny-account-closing
    verdict: deny
    reason: closing an account needs a person
    match:
      action_type: close_account
"""


class SmtpRefused(Exception):
    pass


class Mailer:
    """The tool's real work, as a stand-in: counts the calls; raises `error` if set."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.error = error

    def send(self, to: str, subject: str, body: str = "") -> str:
        self.calls.append((to, subject, body))
        if self.error is not None:
            raise self.error
        return f"sent to {to}"


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as executor:
        yield executor


def call_guarded(
    kind: str,
    gw: RunningGateway,
    action_type: str,
    fn: Callable[..., Any],
    *args: Any,
    guard: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Guards `fn` with a client of `kind` (an async twin of `fn` for the async
    client, with its signature) and calls it once with `args` and `kwargs`."""
    options = guard or {}
    if kind == "sync":
        with AgentClient(gw.target, token_for(AGENT), AGENT, session_id=SESSION) as client:
            return client.guard(action_type, **options)(fn)(*args, **kwargs)

    @functools.wraps(fn)
    async def twin(*a: Any, **k: Any) -> Any:
        return fn(*a, **k)

    async def main() -> Any:
        async with AsyncAgentClient(gw.target, token_for(AGENT), AGENT, session_id=SESSION) as c:
            return await c.guard(action_type, **options)(twin)(*args, **kwargs)

    return asyncio.run(main())


def in_background(
    pool: ThreadPoolExecutor, kind: str, gw: RunningGateway, *args: Any
) -> Future[Any]:
    """`call_guarded` in a thread, for a call that waits on a hold."""
    return pool.submit(call_guarded, kind, gw, *args)


def entries(gw: RunningGateway, event_type: str) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in gw.export_lines())
    return [e for e in lines if e["event_type"] == event_type]


def decided(gw: RunningGateway) -> dict[str, Any]:
    [entry] = entries(gw, "action_decided")
    return entry


def pending_holds(gw: RunningGateway) -> list[approvals_pb2.Hold]:
    return list(
        gw.approvals.ListHolds(
            approvals_pb2.ListHoldsRequest(agent_id=AGENT), metadata=gw.md("approver-1")
        ).holds
    )


def listed_hold(gw: RunningGateway) -> approvals_pb2.Hold:
    [hold] = wait_for(lambda: pending_holds(gw), what="the hold to be listed")
    return hold


def approve(gw: RunningGateway, hold_id: str, reason: str = "known customer") -> None:
    gw.approvals.Approve(
        approvals_pb2.ApproveRequest(hold_id=hold_id, reason=reason), metadata=gw.md("approver-1")
    )


def reject(gw: RunningGateway, hold_id: str, reason: str) -> None:
    gw.approvals.Reject(
        approvals_pb2.RejectRequest(hold_id=hold_id, reason=reason), metadata=gw.md("approver-1")
    )


def assert_reported(gw: RunningGateway, outcome: str, error_type: str = "") -> dict[str, Any]:
    """The one outcome entry: of the one decided action, with this result."""
    [entry] = entries(gw, "outcome_reported")
    assert entry["action_id"] == decided(gw)["action_id"]
    assert entry["outcome"] == outcome
    assert entry["details"]["error_type"] == error_type
    assert entry["details"]["session_id"] == SESSION
    assert entry["details"]["duration_seconds"] > 0
    return entry


# --- allowed ------------------------------------------------------------------------


def test_an_allowed_call_runs_and_its_success_is_reported(kind: str, gw: RunningGateway) -> None:
    mailer = Mailer()
    result = call_guarded(kind, gw, "notify_customer", mailer.send, "ana@example.com", "Hello")
    assert result == "sent to ana@example.com"
    assert len(mailer.calls) == 1
    entry = decided(gw)
    assert (entry["outcome"], entry["actor"], entry["resource"]) == ("allow", AGENT, "")
    assert entry["details"]["session_id"] == SESSION
    assert assert_reported(gw, "success")["details"]["verdict"] == "allow"


def test_the_exception_of_the_function_propagates_unchanged_and_is_reported(
    kind: str, gw: RunningGateway
) -> None:
    error = SmtpRefused("mailbox of ana@example.com is full")
    mailer = Mailer(error)
    with pytest.raises(SmtpRefused) as raised:
        call_guarded(kind, gw, "notify_customer", mailer.send, "ana@example.com", "Hello")
    assert raised.value is error
    assert len(mailer.calls) == 1
    entry = assert_reported(gw, "failure", error_type="SmtpRefused")
    assert entry["details"]["error"] == "mailbox of ana@example.com is full"


def test_without_report_the_function_runs_and_no_outcome_is_reported(
    kind: str, gw: RunningGateway
) -> None:
    mailer = Mailer()
    call_guarded(kind, gw, "notify_customer", mailer.send, "a@b.c", "Hi", guard={"report": False})
    assert len(mailer.calls) == 1
    assert decided(gw)["outcome"] == "allow"
    assert entries(gw, "outcome_reported") == []


def test_a_failed_report_is_logged_and_does_not_mask_the_result(
    kind: str, gw: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    # The gateway goes away while the function runs, so the report cannot be made.
    def stop_gateway() -> str:
        gw.stop()
        return "done"

    with caplog.at_level(logging.WARNING, logger="agentgw.client"):
        assert call_guarded(kind, gw, "notify_customer", stop_gateway) == "done"
    [message] = client_warnings(caplog)
    assert message.startswith("the outcome of notify_customer (action_id ")
    assert "was not reported: UNAVAILABLE" in message


def test_a_failed_report_does_not_replace_the_exception_of_the_function(
    kind: str, gw: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    error = SmtpRefused("relay down")

    def stop_and_fail() -> None:
        gw.stop()
        raise error

    with (
        caplog.at_level(logging.WARNING, logger="agentgw.client"),
        pytest.raises(SmtpRefused) as raised,
    ):
        call_guarded(kind, gw, "notify_customer", stop_and_fail)
    assert raised.value is error
    assert len(client_warnings(caplog)) == 1


def client_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agentgw.client"]


# --- what the action says -------------------------------------------------------------


def record_receipt(
    invoice_id: str, amount: Decimal, *, received_on: date, note: str = "", **extra: Any
) -> None:
    pass


def test_default_parameters_are_the_bound_arguments_made_json_compatible(
    kind: str, gw: RunningGateway
) -> None:
    call_guarded(
        kind,
        gw,
        "record_receipt",
        record_receipt,
        "INV-7",
        Decimal("12.50"),
        received_on=date(2024, 5, 1),
        channel=("bank", 3),
        lines={1: Path("/tmp/line-1.pdf")},
    )
    # As passed (the default of `note` is not filled in); str() where JSON has no type.
    assert decided(gw)["details"]["parameters"] == {
        "invoice_id": "INV-7",
        "amount": "12.50",
        "received_on": "2024-05-01",
        "extra": {"channel": ["bank", 3], "lines": {"1": "/tmp/line-1.pdf"}},
    }


def test_parameters_resource_and_session_can_be_computed_from_the_arguments(
    kind: str, gw: RunningGateway
) -> None:
    guard = {
        "parameters": lambda to, subject, **_: {"to": to, "subject": subject},
        "resource": lambda to, **_: f"mailto:{to}",
        "session_id": lambda subject, **_: subject.split()[0].lower(),
    }
    mailer = Mailer()
    call_guarded(
        kind, gw, "notify_customer", mailer.send, "ana@example.com", "Invoice 7", guard=guard
    )
    call_guarded(
        kind,
        gw,
        "notify_customer",
        mailer.send,
        subject="Reminder 8",
        body="long text",
        to="bo@example.com",
        guard=guard,
    )
    first, second = entries(gw, "action_decided")
    assert first["resource"] == "mailto:ana@example.com"
    assert first["details"]["parameters"] == {"to": "ana@example.com", "subject": "Invoice 7"}
    assert first["details"]["session_id"] == "invoice"
    assert second["resource"] == "mailto:bo@example.com"
    assert second["details"]["parameters"] == {"to": "bo@example.com", "subject": "Reminder 8"}
    assert second["details"]["session_id"] == "reminder"


def test_fixed_parameters_resource_and_session(kind: str, gw: RunningGateway) -> None:
    guard = {
        "parameters": {"template": "reminder", "copies": 2},
        "resource": "crm/contacts",
        "session_id": "nightly",
    }
    call_guarded(kind, gw, "notify_customer", Mailer().send, "a@b.c", "Hi", guard=guard)
    entry = decided(gw)
    assert entry["resource"] == "crm/contacts"
    assert entry["details"]["parameters"] == {"template": "reminder", "copies": 2}
    assert entry["details"]["session_id"] == "nightly"


# --- denied ----------------------------------------------------------------------------


def test_a_denied_call_raises_action_denied_and_does_not_run(
    kind: str, make_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(DENY_POLICY, encoding="utf-8")
    gw = make_gateway(policy_file=policy)
    calls: list[str] = []
    with pytest.raises(ActionDenied) as raised:
        call_guarded(kind, gw, "close_account", calls.append, "ACC-1")
    denied = raised.value
    assert type(denied) is ActionDenied
    assert calls == []
    assert str(denied) == "close_account denied: closing an account needs a person"
    assert denied.verdict == gateway_pb2.VERDICT_DENY
    assert denied.reason == "closing an account needs a person"
    assert (denied.resolution, denied.hold_id, denied.findings) == (None, "", ())
    assert denied.decision.matched_rules == ["deny-account-closing"]
    assert decided(gw)["outcome"] == "deny"
    assert entries(gw, "outcome_reported") == []


# --- held -------------------------------------------------------------------------------


def test_a_held_call_runs_once_approved(
    kind: str, gw: RunningGateway, pool: ThreadPoolExecutor
) -> None:
    mailer = Mailer()
    call = in_background(pool, kind, gw, "send_email", mailer.send, "ana@example.com", "Invoice")
    hold = listed_hold(gw)
    assert mailer.calls == [] and not call.done()
    approve(gw, hold.hold_id)
    assert call.result(timeout=10) == "sent to ana@example.com"
    assert len(mailer.calls) == 1
    assert decided(gw)["outcome"] == "hold"
    assert assert_reported(gw, "success")["details"]["verdict"] == "allow"


def test_a_rejected_hold_raises_action_denied_and_does_not_run(
    kind: str, gw: RunningGateway, pool: ThreadPoolExecutor
) -> None:
    mailer = Mailer()
    call = in_background(pool, kind, gw, "send_email", mailer.send, "ana@example.com", "Invoice")
    hold = listed_hold(gw)
    reject(gw, hold.hold_id, reason="wrong customer")
    with pytest.raises(ActionDenied) as raised:
        call.result(timeout=10)
    denied = raised.value
    assert type(denied) is ActionDenied
    assert str(denied) == "send_email rejected by approver-1: wrong customer"
    assert denied.verdict == gateway_pb2.VERDICT_DENY
    assert denied.hold_id == hold.hold_id
    assert denied.resolution is not None
    assert denied.resolution.status == gateway_pb2.RESOLUTION_STATUS_REJECTED
    assert [f.type for f in denied.findings] == ["suspicious_action"]
    assert mailer.calls == []
    assert entries(gw, "outcome_reported") == []


def test_a_hold_still_pending_at_the_timeout_raises_approval_timeout(
    kind: str, gw: RunningGateway
) -> None:
    mailer = Mailer()
    with pytest.raises(ApprovalTimeout) as raised:
        call_guarded(kind, gw, "send_email", mailer.send, "a@b.c", "Hi", guard={"timeout": 1})
    timed_out = raised.value
    assert isinstance(timed_out, ActionDenied)
    assert timed_out.verdict == gateway_pb2.VERDICT_HOLD and timed_out.resolution is None
    assert (
        str(timed_out)
        == f"send_email still waiting for approval after 1 s (hold {timed_out.hold_id})"
    )
    [hold] = pending_holds(gw)
    assert (hold.hold_id, hold.status) == (timed_out.hold_id, approvals_pb2.HOLD_STATUS_PENDING)
    assert mailer.calls == []
    assert entries(gw, "outcome_reported") == []


# --- what guard accepts ------------------------------------------------------------------


def test_each_client_guards_only_functions_it_can_run_without_blocking() -> None:
    async def async_tool(to: str) -> None:
        pass

    def sync_tool(to: str) -> None:
        pass

    def generator_tool(to: str) -> Iterator[str]:
        yield to

    client = AgentClient("127.0.0.1:1", "token", "agent")
    with pytest.raises(TypeError, match=r"AgentClient.guard: .*async_tool is a coroutine function"):
        client.guard("send_email")(async_tool)
    with pytest.raises(TypeError, match="generator function"):
        client.guard("send_email")(generator_tool)
    client.close()

    async def main() -> None:
        async with AsyncAgentClient("127.0.0.1:1", "token", "agent") as aclient:
            with pytest.raises(TypeError, match="sync_tool is not a coroutine function"):
                aclient.guard("send_email")(sync_tool)

    asyncio.run(main())


def test_the_wrapper_keeps_the_name_and_signature_of_the_function() -> None:
    async def send_reminder(to: str, *, days: int = 7) -> str:
        """Sends a payment reminder."""
        return to

    def lookup(invoice_id: str) -> str:
        """Finds an invoice."""
        return invoice_id

    async def main() -> None:
        async with AsyncAgentClient("127.0.0.1:1", "token", "agent") as aclient:
            wrapped = aclient.guard("send_email")(send_reminder)
            assert inspect.iscoroutinefunction(wrapped)
            assert (wrapped.__name__, wrapped.__doc__) == (
                "send_reminder",
                "Sends a payment reminder.",
            )
            assert wrapped.__wrapped__ is send_reminder  # type: ignore[attr-defined]

    asyncio.run(main())
    with AgentClient("127.0.0.1:1", "token", "agent") as client:
        guarded = client.guard("lookup")(lookup)
        assert not inspect.iscoroutinefunction(guarded)
        assert (guarded.__name__, guarded.__doc__) == ("lookup", "Finds an invoice.")
        assert inspect.signature(guarded) == inspect.signature(lookup)


def test_action_denied_says_what_happened_and_survives_pickling() -> None:
    expired = gateway_pb2.Decision(
        action_id="a1",
        verdict=gateway_pb2.VERDICT_DENY,
        hold_id="h1",
        reason="expired by system: hold expired without a decision",
        resolution=gateway_pb2.Resolution(
            status=gateway_pb2.RESOLUTION_STATUS_EXPIRED, decided_by="system"
        ),
    )
    assert str(ActionDenied("send_email", expired)) == (
        "send_email expired without a decision (hold h1)"
    )
    pending = gateway_pb2.Decision(action_id="a2", verdict=gateway_pb2.VERDICT_HOLD, hold_id="h2")
    for error in (ActionDenied("send_email", expired), ApprovalTimeout("send_email", pending, 2.5)):
        copy = pickle.loads(pickle.dumps(error))
        assert (type(copy), str(copy), copy.decision) == (type(error), str(error), error.decision)


# --- the documented example --------------------------------------------------------------


def doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


class MailApi:
    def __init__(self) -> None:
        self.sent: list[dict[str, str]] = []

    def send(self, **message: str) -> str:
        self.sent.append(message)
        return f"msg-{len(self.sent)}"


def test_the_documented_example_runs(
    gw: RunningGateway, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = doc_blocks()
    for n, block in enumerate(blocks):
        compile(block, f"{DOC.name} block {n}", "exec")
    monkeypatch.setenv("AGENTGW_SERVER", gw.target)
    monkeypatch.setenv("AGENTGW_TOKEN", token_for(AGENT))
    monkeypatch.setenv("AGENTGW_AGENT", AGENT)
    mail_api = MailApi()
    namespace: dict[str, Any] = {"mail_api": mail_api}
    setup, use = blocks[0], blocks[1]
    exec(setup, namespace)
    # Approved: the email goes out and its id is the tool's result.
    call = pool.submit(exec, use, namespace)
    approve(gw, listed_hold(gw).hold_id)
    call.result(timeout=10)
    assert namespace["tool_result"] == "sent: msg-1"
    assert [m["to"] for m in mail_api.sent] == ["ana@example.com"]
    # Rejected: the model is told why, and nothing is sent.
    call = pool.submit(exec, use, namespace)
    reject(gw, listed_hold(gw).hold_id, reason="Ana's invoice was already paid")
    call.result(timeout=10)
    assert namespace["tool_result"] == (
        "not sent: send_email rejected by approver-1: Ana's invoice was already paid"
    )
    assert len(mail_api.sent) == 1
    first, second = entries(gw, "action_decided")
    assert first["resource"] == second["resource"] == "ana@example.com"
    [outcome] = entries(gw, "outcome_reported")
    assert outcome["action_id"] == first["action_id"] and outcome["outcome"] == "success"
    namespace["agent"].close()
