"""Who may call the gateway: principals, their one role each, and token digests.

A principal is a name (an agent's name is its agent_id), exactly one role, and the
SHA-256 of its bearer token; the config lists them and never holds a token itself.
Roles are separate: none implies another (see docs/configuration.md, "Roles").
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass


class Role(enum.Enum):
    AGENT = "agent"
    APPROVER = "approver"
    AUDITOR = "auditor"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    token_sha256: str  # "": no token (a principal known by its client certificate only)
    # Agents this principal is responsible for: it may not approve or reject their
    # actions (separation of duties).
    owns: frozenset[str] = frozenset()
    # The client certificate (its common name or a subject alternative name) that
    # identifies this principal under mTLS, as an alternative to its token; "": none.
    client_certificate: str = ""


def token_digest(token: str) -> str:
    """The SHA-256 (hex) of a bearer token, as the config stores it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
