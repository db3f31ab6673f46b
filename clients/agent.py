"""The agent library: submit an action, wait for a held one, report how it went, and
`guard` a tool function so that it runs only when the gateway allows it.

`AgentClient` (blocking gRPC) and `AsyncAgentClient` (grpc.aio) have the same methods.
What they share is written once: the retry policy here, and in `clients/actions.py`
the messages they send, how a decision is read, the exceptions (re-exported here),
and how a guarded call becomes an action; each class keeps only its I/O. Stubs only,
no server code (docs/architecture.md); docs/agent-client.md is the guide.

with AgentClient("127.0.0.1:50051", token, agent_id="demo-agent") as agent:
    decision = agent.submit("send_email", session_id="s1", parameters={"to": "x@y"})
    if decision.verdict == gateway_pb2.VERDICT_HOLD:
        decision = agent.wait(decision, timeout=600)
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, ClassVar, TypeVar, cast

import grpc

from agentgw.v1 import gateway_pb2, gateway_pb2_grpc
from clients.actions import (
    ActionDenied,
    ApprovalTimeout,
    Guard,
    action_request,
    is_pending,
    log_unreported,
    outcome_message,
    remaining,
    require_allowed,
    run_outcome,
)
from clients.transport import Tls, open_aio_channel, open_channel

__all__ = ["ActionDenied", "AgentClient", "ApprovalTimeout", "AsyncAgentClient", "Tls", "bearer"]

Metadata = tuple[tuple[str, str], ...]
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("agentgw.client")

# Codes after which the same request may simply be sent again.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED})
RETRY_ATTEMPTS = 3
RETRY_BACKOFF_SECONDS = 0.2
CALL_TIMEOUT_SECONDS = 10.0


def bearer(token: str) -> Metadata:
    """The call metadata of `token`; none for "" (a principal known by its client
    certificate under mTLS)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def retry_delay(error: grpc.RpcError, attempt: int, attempts: int) -> float | None:
    """Seconds to wait before sending again after attempt number `attempt` (from 1)
    failed with `error`, or None when the error is final."""
    if attempt >= attempts or error.code() not in RETRYABLE:
        return None
    return float(RETRY_BACKOFF_SECONDS * 2 ** (attempt - 1))


def retrying(call: Callable[[], T], attempts: int = RETRY_ATTEMPTS) -> T:
    """`call()`, sent again per `retry_delay`; the last error is raised."""
    for attempt in range(1, max(attempts, 1) + 1):
        try:
            return call()
        except grpc.RpcError as e:
            delay = retry_delay(e, attempt, attempts)
            if delay is None:
                raise
            time.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


async def retrying_async(call: Callable[[], Awaitable[T]], attempts: int = RETRY_ATTEMPTS) -> T:
    """`retrying` for grpc.aio calls: the backoff does not block the event loop."""
    for attempt in range(1, max(attempts, 1) + 1):
        try:
            return await call()
        except grpc.RpcError as e:
            delay = retry_delay(e, attempt, attempts)
            if delay is None:
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


# --- the clients --------------------------------------------------------------------


