"""What an agent sends and how it reads the answer, shared by both clients: the
request and outcome messages, the exceptions a refused action raises, and how a
call of a guarded function becomes an action (`Guard`). No I/O here: each client in
`clients/agent.py` does its own calls. Stubs only, no server code.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from agentgw.v1 import gateway_pb2
from clients.wire import python_to_struct

T = TypeVar("T")

log = logging.getLogger("agentgw.client")


def action_request(
    agent_id: str,
    action_type: str,
    *,
    session_id: str,
    resource: str = "",
    parameters: Mapping[str, Any] | None = None,
    reasoning: str = "",
    labels: Mapping[str, str] | None = None,
    action_id: str | None = None,
) -> gateway_pb2.ActionRequest:
    """The request `submit` sends; a new random action_id unless one is given."""
    return gateway_pb2.ActionRequest(
        action_id=action_id or uuid.uuid4().hex,
        agent_id=agent_id,
        session_id=session_id,
        action_type=action_type,
        resource=resource,
        parameters=python_to_struct(parameters or {}),
        reasoning=reasoning,
        labels=dict(labels or {}),
    )


def outcome_message(
    agent_id: str,
    decided: gateway_pb2.Decision | str,
    *,
    success: bool,
    error: str = "",
    error_type: str = "",
    duration_seconds: float = 0.0,
    tokens: int | None = None,
    cost: float = 0.0,
    session_id: str = "",
) -> gateway_pb2.Outcome:
    """The message `report_outcome` sends for `decided` (a Decision or an action_id)."""
    outcome = gateway_pb2.Outcome(
        action_id=decided if isinstance(decided, str) else decided.action_id,
        agent_id=agent_id,
        session_id=session_id,
        success=success,
        error=error,
        error_type=error_type,
        cost=cost,
    )
    outcome.duration.FromNanoseconds(round(duration_seconds * 1e9))
    if tokens is not None:
        outcome.tokens = tokens
    return outcome


def agent_decision(
    choice: str,
    options: Sequence[str] = (),
    confidence: float = 0.0,
    reasoning: str = "",
    **event: Any,
) -> gateway_pb2.LogEvent:
    """A `Gateway.Log` record of a choice the agent made (category decision). `event`:
    message, session_id, level, event_type, trace_id, fields (a mapping)."""
    kind = gateway_pb2.AgentDecision(
        options=list(options), choice=choice, confidence=confidence, reasoning=reasoning
    )
    return _log_event(event, decision=kind)


def agent_error(
    error_type: str,
    message: str,
    stack_trace: str = "",
    context: Mapping[str, Any] | None = None,
    **event: Any,
) -> gateway_pb2.LogEvent:
    """A `Gateway.Log` record of an error the agent met (category error)."""
    kind = gateway_pb2.AgentError(type=error_type, message=message, stack_trace=stack_trace)
    if context:
        kind.context.CopyFrom(python_to_struct(json_compatible(dict(context))))
    return _log_event(event, error=kind)


def user_interaction(
    user_id: str, interaction: str, content: str = "", **event: Any
) -> gateway_pb2.LogEvent:
    """A `Gateway.Log` record of an exchange with a user (category user)."""
    kind = gateway_pb2.UserInteraction(user_id=user_id, interaction=interaction, content=content)
    return _log_event(event, user_interaction=kind)


def _log_event(event: Mapping[str, Any], **kind: Any) -> gateway_pb2.LogEvent:
    fields = event.get("fields")
    message = gateway_pb2.LogEvent(
        **{k: v for k, v in event.items() if k != "fields"},
        **kind,
    )
    if fields:
        message.fields.CopyFrom(python_to_struct(json_compatible(dict(fields))))
    return message


def is_pending(decision: gateway_pb2.Decision) -> bool:
    """Held and not resolved yet: an approver has still to decide."""
    return decision.verdict == gateway_pb2.VERDICT_HOLD and not decision.HasField("resolution")


# --- exceptions ---------------------------------------------------------------------


class ActionDenied(Exception):
    """The gateway did not allow a guarded action, so the function did not run:
    denied at once, or held and then rejected or expired. `decision` is the last
    Decision the gateway sent."""

    def __init__(self, action_type: str, decision: gateway_pb2.Decision) -> None:
        super().__init__(action_type, decision)
        self.action_type = action_type
        self.decision = decision

    @property
    def verdict(self) -> gateway_pb2.Verdict.ValueType:
        return self.decision.verdict

    @property
    def reason(self) -> str:
        return self.decision.reason

    @property
    def findings(self) -> tuple[gateway_pb2.Finding, ...]:
        return tuple(self.decision.findings)

    @property
    def resolution(self) -> gateway_pb2.Resolution | None:
        """How an approver (or the expiry) resolved the hold; None when there is none."""
        return self.decision.resolution if self.decision.HasField("resolution") else None

    @property
    def hold_id(self) -> str:
        """The hold's id; empty when the action was denied without one."""
        return self.decision.hold_id

    @property
    def action_id(self) -> str:
        return self.decision.action_id

    def __str__(self) -> str:
        resolution = self.resolution
        if resolution is not None:
            if resolution.status == gateway_pb2.RESOLUTION_STATUS_REJECTED:
                return (
                    f"{self.action_type} rejected by {resolution.decided_by}: {resolution.reason}"
                )
            if resolution.status == gateway_pb2.RESOLUTION_STATUS_EXPIRED:
                return f"{self.action_type} expired without a decision (hold {self.hold_id})"
        return f"{self.action_type} denied: {self.reason}" if self.reason else self.action_type


