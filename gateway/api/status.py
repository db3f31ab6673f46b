"""The one place that maps domain errors to gRPC status codes.

`rpc(roles)` wraps a servicer method: it authenticates the caller, checks the role,
calls the method with the principal, and turns `GatewayError`s into statuses. An
unexpected exception becomes INTERNAL (logged), never an answer.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import grpc

from gateway.api.auth import Authenticator, require_role
from gateway.config import Principal, Role
from gateway.errors import (
    Conflict,
    Forbidden,
    GatewayError,
    InFlight,
    InvalidRequest,
    NotFound,
    StoreUnavailable,
    Unauthenticated,
)

log = logging.getLogger("agentgw.api")

STATUS_FOR: dict[type[GatewayError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    InFlight: grpc.StatusCode.ABORTED,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_for(error: GatewayError) -> grpc.StatusCode:
    for kind, code in STATUS_FOR.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


class Servicer:
    """Base for servicers: holds the authenticator used by `rpc`."""

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth


S = TypeVar("S", bound=Servicer)
Req = TypeVar("Req")
Res = TypeVar("Res")
P = ParamSpec("P")


def rpc(
    *roles: Role,
) -> Callable[
    [Callable[[S, Req, grpc.aio.ServicerContext, Principal], Awaitable[Res]]],
    Callable[[S, Req, grpc.aio.ServicerContext], Awaitable[Res]],
]:
    allowed = frozenset(roles)

    def wrap(
        method: Callable[[S, Req, grpc.aio.ServicerContext, Principal], Awaitable[Res]],
    ) -> Callable[[S, Req, grpc.aio.ServicerContext], Awaitable[Res]]:
        @functools.wraps(method)
        async def handler(self: S, request: Req, context: grpc.aio.ServicerContext) -> Res:
            try:
                principal = self.auth.authenticate(context.invocation_metadata())
                require_role(principal, allowed)
                return await method(self, request, context, principal)
            except GatewayError as e:
                code = status_for(e)
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    log.warning(
                        "call refused",
                        extra={"category": "security", "rpc": method.__name__, "error": str(e)},
                    )
                await context.abort(code, str(e))
                raise  # abort raises; this satisfies the type checker

        return handler

    return wrap


def stream_rpc(
    *roles: Role,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Like `rpc`, for server-streaming methods written as async generators."""
    allowed = frozenset(roles)

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        async def handler(self: Servicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                principal = self.auth.authenticate(context.invocation_metadata())
                require_role(principal, allowed)
                async for item in method(self, request, context, principal):
                    yield item
            except GatewayError as e:
                await context.abort(status_for(e), str(e))

        return handler

    return wrap


class RequireToken(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates calls to services we do not implement ourselves (reflection).

    Our own servicers authenticate in `rpc`; health checking stays open so load
    balancers and orchestrators can probe it (it reveals only SERVING/NOT_SERVING).
    """

    OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
    OWN_PREFIX = "/agentgw.v1."

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if not method.startswith((*self.OPEN_PREFIXES, self.OWN_PREFIX)):
            try:
                self.auth.authenticate(handler_call_details.invocation_metadata)
            except Unauthenticated as e:
                return _refuse(str(e))
        return await continuation(handler_call_details)


def _refuse(message: str) -> grpc.RpcMethodHandler:
    async def refuse(request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.stream_stream_rpc_method_handler(refuse)