class _Agent:
    """What both clients hold (identity, credentials, the default session) and the
    `guard` decorator up to the wrapper, which each client writes for its I/O."""

    asynchronous: ClassVar[bool]

    def __init__(self, token: str, agent_id: str, session_id: str | None) -> None:
        self.agent_id = agent_id
        self.session_id = session_id or uuid.uuid4().hex
        self._metadata = bearer(token)

    def _own(self, event: gateway_pb2.LogEvent) -> gateway_pb2.LogEvent:
        """The event as this agent's, in its session unless it names one."""
        own = gateway_pb2.LogEvent()
        own.CopyFrom(event)
        own.agent_id = self.agent_id
        own.session_id = event.session_id or self.session_id
        return own

    def guard(
        self,
        action_type: str,
        *,
        resource: str | Callable[..., str] | None = None,
        parameters: Mapping[str, Any] | Callable[..., Mapping[str, Any]] | None = None,
        session_id: str | Callable[..., str] | None = None,
        timeout: float | None = 600.0,
        report: bool = True,
    ) -> Callable[[F], F]:
        """A decorator: each call of the function is first submitted as an
        `action_type` action and runs only once allowed (a hold is waited for up to
        `timeout` seconds); ActionDenied or ApprovalTimeout otherwise. With `report`,
        the run's outcome is reported. See docs/agent-client.md."""
        options = Guard(action_type, resource, parameters, session_id, timeout, report)

        def decorate(fn: F) -> F:
            options.check(fn, type(self).__name__, self.asynchronous)
            guarded = self._guarded(options, fn, inspect.signature(fn))
            return cast(F, functools.wraps(fn)(guarded))

        return decorate

    def _guarded(
        self, guard: Guard, fn: Callable[..., Any], signature: inspect.Signature
    ) -> Callable[..., Any]:
        raise NotImplementedError