class ApprovalTimeout(ActionDenied):
    """The guard stopped waiting for an approver after `timeout` seconds. The hold
    is still pending: an approver may still resolve it, but this call has given up,
    and the function did not run."""

    def __init__(
        self, action_type: str, decision: gateway_pb2.Decision, timeout: float | None
    ) -> None:
        super().__init__(action_type, decision)
        self.args = (action_type, decision, timeout)
        self.timeout = timeout

    def __str__(self) -> str:
        waited = "" if self.timeout is None else f" after {self.timeout:g} s"
        return f"{self.action_type} still waiting for approval{waited} (hold {self.hold_id})"


def require_allowed(action_type: str, decision: gateway_pb2.Decision) -> gateway_pb2.Decision:
    if decision.verdict != gateway_pb2.VERDICT_ALLOW:
        raise ActionDenied(action_type, decision)
    return decision


# --- guard: from a function call to an action, and from a run to an outcome ----------


def json_compatible(value: Any, _path: frozenset[int] = frozenset()) -> Any:
    """`value` as a protobuf Struct holds it: None, bools, strings and finite numbers
    as they are, mappings as objects with str() keys, lists and tuples as lists, and
    the str() of anything else (a Decimal, a date, a Path, bytes, nan, a container
    met again inside itself)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return value if math.isfinite(value) else str(value)
    if id(value) not in _path:
        inner = _path | {id(value)}
        if isinstance(value, Mapping):
            return {str(k): json_compatible(v, inner) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [json_compatible(v, inner) for v in value]
    return str(value)


def call_by_name(function: Callable[..., T], bound: inspect.BoundArguments) -> T:
    """`function` called with a guarded call's arguments, each by name where the
    guarded function's signature allows it, so that `lambda to, **_: to` finds `to`
    in `f("a@b.c", "hi")` as in `f(to="a@b.c", subject="hi")`. Positional-only
    parameters and `*args` (and what precedes a non-empty `*args`) stay positional."""
    params = bound.signature.parameters
    extras = any(params[n].kind is inspect.Parameter.VAR_POSITIONAL for n in bound.arguments)
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = params[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            args.extend(value)
        elif kind is inspect.Parameter.VAR_KEYWORD:
            kwargs.update(value)
        elif kind is inspect.Parameter.POSITIONAL_ONLY or (
            kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and extras
        ):
            args.append(value)
        else:
            kwargs[name] = value
    return function(*args, **kwargs)


def _text_option(
    name: str, option: str | Callable[..., str] | None, bound: inspect.BoundArguments
) -> str:
    value = call_by_name(option, bound) if callable(option) else option or ""
    if not isinstance(value, str):
        raise TypeError(f"guard: the {name} callable returned {type(value).__name__}, not str")
    return value


@dataclass(frozen=True)
class Guard:
    """The options of one `guard(...)`: how a call of the function becomes an action."""

    action_type: str
    resource: str | Callable[..., str] | None
    parameters: Mapping[str, Any] | Callable[..., Mapping[str, Any]] | None
    session_id: str | Callable[..., str] | None
    timeout: float | None
    report: bool

    def check(self, fn: Callable[..., Any], client: str, asynchronous: bool) -> None:
        """A clear TypeError for a function this client cannot guard."""
        name = f"{client}.guard: {getattr(fn, '__qualname__', repr(fn))}"
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"{name} is a generator function; its outcome would be reported before its "
                "body runs, so guard the function that does the action"
            )
        if inspect.iscoroutinefunction(fn) and not asynchronous:
            raise TypeError(
                f"{name} is a coroutine function; guard it with AsyncAgentClient.guard "
                "(this client's calls would block the event loop)"
            )
        if asynchronous and not inspect.iscoroutinefunction(fn):
            raise TypeError(f"{name} is not a coroutine function; guard it with AgentClient.guard")

    def request(
        self,
        agent_id: str,
        default_session_id: str,
        signature: inspect.Signature,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> gateway_pb2.ActionRequest:
        """The action a call stands for. TypeError, before anything is sent, when the
        arguments do not fit the function (as the call itself would raise)."""
        bound = signature.bind(*args, **kwargs)
        parameters = self.parameters
        if parameters is None:
            parameters = bound.arguments
        elif callable(parameters):
            parameters = call_by_name(parameters, bound)
            if not isinstance(parameters, Mapping):
                raise TypeError(
                    f"guard: the parameters callable returned {type(parameters).__name__}, "
                    "not a mapping"
                )
        return action_request(
            agent_id,
            self.action_type,
            session_id=_text_option("session_id", self.session_id, bound) or default_session_id,
            resource=_text_option("resource", self.resource, bound),
            parameters=json_compatible(dict(parameters)),
        )

    def deadline(self) -> float | None:
        return None if self.timeout is None else time.monotonic() + self.timeout


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


def run_outcome(
    agent_id: str, decision: gateway_pb2.Decision, started: float, error: Exception | None = None
) -> gateway_pb2.Outcome:
    """The outcome of a guarded function's run that began at `started` (perf_counter)
    and ended now, raising `error` or not."""
    return outcome_message(
        agent_id,
        decision,
        session_id=decision.session_id,
        success=error is None,
        error="" if error is None else str(error),
        error_type="" if error is None else type(error).__name__,
        duration_seconds=time.perf_counter() - started,
    )


def log_unreported(guard: Guard, outcome: gateway_pb2.Outcome, error: Exception) -> None:
    detail = f"{error.code().name}: {error.details()}" if isinstance(error, grpc.RpcError) else ""
    log.warning(
        "the outcome of %s (action_id %s) was not reported: %s",
        guard.action_type,
        outcome.action_id,
        detail or f"{type(error).__name__}: {error}",
    )
