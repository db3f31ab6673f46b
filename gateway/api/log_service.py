"""The `Logs` service and the protobuf form of log records and agents' log events.

`Logs.Query` (admins and auditors) streams the newest matching records, oldest first,
then, with `follow`, every new one until the caller ends the call. The conversions
of `Gateway.Log` (`agent_log_from_proto`, `log_response`) live here too, beside the
other log conversions; `GatewayService.Log` calls them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from agentgw.v1 import gateway_pb2, logs_pb2
from clients.wire import python_to_struct, struct_to_python
from gateway.api.auth import Authenticator
from gateway.api.status import Servicer, stream_rpc
from gateway.domain.agent_logs import AgentLogEvent
from gateway.domain.audit.query import micros_from_unix
from gateway.domain.log_records import LogFilter, LogRecord, log_filter, timestamp_ms
from gateway.domain.principals import Principal, Role
from gateway.domain.redaction import Redactor
from gateway.errors import InvalidRequest
from gateway.services.log_shipping import LogSearch

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000


class LogsService(Servicer):
    service = logs_pb2.DESCRIPTOR.services_by_name["Logs"]

    def __init__(
        self, auth: Authenticator, search: LogSearch, redactor: Redactor | None = None
    ) -> None:
        super().__init__(auth, redactor)
        self.search = search

    @stream_rpc(Role.ADMIN, Role.AUDITOR)
    async def Query(
        self,
        request: logs_pb2.LogQuery,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> AsyncIterator[logs_pb2.LogRecord]:
        flt, limit = log_query_from_proto(request)
        if request.follow:
            async for record in self.search.follow(flt, limit):
                yield log_record_to_proto(record)
            return
        for record in await self.search.query(flt, limit):
            yield log_record_to_proto(record)


def log_query_from_proto(request: logs_pb2.LogQuery) -> tuple[LogFilter, int]:
    """The checked filter and limit of a query (InvalidRequest names the field)."""
    limit = request.limit or DEFAULT_LIMIT
    if limit > MAX_LIMIT:
        raise InvalidRequest("limit", f"{limit} exceeds the limit of {MAX_LIMIT}")
    until = _seconds(request.until, "until") if request.HasField("until") else None
    if request.follow and until is not None:
        raise InvalidRequest("until", "cannot be combined with follow")
    flt = log_filter(
        categories=list(request.categories),
        agent_id=request.agent_id,
        session_id=request.session_id,
        min_level=request.min_level,
        since=_seconds(request.since, "since") if request.HasField("since") else None,
        until=until,
        trace_id=request.trace_id,
    )
    return flt, limit


def _seconds(ts: timestamp_pb2.Timestamp, field: str) -> float:
    """A query time, checked as the audit queries check theirs (1970 to 9999, nanos
    in range): anything else is INVALID_ARGUMENT naming the field."""
    return micros_from_unix(field, ts.seconds, ts.nanos) / 1e6


def log_record_to_proto(record: LogRecord) -> logs_pb2.LogRecord:
    msg = logs_pb2.LogRecord(
        id=record.id,
        category=record.category,
        level=record.level,
        event_type=record.event_type,
        message=record.message,
        agent_id=record.agent_id,
        session_id=record.session_id,
        trace_id=record.trace_id,
        logger=record.logger,
        data=python_to_struct(record.data),
    )
    msg.timestamp.FromMilliseconds(timestamp_ms(record.timestamp))
    return msg


def agent_log_from_proto(request: gateway_pb2.LogEvent) -> AgentLogEvent:
    """A `LogEvent` as sent; `agent_log_record` checks it."""
    kind = request.WhichOneof("kind") or ""
    details: dict[str, Any] = {}
    if kind == "decision":
        d = request.decision
        details = {
            "options": list(d.options),
            "choice": d.choice,
            "confidence": d.confidence,
            "reasoning": d.reasoning,
        }
    elif kind == "error":
        e = request.error
        details = {
            "type": e.type,
            "message": e.message,
            "stack_trace": e.stack_trace,
            "context": struct_to_python(e.context),
        }
    elif kind == "user_interaction":
        u = request.user_interaction
        details = {"user_id": u.user_id, "interaction": u.interaction, "content": u.content}
    return AgentLogEvent(
        agent_id=request.agent_id,
        session_id=request.session_id,
        category=request.category,
        message=request.message,
        fields=struct_to_python(request.fields),
        level=request.level,
        event_type=request.event_type,
        trace_id=request.trace_id,
        kind=kind,
        details=details,
    )


def log_response(trace_id: str) -> gateway_pb2.LogResponse:
    return gateway_pb2.LogResponse(trace_id=trace_id)
