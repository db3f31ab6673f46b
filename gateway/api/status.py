"""The one place that maps domain errors to gRPC status codes.

`rpc(roles)` / `stream_rpc(roles)` wrap a servicer method: they authenticate the
caller, check the role, decode the request (`gateway/api/decoding.py`), call the
method with the principal, and turn `GatewayError`s into statuses. Every status
message is bounded (`MESSAGE_LIMIT`). An audit-format error (`AuditError`: stored
audit data that does not read) answers DATA_LOSS, any other unexpected exception
INTERNAL with only "internal error (ref <id>)"; the details go to the log under the
same id, never into the reply. Every failed call is logged with such a ref, which the client
also gets in the `agentgw-ref` trailing metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
import traceback
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, ParamSpec, TypeVar, cast

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2

from gateway.api.auth import Authenticator, OpenCall, peer_names, require_role
from gateway.api.decoding import Received, open_request
from gateway.domain.audit.errors import AuditError
from gateway.domain.audit.events import ActorType
from gateway.domain.principals import Principal, Role
from gateway.domain.redaction import Redactor
from gateway.errors import (
    AlreadyExists,
    ConfigChanged,
    Conflict,
    Exhausted,
    Forbidden,
    GatewayError,
    InFlight,
    InvalidRequest,
    NotFound,
    NotImplementedYet,
    RecordedRefusal,
    StoreUnavailable,
    Unauthenticated,
    UndecodableRequest,
    preview,
)

if TYPE_CHECKING:
    from gateway.services.security_events import SecurityEvents

log = logging.getLogger("agentgw.api")

# Longest status message (and logged error text) the gateway sends, in characters.
MESSAGE_LIMIT = 512
REF_TRAILER = "agentgw-ref"
_TRACEBACK_PART_LIMIT = 2000
_TRACEBACK_FRAMES = 40
_SECURITY_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)

STATUS_FOR: dict[type[GatewayError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    UndecodableRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotImplementedYet: grpc.StatusCode.UNIMPLEMENTED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    InFlight: grpc.StatusCode.ABORTED,
    Exhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_for(error: GatewayError) -> grpc.StatusCode:
    for kind, code in STATUS_FOR.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def new_ref() -> str:
    """A correlation id for one failed call: in the reply and in the log record."""
    return secrets.token_hex(6)


class Servicer:
    """Base for servicers: the service they implement, the authenticator `rpc` uses,
    the redaction applied to every status message (a refusal may quote input), and
    where security refusals are recorded (set by the app)."""

    service: ClassVar[ServiceDescriptor]
    security: SecurityEvents | None = None
    # Called with the method's name, the status code and the seconds each call took
    # (the app's metrics); None: not counted.
    on_rpc: Callable[[str, grpc.StatusCode, float], None] | None = None

    def __init__(self, auth: Authenticator, redactor: Redactor | None = None) -> None:
        self.auth = auth
        self.redactor = redactor or Redactor()

    def _authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        return self.auth.authenticate(context.invocation_metadata(), self._peer(context))

    def _peer(self, context: grpc.aio.ServicerContext) -> frozenset[str]:
        return peer_names(context.auth_context()) if self.auth.by_certificate else frozenset()

    def _held_open(
        self, context: grpc.aio.ServicerContext, principal: Principal, roles: frozenset[Role]
    ) -> contextlib.AbstractContextManager[OpenCall]:
        """The call registered as open (`Authenticator.open_call`) for a block."""
        metadata = context.invocation_metadata()
        return self.auth.open_call(metadata, self._peer(context), principal, roles)

    async def _refuse(
        self,
        context: grpc.aio.ServicerContext,
        name: str,
        principal: Principal | None,
        error: Exception,
    ) -> NoReturn:
        path = f"/{self.service.full_name}/{name}"
        await refuse(context, path, principal, error, self.redactor, self.security)

    def _counted(self, name: str, code: grpc.StatusCode, started: float) -> None:
        if self.on_rpc is not None:
            self.on_rpc(f"{self.service.name}.{name}", code, time.perf_counter() - started)

    def _open(self, request: Received, name: str) -> Any:
        return open_request(request, self.service.methods_by_name[name].input_type)


S = TypeVar("S", bound=Servicer)
Req = TypeVar("Req")
Res = TypeVar("Res")
T = TypeVar("T")
P = ParamSpec("P")

_ROLES = "agentgw_roles"


def roles_of(behaviour: Any) -> frozenset[Role] | None:
    """The roles an RPC method was declared for with `rpc`/`stream_rpc`, else None."""
    roles = getattr(behaviour, _ROLES, None)
    return roles if isinstance(roles, frozenset) else None


def rpc(
    *roles: Role,
    waits: bool = False,
) -> Callable[
    [Callable[[S, Req, grpc.aio.ServicerContext, Principal], Awaitable[Res]]],
    Callable[[S, Received, grpc.aio.ServicerContext], Awaitable[Res]],
]:
    """Wraps a unary method (see the module's text). With `waits` (a method that may
    wait long, as Await), the call is held open: it ends with UNAUTHENTICATED or
    PERMISSION_DENIED as soon as the principals change so that it no longer may."""
    allowed = frozenset(roles)

    def wrap(
        method: Callable[[S, Req, grpc.aio.ServicerContext, Principal], Awaitable[Res]],
    ) -> Callable[[S, Received, grpc.aio.ServicerContext], Awaitable[Res]]:
        name = method.__name__

        @functools.wraps(method)
        async def handler(self: S, request: Received, context: grpc.aio.ServicerContext) -> Res:
            principal: Principal | None = None
            started = time.perf_counter()
            try:
                principal = self._authenticate(context)
                require_role(principal, allowed)  # a refusal names the principal
                message = self._open(request, name)
                if not waits:
                    answer = await method(self, cast(Req, message), context, principal)
                else:
                    with self._held_open(context, principal, allowed) as call:
                        answer = await _raced(
                            call, method(self, cast(Req, message), context, principal)
                        )
                self._counted(name, grpc.StatusCode.OK, started)
                return answer
            except grpc.aio.AbortError:
                raise
            except Exception as e:  # every failure becomes a status
                failure = e
            self._counted(name, code_for(failure), started)
            await self._refuse(context, name, principal, failure)

        setattr(handler, _ROLES, allowed)
        return handler

    return wrap


def stream_rpc(
    *roles: Role,
) -> Callable[[Callable[..., AsyncIterator[Any]]], Callable[..., AsyncIterator[Any]]]:
    """Like `rpc`, for server-streaming methods written as async generators; every
    stream is held open (`rpc`'s `waits`): a revoked or demoted principal's stream
    ends at once, and never gets another message."""
    allowed = frozenset(roles)

    def wrap(method: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        name = method.__name__

        @functools.wraps(method)
        async def handler(
            self: Servicer, request: Received, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            principal: Principal | None = None
            started = time.perf_counter()
            try:
                principal = self._authenticate(context)
                require_role(principal, allowed)  # a refusal names the principal
                message = self._open(request, name)
                with self._held_open(context, principal, allowed) as call:
                    items = method(self, message, context, principal)
                    async for item in _held_stream(call, items, context):
                        yield item
                self._counted(name, grpc.StatusCode.OK, started)
                return
            except grpc.aio.AbortError:
                raise
            except Exception as e:  # every failure becomes a status
                failure = e
            self._counted(name, code_for(failure), started)
            await self._refuse(context, name, principal, failure)

        setattr(handler, _ROLES, allowed)
        return handler

    return wrap


# What a stream method yields for its initial metadata to be sent at that point (as
# Alerts.Watch does once subscribed): stream_rpc sends it between steps, where a
# revocation never cancels a gRPC operation in flight.
HEADERS: Any = object()


async def _held_stream(
    call: OpenCall, items: AsyncIterator[Any], context: grpc.aio.ServicerContext
) -> AsyncIterator[Any]:
    """The messages of a stream held open as `call`: each step revocable, `HEADERS`
    sent between steps, the method's generator closed however the stream ends."""
    try:
        while True:
            try:
                item = await _revocable(call, anext(items))
            except StopAsyncIteration:
                return
            if item is HEADERS:  # sent here: never while it may be cancelled
                await context.send_initial_metadata(())
                continue
            yield item
    finally:
        if isinstance(items, AsyncGenerator):  # its cleanup, now
            await items.aclose()


async def _revocable(call: OpenCall, step: Awaitable[T]) -> T:
    """Awaits a stream's next step unless `call` is revoked before, while or by the
    time it runs: then raises its refusal, so no message is sent after a revocation.
    A revocation cancels this task while it waits here; only that cancel is taken as
    the refusal, any other (the client went away) stays one."""
    if call.revoked is not None:
        raise call.revoked
    call.waiting = True
    try:
        result = await step
    except asyncio.CancelledError:
        revoked = call.revoked
        task = asyncio.current_task()
        if revoked is None or task is None or task.cancelling() != 1:
            raise
        task.uncancel()
        raise revoked from None
    finally:
        call.waiting = False
    if call.revoked is not None:  # a cancel the step swallowed, or one just missed
        raise call.revoked
    return result


async def _raced(call: OpenCall, step: Awaitable[T]) -> T:
    """A long unary wait (`rpc`'s `waits`) run as a task of its own and raced against
    the revocation, so that however the wait handles a cancel, the call ends at once
    with the refusal and never answers after it."""
    work = asyncio.ensure_future(step)
    ended = call.ended()
    try:
        await asyncio.wait((work, ended), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()
        raise
    if call.revoked is not None:
        work.cancel()
        with contextlib.suppress(BaseException):
            await work
        raise call.revoked
    return work.result()


async def refuse(
    context: grpc.aio.ServicerContext,
    rpc_path: str,
    principal: Principal | None,
    error: Exception,
    redactor: Redactor | None = None,
    security: SecurityEvents | None = None,
) -> NoReturn:
    """Ends the call with the status for `error`, and logs it under a new ref.

    Refusals that matter to security (no or unknown token, wrong role, undecodable
    request) are warnings in category "security"; an unexpected exception is an error
    with its traceback; any other refusal (bad argument, not found, Redis down...) is
    logged in category "error".
    """
    ref = new_ref()
    code = code_for(error)
    extra: dict[str, Any] = {
        "rpc": rpc_path,
        "principal": principal.name if principal is not None else "",
        "ref": ref,
    }
    if isinstance(error, GatewayError):
        # Redacted before it is cut: a refusal may quote what the caller sent.
        message = preview((redactor or Redactor()).text(str(error)), MESSAGE_LIMIT)
        extra.update(code=code.name, error=message)
        if isinstance(error, UndecodableRequest | StoreUnavailable) and error.detail:
            extra["detail"] = preview(error.detail, MESSAGE_LIMIT)
        if isinstance(error, ConfigChanged):  # an operator's revocation, not an attempt
            log.info("open call ended", extra={"category": "security", **extra})
        elif code in _SECURITY_CODES or isinstance(error, UndecodableRequest):
            log.warning("call refused", extra={"category": "security", **extra})
            if security is not None and code in _SECURITY_CODES:
                record_refusal(security, context, rpc_path, principal, error, message)
        elif code is grpc.StatusCode.UNAVAILABLE:
            log.warning("call failed", extra={"category": "error", **extra})
        else:
            log.info("call refused", extra={"category": "error", **extra})
    elif isinstance(error, AuditError):
        # The audit library refused bytes the gateway itself stored: the log in Redis
        # is damaged. Never an answer built from it; the details are for operators.
        message = f"the stored audit log is malformed (ref {ref})"
        log.error(
            "stored audit data is malformed",
            extra={
                "category": "error",
                **extra,
                "code": code.name,
                "error": preview(f"{type(error).__name__}: {error}", MESSAGE_LIMIT),
            },
        )
    else:
        message = f"internal error (ref {ref})"
        log.error(
            "unexpected error",
            extra={
                "category": "error",
                **extra,
                "code": code.name,
                "error": preview(f"{type(error).__name__}: {error}", MESSAGE_LIMIT),
                "traceback": bounded_traceback(error),
            },
        )
    await context.abort(code, message, trailing_metadata=((REF_TRAILER, ref),))
    raise AssertionError("abort raises")


def code_for(error: Exception) -> grpc.StatusCode:
    """The status a call ending in `error` gets (as `refuse` answers it)."""
    if isinstance(error, GatewayError):
        return status_for(error)
    if isinstance(error, AuditError):
        return grpc.StatusCode.DATA_LOSS
    return grpc.StatusCode.INTERNAL


def record_refusal(
    security: SecurityEvents,
    context: grpc.aio.ServicerContext,
    rpc_path: str,
    principal: Principal | None,
    error: GatewayError,
    message: str,
) -> None:
    """A refused token, role or identity is a security event (audited and alerted,
    coalesced per source); a refusal its service recorded itself is not counted twice."""
    if isinstance(error, RecordedRefusal):
        return
    kind = "authentication_failed" if isinstance(error, Unauthenticated) else "permission_denied"
    if principal is None:
        actor_type = ActorType.SYSTEM
    else:
        actor_type = ActorType.AGENT if principal.role is Role.AGENT else ActorType.USER
    security.refused(
        kind, rpc_path, principal.name if principal else "", actor_type, context.peer(), message
    )


def bounded_traceback(error: BaseException) -> str:
    """The traceback of `error` with its last frames, each part cut to a bounded size
    (exception messages may quote what the caller sent)."""
    parts = traceback.format_exception(
        type(error), error, error.__traceback__, limit=-_TRACEBACK_FRAMES
    )
    return "".join(
        part
        if len(part) <= _TRACEBACK_PART_LIMIT
        else f"{part[:_TRACEBACK_PART_LIMIT]}... ({len(part)} chars)\n"
        for part in parts
    )


class RequireToken(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates calls to everything but our own RPCs and health checking.

    Our own RPCs authenticate and authorize in `rpc`; this covers server reflection
    and any method the server does not know (so probing for RPCs needs a token too).
    Health checking stays open so load balancers and orchestrators can probe it (it
    reveals only SERVING/NOT_SERVING).
    """

    # Exactly the health RPCs: a prefix would also open paths such as
    # "/grpc.health.v1.Health/../x" to callers without a token.
    OPEN_METHODS = frozenset(
        f"/{health_pb2.DESCRIPTOR.services_by_name['Health'].full_name}/{m.name}"
        for m in health_pb2.DESCRIPTOR.services_by_name["Health"].methods
    )

    def __init__(
        self,
        auth: Authenticator,
        own_methods: frozenset[str],
        security: SecurityEvents | None = None,
    ) -> None:
        self.auth = auth
        self.own_methods = own_methods
        self.security = security

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if method in self.own_methods or method in self.OPEN_METHODS:
            return await continuation(handler_call_details)
        metadata = handler_call_details.invocation_metadata
        try:
            principal = self.auth.authenticate(metadata)
        except Unauthenticated as e:
            return _refuse_unauthenticated(method, e, self.security)
        handler = await continuation(handler_call_details)
        if handler is None or handler.stream_stream is None:
            return handler
        return self._held(method, handler, metadata, principal)

    def _held(
        self,
        method: str,
        handler: grpc.RpcMethodHandler,
        metadata: Any,
        principal: Principal,
    ) -> grpc.RpcMethodHandler:
        """A bidirectional stream (server reflection) held open as its principal's
        call: a revocation ends it as it ends the gateway's own streams."""
        behaviour = handler.stream_stream
        auth, security = self.auth, self.security

        async def held(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                with auth.open_call(metadata, frozenset(), principal, frozenset(Role)) as call:
                    items = behaviour(request_iterator, context)
                    async for item in _held_stream(call, items, context):
                        yield item
            except (Unauthenticated, Forbidden) as e:
                await refuse(context, method, principal, e, security=security)

        return grpc.stream_stream_rpc_method_handler(
            held,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _refuse_unauthenticated(
    method: str, error: Unauthenticated, security: SecurityEvents | None
) -> grpc.RpcMethodHandler:
    async def refuse_call(request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await refuse(context, method, None, error, security=security)

    return grpc.stream_stream_rpc_method_handler(refuse_call)
