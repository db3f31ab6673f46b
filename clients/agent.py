"""A small synchronous client for agents: submit an action, wait for a held one.

with AgentClient("127.0.0.1:50051", token, agent_id="demo-agent") as agent:
    decision = agent.submit("send_email", session_id="s1", parameters={"to": "x@y"})
    if decision.verdict == gateway_pb2.VERDICT_HOLD:
        decision = agent.wait(decision, timeout=600)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import grpc

from agentgw.v1 import gateway_pb2, gateway_pb2_grpc
from clients.wire import python_to_struct

Metadata = tuple[tuple[str, str], ...]

# Codes after which the same request may simply be sent again.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED})
RETRY_BACKOFF_SECONDS = 0.2


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


class AgentClient:
    def __init__(
        self,
        target: str,
        token: str,
        agent_id: str,
        channel: grpc.Channel | None = None,
    ) -> None:
        self.agent_id = agent_id
        self._metadata = bearer(token)
        self._own_channel = channel is None
        self.channel = channel or grpc.insecure_channel(target)
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)

    def submit(
        self,
        action_type: str,
        *,
        session_id: str,
        resource: str = "",
        parameters: Mapping[str, Any] | None = None,
        reasoning: str = "",
        labels: Mapping[str, str] | None = None,
        action_id: str | None = None,
        timeout: float = 10.0,
        attempts: int = 3,
    ) -> gateway_pb2.Decision:
        """Asks for a decision; `decision.action_id` names the action.

        The gateway decides an action_id once: the same request submitted again gets
        the first decision, so a call that failed in transit (UNAVAILABLE, or ABORTED
        while another call decides it) is retried here with the same action_id, up to
        `attempts` calls in all. To retry later yourself, pass the same `action_id`
        and the same content; other content under it is refused (ALREADY_EXISTS).
        """
        request = gateway_pb2.ActionRequest(
            action_id=action_id or uuid.uuid4().hex,
            agent_id=self.agent_id,
            session_id=session_id,
            action_type=action_type,
            resource=resource,
            parameters=python_to_struct(parameters or {}),
            reasoning=reasoning,
            labels=dict(labels or {}),
        )
        for attempt in range(1, max(attempts, 1) + 1):
            try:
                response: gateway_pb2.Decision = self.stub.Submit(
                    request, metadata=self._metadata, timeout=timeout
                )
                return response
            except grpc.RpcError as e:
                if attempt >= attempts or e.code() not in RETRYABLE:
                    raise
                time.sleep(RETRY_BACKOFF_SECONDS * 2 ** (attempt - 1))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def wait(
        self, held: gateway_pb2.Decision | str, timeout: float | None = None
    ) -> gateway_pb2.Decision:
        """Blocks until a held action is approved, rejected or expired.

        Raises grpc.RpcError with DEADLINE_EXCEEDED if `timeout` passes first.
        """
        hold_id = held if isinstance(held, str) else held.hold_id
        response: gateway_pb2.Decision = self.stub.Await(
            gateway_pb2.AwaitRequest(hold_id=hold_id), metadata=self._metadata, timeout=timeout
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
        timeout: float = 10.0,
    ) -> int:
        """Reports how an action went (once per action); returns the entry's audit seq.

        `decided` is the Decision (or the action_id) of the action. The outcome feeds
        the agent's baselines (error rate, tokens per action).
        """
        action_id = decided if isinstance(decided, str) else decided.action_id
        outcome = gateway_pb2.Outcome(
            action_id=action_id,
            agent_id=self.agent_id,
            success=success,
            error=error,
            error_type=error_type,
            cost=cost,
        )
        outcome.duration.FromNanoseconds(round(duration_seconds * 1e9))
        if tokens is not None:
            outcome.tokens = tokens
        response: gateway_pb2.ReportOutcomeResponse = self.stub.ReportOutcome(
            outcome, metadata=self._metadata, timeout=timeout
        )
        return response.audit_seq

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
