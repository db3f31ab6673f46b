"""gRPC servicers for Gateway, Approvals, Audit and Alerts.

Thin by design: each method converts, calls the domain with the authenticated
principal, and converts back. Each RPC names the one role that may call it (roles
are separate: docs/configuration.md, "Roles"); `gateway/api/decoding.add_servicer`
refuses to register a method declared without one. RPCs not built yet answer
UNIMPLEMENTED, and only to a caller of the right role.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import grpc

from agentgw.v1 import alerts_pb2, approvals_pb2, audit_pb2, gateway_pb2
from gateway.api import convert
from gateway.api.auth import Authenticator
from gateway.api.log_service import agent_log_from_proto, log_response
from gateway.api.status import HEADERS, Servicer, rpc, stream_rpc
from gateway.api.telemetry import current_trace_id
from gateway.api.tracing import trace_id_of
from gateway.domain.audit.entry import AuditEntry
from gateway.domain.principals import Principal, Role
from gateway.domain.redaction import Redactor
from gateway.errors import InvalidRequest
from gateway.services.alerting import Alerting
from gateway.services.approvals import ApprovalDesk
from gateway.services.audit_queries import AuditSearch
from gateway.services.decisions import DecisionPipeline
from gateway.services.hold_watch import HoldWatch
from gateway.services.key_rotation import rotate_key
from gateway.services.log_integrity import LogIntegrity
from gateway.services.log_shipping import AgentLogDesk
from gateway.services.outcomes import OutcomeDesk
from gateway.services.quarantine import QuarantineDesk
from gateway.store.audit_log import AuditLog

READ_CHUNK = 500


class GatewayService(Servicer):
    service = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"]

    def __init__(
        self,
        auth: Authenticator,
        pipeline: DecisionPipeline,
        desk: ApprovalDesk,
        outcomes: OutcomeDesk,
        agent_logs: AgentLogDesk,
        redactor: Redactor | None = None,
    ) -> None:
        super().__init__(auth, redactor)
        self.pipeline = pipeline
        self.desk = desk
        self.outcomes = outcomes
        self.agent_logs = agent_logs

    @rpc(Role.AGENT)
    async def Submit(
        self,
        request: gateway_pb2.ActionRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> gateway_pb2.Decision:
        # Traced, the call's span carries the trace (the caller's traceparent, or a new
        # one); the Decision, logs and audit entry share its id.
        trace_id = current_trace_id() or trace_id_of(context.invocation_metadata())
        action = convert.action_from_proto(request)
        if not action.agent_id:  # an agent acts as itself: its principal's name
            action = replace(action, agent_id=principal.name)
        decision = await self.pipeline.submit(principal, action, trace_id)
        return convert.decision_to_proto(decision)

    @rpc(Role.AGENT, waits=True)
    async def Await(
        self,
        request: gateway_pb2.AwaitRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> gateway_pb2.Decision:
        decision = await self.desk.await_decision(principal, request.hold_id, request.action_id)
        return convert.decision_to_proto(decision)

    @rpc(Role.AGENT)
    async def ReportOutcome(
        self,
        request: gateway_pb2.Outcome,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> gateway_pb2.ReportOutcomeResponse:
        outcome = convert.outcome_from_proto(request)
        if not outcome.agent_id:  # as for Submit: the principal's own name
            outcome = replace(outcome, agent_id=principal.name)
        seq = await self.outcomes.report(principal, outcome)
        return gateway_pb2.ReportOutcomeResponse(audit_seq=seq)

    @rpc(Role.AGENT)
    async def Log(
        self,
        request: gateway_pb2.LogEvent,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> gateway_pb2.LogResponse:
        event = agent_log_from_proto(request)
        if not event.trace_id:  # the caller's trace, as for a Submit
            event = replace(event, trace_id=trace_id_of(context.invocation_metadata()))
        return log_response(await self.agent_logs.record(principal, event))


class ApprovalsService(Servicer):
    service = approvals_pb2.DESCRIPTOR.services_by_name["Approvals"]

    def __init__(
        self,
        auth: Authenticator,
        desk: ApprovalDesk,
        watch: HoldWatch,
        quarantines: QuarantineDesk,
        redactor: Redactor | None = None,
    ) -> None:
        super().__init__(auth, redactor)
        self.desk = desk
        self.watch = watch
        self.quarantines = quarantines

    @rpc(Role.APPROVER)
    async def ListHolds(
        self,
        request: approvals_pb2.ListHoldsRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> approvals_pb2.ListHoldsResponse:
        holds, next_page = await self.desk.list_holds(
            agent_id=request.agent_id,
            session_id=request.session_id,
            action_type=request.action_type,
            min_age_seconds=request.min_age.ToTimedelta().total_seconds(),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return approvals_pb2.ListHoldsResponse(
            holds=[convert.hold_to_proto(h) for h in holds], next_page_token=next_page
        )

    @rpc(Role.APPROVER)
    async def Approve(
        self,
        request: approvals_pb2.ApproveRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> approvals_pb2.Hold:
        return convert.hold_to_proto(
            await self.desk.approve(principal, request.hold_id, request.reason)
        )

    @rpc(Role.APPROVER)
    async def Reject(
        self,
        request: approvals_pb2.RejectRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> approvals_pb2.Hold:
        return convert.hold_to_proto(
            await self.desk.reject(principal, request.hold_id, request.reason)
        )

    # An admin may resume a session as an administrative act (and quarantine, later).
    @rpc(Role.APPROVER, Role.ADMIN)
    async def ResumeSession(
        self,
        request: approvals_pb2.ResumeSessionRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> approvals_pb2.ResumeSessionResponse:
        was_paused, seq = await self.desk.resume_session(
            principal, request.agent_id, request.session_id, request.reason
        )
        return approvals_pb2.ResumeSessionResponse(was_paused=was_paused, audit_seq=seq)

    @stream_rpc(Role.APPROVER)
    async def WatchHolds(
        self,
        request: approvals_pb2.WatchHoldsRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> AsyncIterator[approvals_pb2.HoldEvent]:
        async for event, hold in self.watch.watch():
            yield convert.hold_event_to_proto(event, hold)

    @rpc(Role.APPROVER, Role.ADMIN)
    async def ListSessions(
        self,
        request: approvals_pb2.ListSessionsRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> approvals_pb2.ListSessionsResponse:
        paused = await self.desk.paused_sessions(request.agent_id)
        return approvals_pb2.ListSessionsResponse(
            sessions=[convert.paused_session_to_proto(a, s, p) for a, s, p in paused]
        )

    @rpc(Role.ADMIN)
    async def QuarantineAgent(
        self,
        request: approvals_pb2.QuarantineAgentRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> approvals_pb2.Quarantine:
        record = await self.quarantines.quarantine(principal, request.agent_id, request.reason)
        return convert.quarantine_to_proto(record)

    @rpc(Role.ADMIN)
    async def ReleaseAgent(
        self,
        request: approvals_pb2.ReleaseAgentRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> approvals_pb2.ReleaseAgentResponse:
        was, seq = await self.quarantines.release(principal, request.agent_id, request.reason)
        return approvals_pb2.ReleaseAgentResponse(was_quarantined=was, audit_seq=seq)


class AuditService(Servicer):
    service = audit_pb2.DESCRIPTOR.services_by_name["Audit"]

    def __init__(
        self,
        auth: Authenticator,
        audit: AuditLog,
        clock: Callable[[], float],
        integrity: LogIntegrity,
        redactor: Redactor | None = None,
    ) -> None:
        super().__init__(auth, redactor)
        self.audit = audit
        self.origin = audit.origin
        self.clock = clock
        self.search = AuditSearch(audit)
        self.integrity = integrity

    @rpc(Role.AUDITOR)
    async def VerifyLog(
        self,
        request: audit_pb2.VerifyLogRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> audit_pb2.VerifyLogResponse:
        report, size, seq = await self.integrity.verify(principal.name)
        response = audit_pb2.VerifyLogResponse(
            ok=report.ok,
            entries=report.count,
            tree_size=size,
            root_hash=report.root_hash,
            audit_seq=seq,
        )
        if report.failure is not None:
            response.failure_kind = report.failure.kind.value
            response.failure_seq = report.failure.seq or 0
            response.failure_message = report.failure.message
        return response

    @rpc(Role.AUDITOR)
    async def GetCheckpoint(
        self,
        request: audit_pb2.GetCheckpointRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> audit_pb2.Checkpoint:
        if request.published:
            signed = await self.audit.published_checkpoint()
        else:
            signed = await self.audit.checkpoint()
        return convert.checkpoint_to_proto(signed)

    @stream_rpc(Role.AUDITOR)
    async def ReadEntries(
        self,
        request: audit_pb2.ReadEntriesRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> AsyncIterator[audit_pb2.AuditEntry]:
        start = max(request.start_seq, 1)
        head = (await self.audit.head()).seq
        end = head if request.end_seq == 0 else min(request.end_seq, head)
        if request.end_seq and request.end_seq < start:
            raise InvalidRequest("end_seq", f"{request.end_seq} is before start_seq {start}")
        while start <= end:
            stop = min(start + READ_CHUNK - 1, end)
            for line in await self.audit.read_lines(start, stop):
                yield convert.entry_to_proto(AuditEntry.from_json_line(line))
            start = stop + 1

    @rpc(Role.AUDITOR)
    async def GetPublicKeys(
        self,
        request: audit_pb2.GetPublicKeysRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> audit_pb2.PublicKeys:
        keys = [convert.public_key_to_proto(self.origin, k) for k in await self.audit.key_history()]
        return audit_pb2.PublicKeys(origin=self.origin, keys=keys)

    @rpc(Role.ADMIN)
    async def RotateKey(
        self,
        request: audit_pb2.RotateKeyRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> audit_pb2.RotateKeyResponse:
        rotation = await rotate_key(
            self.audit, principal, request.reason, request.key_id, self.clock, self.redactor
        )
        return audit_pb2.RotateKeyResponse(
            entry=convert.entry_to_proto(rotation.entry),
            old_key=convert.public_key_to_proto(self.origin, rotation.old_key),
            new_key=convert.public_key_to_proto(self.origin, rotation.new_key),
        )

    @rpc(Role.AUDITOR)
    async def GetInclusionProof(
        self,
        request: audit_pb2.GetInclusionProofRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> audit_pb2.InclusionProof:
        proof = await self.audit.inclusion_proof(request.seq, request.tree_size)
        return convert.inclusion_proof_to_proto(proof)

    @rpc(Role.AUDITOR)
    async def GetConsistencyProof(
        self,
        request: audit_pb2.GetConsistencyProofRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> audit_pb2.ConsistencyProof:
        proof = await self.audit.consistency_proof(request.old_size, request.new_size)
        return convert.consistency_proof_to_proto(proof)

    @stream_rpc(Role.AUDITOR)
    async def Query(
        self,
        request: audit_pb2.QueryRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> AsyncIterator[audit_pb2.AuditEntry]:
        entries = self.search.entries(convert.query_filter_from_proto(request), request.limit)
        async for entry in entries:
            yield convert.entry_to_proto(entry)

    @rpc(Role.AUDITOR)
    async def Report(
        self,
        request: audit_pb2.ReportRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> audit_pb2.ReportResponse:
        flt = convert.report_filter_from_proto(request)
        return convert.report_to_proto(await self.search.report(flt, request.max_entries))


class AlertsService(Servicer):
    """Alerts for operators (admins): list, follow, acknowledge."""

    service = alerts_pb2.DESCRIPTOR.services_by_name["Alerts"]

    def __init__(
        self,
        auth: Authenticator,
        alerting: Alerting,
        audit: AuditLog,
        redactor: Redactor | None = None,
    ) -> None:
        super().__init__(auth, redactor)
        self.alerting = alerting
        self.audit = audit

    @rpc(Role.ADMIN)
    async def List(
        self,
        request: alerts_pb2.ListAlertsRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> alerts_pb2.ListAlertsResponse:
        alerts = await self.alerting.list_alerts(
            active_only=request.unacknowledged_only,
            min_severity=convert.severity_from_proto(request.min_severity, "min_severity"),
            subject=request.subject,
            limit=request.limit,
        )
        return alerts_pb2.ListAlertsResponse(alerts=[convert.alert_to_proto(a) for a in alerts])

    @stream_rpc(Role.ADMIN)
    async def Watch(
        self,
        request: alerts_pb2.WatchAlertsRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> AsyncIterator[alerts_pb2.Alert]:
        min_severity = convert.severity_from_proto(request.min_severity, "min_severity")
        async with self.alerting.subscribed(min_severity) as alerts:
            # Headers once subscribed: a watcher that has them misses no later alert.
            yield HEADERS
            async for alert in alerts:
                yield convert.alert_to_proto(alert)

    @rpc(Role.ADMIN)
    async def Acknowledge(
        self,
        request: alerts_pb2.AcknowledgeRequest,
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> alerts_pb2.Alert:
        alert = await self.alerting.acknowledge(
            principal, request.alert_id, request.note, self.audit
        )
        return convert.alert_to_proto(alert)
