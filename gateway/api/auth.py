"""Authentication and role checks for every RPC.

The identity comes from the `authorization: Bearer <token>` metadata, or under mTLS
from the client certificate a principal names (`client_certificate`: the
certificate's common name or a subject alternative name; gRPC has verified it
against the client CA). Tokens are compared by their SHA-256 digest, as stored in
the config. A call with both must have them name the same principal. Which role may
call which RPC is declared beside each RPC (`gateway/api/services.py`) and listed in
docs/configuration.md.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence

from gateway.domain.principals import Principal, Role, token_digest
from gateway.errors import Forbidden, Unauthenticated


class Authenticator:
    def __init__(self, principals: Iterable[Principal]) -> None:
        self.replace(principals)

    def replace(self, principals: Iterable[Principal]) -> None:
        """Puts these principals in force (the config file changed): from the next
        call on, a token or certificate no longer listed is refused. One assignment,
        so a caller on another thread (the metrics endpoint) sees old or new whole."""
        principals = tuple(principals)
        self._tables = (
            {p.token_sha256: p for p in principals if p.token_sha256},
            {p.client_certificate: p for p in principals if p.client_certificate},
        )

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
