"""Bearer-token authentication and role checks for every RPC.

The identity comes from the `authorization: Bearer <token>` metadata only; tokens
are compared by their SHA-256 digest, as stored in the config. Which role may call
which RPC is declared beside each RPC (`gateway/api/services.py`) and listed in
docs/configuration.md.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence

from gateway.domain.principals import Principal, Role, token_digest
from gateway.errors import Forbidden, Unauthenticated


class Authenticator:
    def __init__(self, principals: Iterable[Principal]) -> None:
        self._by_digest = {p.token_sha256: p for p in principals}

    def authenticate(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Principal:
        header = None
        for key, value in metadata or ():
            if key == "authorization":
                header = value.decode() if isinstance(value, bytes) else value
                break
        if header is None:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
        digest = token_digest(token.strip())
        principal = self._by_digest.get(digest)
        # The dict lookup is on a hash of the token; compare again in constant time.
        if principal is None or not hmac.compare_digest(principal.token_sha256, digest):
            raise Unauthenticated("unknown token")
        return principal


def require_role(principal: Principal, roles: frozenset[Role]) -> None:
    """Roles are separate: a principal may call only RPCs that list its own role. No
    role implies another; an admin is not an agent, an approver or an auditor."""
    if principal.role in roles:
        return
    allowed = ", ".join(sorted(r.value for r in roles))
    raise Forbidden(
        f"principal '{principal.name}' has role {principal.role.value}; this call needs {allowed}"
    )