class AgentClient(_Agent):
    """The blocking client; safe to share between threads."""

    asynchronous = False

    def __init__(
        self,
        target: str,
        token: str,
        agent_id: str,
        channel: grpc.Channel | None = None,
        *,
        session_id: str | None = None,
        tls: Tls | None = None,
    ) -> None:
        super().__init__(token, agent_id, session_id)
        self._own_channel = channel is None
        self.channel = channel or open_channel(target, tls)
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)

    def submit(
        self,
        action_type: str,
        *,
        session_id: str | None = None,
        resource: str = "",
        parameters: Mapping[str, Any] | None = None,
        reasoning: str = "",
        labels: Mapping[str, str] | None = None,
        action_id: str | None = None,
        timeout: float = CALL_TIMEOUT_SECONDS,
        attempts: int = RETRY_ATTEMPTS,
    ) -> gateway_pb2.Decision:
        """Asks for a decision; `decision.action_id` names the action.

        The gateway decides an action_id once: the same request submitted again gets
        the first decision, so a call that failed in transit (UNAVAILABLE, or ABORTED
        while another call decides it) is retried here with the same action_id, up to
        `attempts` calls in all. To retry later yourself, pass the same `action_id`
        and the same content; other content under it is refused (ALREADY_EXISTS).
        `session_id` defaults to the client's `session_id`.
        """
        request = action_request(
            self.agent_id,
            action_type,
            session_id=session_id or self.session_id,
            resource=resource,
            parameters=parameters,
            reasoning=reasoning,
            labels=labels,
            action_id=action_id,
        )
        return self._submit(request, timeout, attempts)

    def _submit(
        self,
        request: gateway_pb2.ActionRequest,
        timeout: float = CALL_TIMEOUT_SECONDS,
        attempts: int = RETRY_ATTEMPTS,
    ) -> gateway_pb2.Decision:
        call = functools.partial(
            self.stub.Submit, request, metadata=self._metadata, timeout=timeout
        )
        response: gateway_pb2.Decision = retrying(call, attempts)
        return response

    def wait(
        self, held: gateway_pb2.Decision | str, timeout: float | None = None
    ) -> gateway_pb2.Decision:
        """Blocks until a held action is approved, rejected or expired.

        Raises grpc.RpcError with DEADLINE_EXCEEDED if `timeout` passes first.
        """
        response: gateway_pb2.Decision = self.stub.Await(
            gateway_pb2.AwaitRequest(hold_id=held if isinstance(held, str) else held.hold_id),
            metadata=self._metadata,
            timeout=timeout,
        )
        return response

    def report_outcome(
        self,
        decided: gateway_pb2.Decision | str,
        *,
        success: bool,
        error: str = "",
        error_type: str = "",
        duration_seconds: float = 0.0,
        tokens: int | None = None,
        cost: float = 0.0,
        session_id: str = "",
        timeout: float = CALL_TIMEOUT_SECONDS,
    ) -> int:
        """Reports how an action went (once per action); returns the entry's audit seq.

        `decided` is the Decision (or the action_id) of the action. The outcome feeds
        the agent's baselines (error rate, tokens per action).
        """
        outcome = outcome_message(
            self.agent_id,
            decided,
            success=success,
            error=error,
            error_type=error_type,
            duration_seconds=duration_seconds,
            tokens=tokens,
            cost=cost,
            session_id=session_id,
        )
        return self._report(outcome, timeout)

    def _report(self, outcome: gateway_pb2.Outcome, timeout: float = CALL_TIMEOUT_SECONDS) -> int:
        response: gateway_pb2.ReportOutcomeResponse = self.stub.ReportOutcome(
            outcome, metadata=self._metadata, timeout=timeout
        )
        return response.audit_seq

    def log(self, event: gateway_pb2.LogEvent, timeout: float = CALL_TIMEOUT_SECONDS) -> str:
        """Files one of the agent's own log records (`agent_decision`, `agent_error`,
        `user_interaction` in clients/actions.py build them); returns its trace id."""
        response: gateway_pb2.LogResponse = self.stub.Log(
            self._own(event), metadata=self._metadata, timeout=timeout
        )
        return response.trace_id

    def _guarded(
        self, guard: Guard, fn: Callable[..., Any], signature: inspect.Signature
    ) -> Callable[..., Any]:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            request = guard.request(self.agent_id, self.session_id, signature, args, kwargs)
            decision = self._allowed(guard, self._submit(request))
            started = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            except Exception as error:
                self._report_quietly(guard, run_outcome(self.agent_id, decision, started, error))
                raise
            self._report_quietly(guard, run_outcome(self.agent_id, decision, started))
            return result

        return guarded

    def _allowed(self, guard: Guard, decision: gateway_pb2.Decision) -> gateway_pb2.Decision:
        if is_pending(decision):
            deadline = guard.deadline()
            try:
                decision = retrying(lambda: self.wait(decision, remaining(deadline)))
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
                raise ApprovalTimeout(guard.action_type, decision, guard.timeout) from None
        return require_allowed(guard.action_type, decision)

    def _report_quietly(self, guard: Guard, outcome: gateway_pb2.Outcome) -> None:
        if guard.report:
            try:
                retrying(lambda: self._report(outcome))
            except Exception as e:  # the function's result or exception matters more
                log_unreported(guard, outcome, e)

    def close(self) -> None:
        if self._own_channel:
            self.channel.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncAgentClient(_Agent):
    """The grpc.aio client: AgentClient's methods as coroutines. Create it in the
    event loop that uses it."""

    asynchronous = True

    def __init__(
        self,
        target: str,
        token: str,
        agent_id: str,
        channel: grpc.aio.Channel | None = None,
        *,
        session_id: str | None = None,
        tls: Tls | None = None,
    ) -> None:
        super().__init__(token, agent_id, session_id)
        self._own_channel = channel is None
        self.channel = channel or open_aio_channel(target, tls)
        # GatewayAsyncStub exists in the .pyi only: what GatewayStub is on an aio channel.
        stub = gateway_pb2_grpc.GatewayStub(self.channel)
        self.stub = cast("gateway_pb2_grpc.GatewayAsyncStub", stub)

    async def submit(
        self,
        action_type: str,
        *,
        session_id: str | None = None,
        resource: str = "",
        parameters: Mapping[str, Any] | None = None,
        reasoning: str = "",
        labels: Mapping[str, str] | None = None,
        action_id: str | None = None,
        timeout: float = CALL_TIMEOUT_SECONDS,
        attempts: int = RETRY_ATTEMPTS,
    ) -> gateway_pb2.Decision:
        """AgentClient.submit, with the same retries (the backoff is asyncio.sleep)."""
        request = action_request(
            self.agent_id,
            action_type,
            session_id=session_id or self.session_id,
            resource=resource,
            parameters=parameters,
            reasoning=reasoning,
            labels=labels,
            action_id=action_id,
        )
        return await self._submit(request, timeout, attempts)

    async def _submit(
        self,
        request: gateway_pb2.ActionRequest,
        timeout: float = CALL_TIMEOUT_SECONDS,
        attempts: int = RETRY_ATTEMPTS,
    ) -> gateway_pb2.Decision:
        call = functools.partial(
            self.stub.Submit, request, metadata=self._metadata, timeout=timeout
        )
        response: gateway_pb2.Decision = await retrying_async(call, attempts)
        return response

    async def wait(
        self, held: gateway_pb2.Decision | str, timeout: float | None = None
    ) -> gateway_pb2.Decision:
        """AgentClient.wait: DEADLINE_EXCEEDED (grpc.aio.AioRpcError) after `timeout`."""
        response: gateway_pb2.Decision = await self.stub.Await(
            gateway_pb2.AwaitRequest(hold_id=held if isinstance(held, str) else held.hold_id),
            metadata=self._metadata,
            timeout=timeout,
        )
        return response

    async def report_outcome(
        self,
        decided: gateway_pb2.Decision | str,
        *,
        success: bool,
        error: str = "",
        error_type: str = "",
        duration_seconds: float = 0.0,
        tokens: int | None = None,
        cost: float = 0.0,
        session_id: str = "",
        timeout: float = CALL_TIMEOUT_SECONDS,
    ) -> int:
        """AgentClient.report_outcome; returns the entry's audit seq."""
        outcome = outcome_message(
            self.agent_id,
            decided,
            success=success,
            error=error,
            error_type=error_type,
            duration_seconds=duration_seconds,
            tokens=tokens,
            cost=cost,
            session_id=session_id,
        )
        return await self._report(outcome, timeout)

    async def _report(
        self, outcome: gateway_pb2.Outcome, timeout: float = CALL_TIMEOUT_SECONDS
    ) -> int:
        response: gateway_pb2.ReportOutcomeResponse = await self.stub.ReportOutcome(
            outcome, metadata=self._metadata, timeout=timeout
        )
        return response.audit_seq

    async def log(self, event: gateway_pb2.LogEvent, timeout: float = CALL_TIMEOUT_SECONDS) -> str:
        """AgentClient.log; returns the record's trace id."""
        response: gateway_pb2.LogResponse = await self.stub.Log(
            self._own(event), metadata=self._metadata, timeout=timeout
        )
        return response.trace_id

    def _guarded(
        self, guard: Guard, fn: Callable[..., Any], signature: inspect.Signature
    ) -> Callable[..., Any]:
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            request = guard.request(self.agent_id, self.session_id, signature, args, kwargs)
            decision = await self._allowed(guard, await self._submit(request))
            started = time.perf_counter()
            try:
                result = await fn(*args, **kwargs)
            except Exception as error:
                outcome = run_outcome(self.agent_id, decision, started, error)
                await self._report_quietly(guard, outcome)
                raise
            await self._report_quietly(guard, run_outcome(self.agent_id, decision, started))
            return result

        return guarded

    async def _allowed(self, guard: Guard, decision: gateway_pb2.Decision) -> gateway_pb2.Decision:
        if is_pending(decision):
            deadline = guard.deadline()
            try:
                decision = await retrying_async(lambda: self.wait(decision, remaining(deadline)))
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
                raise ApprovalTimeout(guard.action_type, decision, guard.timeout) from None
        return require_allowed(guard.action_type, decision)

    async def _report_quietly(self, guard: Guard, outcome: gateway_pb2.Outcome) -> None:
        if guard.report:
            try:
                await retrying_async(lambda: self._report(outcome))
            except Exception as e:  # the function's result or exception matters more
                log_unreported(guard, outcome, e)

    async def close(self) -> None:
        if self._own_channel:
            await self.channel.close()

    aclose = close

    async def __aenter__(self) -> AsyncAgentClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
