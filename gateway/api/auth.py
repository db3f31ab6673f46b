"""Authentication and role checks for every RPC.

The identity comes from the `authorization: Bearer <token>` metadata, or under mTLS
from the client certificate a principal names (`client_certificate`: the
certificate's common name or a subject alternative name; gRPC has verified it
against the client CA). Tokens are compared by their SHA-256 digest, as stored in
the config. A call with both must have them name the same principal. Which role may
call which RPC is declared beside each RPC (`gateway/api/services.py`) and listed in
docs/configuration.md.

A call that stays open (a stream, a long wait) is checked again whenever the
principals change (`replace`): one whose credentials no longer name the principal it
opened as, unchanged and of an allowed role, is ended (`OpenCall.revoked`), so that a
revoked or demoted principal keeps nothing it opened before.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from gateway.domain.principals import Principal, Role, token_digest
from gateway.errors import Forbidden, RevokedForbidden, RevokedUnauthenticated, Unauthenticated


class OpenCall:
    """A call in progress on the event loop, as `Authenticator.open_call` registers it.

    `revoked` is the refusal that ends it once the principals changed under it; while
    `waiting` (inside the method, not handing gRPC a message), its task is cancelled
    so that the call ends at once rather than at its next message.
    """

    def __init__(
        self, recheck: Callable[[], Principal], principal: Principal, roles: frozenset[Role]
    ) -> None:
        self.recheck = recheck
        self.principal = principal
        self.roles = roles
        self.task = asyncio.current_task()
        self.waiting = False
        self.revoked: RevokedUnauthenticated | RevokedForbidden | None = None
        self._ended: asyncio.Future[None] | None = None

    def ended(self) -> asyncio.Future[None]:
        """A future done once the call is revoked (for a wait that races it)."""
        if self._ended is None:
            self._ended = asyncio.get_running_loop().create_future()
            if self.revoked is not None:
                self._ended.set_result(None)
        return self._ended

    def check(self) -> None:
        """Sets `revoked` unless the call's credentials still name its principal,
        unchanged and of one of its roles; cancels the task when it is waiting."""
        if self.revoked is not None:
            return
        try:
            now = self.recheck()
            require_role(now, self.roles)
            if now != self.principal:
                raise Unauthenticated(f"principal '{now.name}' has changed; call again")
        except (Unauthenticated, Forbidden) as e:
            kind = RevokedForbidden if isinstance(e, Forbidden) else RevokedUnauthenticated
            self.revoked = kind(f"{e} (the config changed while this call was open)")
            if self._ended is not None:
                self._ended.set_result(None)
            elif self.waiting and self.task is not None:
                self.task.cancel()


class Authenticator:
    def __init__(self, principals: Iterable[Principal]) -> None:
        self._open: set[OpenCall] = set()
        self.replace(principals)

    def replace(self, principals: Iterable[Principal]) -> None:
        """Puts these principals in force (the config file changed): from the next
        call on, a token or certificate no longer listed is refused, and each open
        call is checked again (on the event loop's thread, where calls run). One
        assignment, so a caller on another thread (the metrics endpoint) sees old or
        new whole."""
        principals = tuple(principals)
        self._tables = (
            {p.token_sha256: p for p in principals if p.token_sha256},
            {p.client_certificate: p for p in principals if p.client_certificate},
        )
        for call in tuple(self._open):
            call.check()

    @property
    def open_calls(self) -> int:
        """How many calls are held open now (`open_call`)."""
        return len(self._open)

    @contextlib.contextmanager
    def open_call(
        self,
        metadata: Sequence[tuple[str, str | bytes]] | None,
        peer: frozenset[str],
        principal: Principal,
        roles: frozenset[Role],
    ) -> Iterator[OpenCall]:
        """Registers a call of `principal` (authenticated from `metadata` and `peer`)
        for as long as the block runs, to be checked again on each `replace`."""
        call = OpenCall(lambda: self.authenticate(metadata, peer), principal, roles)
        self._open.add(call)
        try:
            yield call
        finally:
            self._open.discard(call)

    @property
    def by_certificate(self) -> bool:
        """Some principal is known by its client certificate."""
        return bool(self._tables[1])

    def authenticate(
        self,
        metadata: Sequence[tuple[str, str | bytes]] | None,
        peer: frozenset[str] = frozenset(),
    ) -> Principal:
        """The caller: by its bearer token, or by the names of its verified client
        certificate (`peer`), or both when they agree."""
        headers = [
            value.decode() if isinstance(value, bytes) else value
            for key, value in metadata or ()
            if key == "authorization"
        ]
        if len(headers) > 1:  # which one counts would be a proxy's guess and ours
            raise Unauthenticated("more than one 'authorization' metadata entry; send one")
        header = headers[0] if headers else None
        by_certificate = self._certificate_principal(peer)
        if header is None:
            if by_certificate is not None:
                return by_certificate
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        by_token = self._token_principal(header)
        if by_certificate is not None and by_certificate is not by_token:
            raise Unauthenticated(
                "the bearer token and the client certificate name different principals"
            )
        return by_token

    def _certificate_principal(self, peer: frozenset[str]) -> Principal | None:
        by_certificate = self._tables[1]
        found = {by_certificate[name] for name in peer if name in by_certificate}
        if len(found) > 1:
            names = ", ".join(sorted(p.name for p in found))
            raise Unauthenticated(f"the client certificate names more than one principal ({names})")
        return found.pop() if found else None

    def _token_principal(self, header: str) -> Principal:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
        digest = token_digest(token.strip())
        principal = self._tables[0].get(digest)
        # The dict lookup is on a hash of the token; compare again in constant time.
        if principal is None or not hmac.compare_digest(principal.token_sha256, digest):
            raise Unauthenticated("unknown token")
        return principal


# The auth context keys gRPC fills in from a verified client certificate.
PEER_NAME_KEYS = ("x509_common_name", "x509_subject_alternative_name")


def peer_names(auth_context: Mapping[str, Iterable[bytes]]) -> frozenset[str]:
    """The names a verified client certificate gives (its common name and subject
    alternative names); empty without one."""
    return frozenset(
        value.decode("utf-8", "replace")
        for key in PEER_NAME_KEYS
        for value in auth_context.get(key, ())
    )


def require_role(principal: Principal, roles: frozenset[Role]) -> None:
    """Roles are separate: a principal may call only RPCs that list its own role. No
    role implies another; an admin is not an agent, an approver or an auditor."""
    if principal.role in roles:
        return
    allowed = ", ".join(sorted(r.value for r in roles))
    raise Forbidden(
        f"principal '{principal.name}' has role {principal.role.value}; this call needs {allowed}"
    )
