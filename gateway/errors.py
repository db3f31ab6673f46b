"""The domain's error hierarchy.

Domain and storage code raise these; `gateway/api/status.py` is the one place that
maps them to gRPC status codes. Messages name the field and the rule broken.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class; never raised directly."""


class InvalidRequest(GatewayError):
    """The request breaks a validation rule (INVALID_ARGUMENT)."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field
        self.why = why


class Unauthenticated(GatewayError):
    """No credential, or one the gateway does not know (UNAUTHENTICATED)."""


class Forbidden(GatewayError):
    """The caller is known but may not do this (PERMISSION_DENIED)."""


class NotFound(GatewayError):
    """The named object does not exist, or is not visible to the caller (NOT_FOUND)."""


class Conflict(GatewayError):
    """The object is not in a state that allows the call (FAILED_PRECONDITION)."""


class InFlight(GatewayError):
    """The same action_id is being decided by another call right now (ABORTED)."""


class StoreUnavailable(GatewayError):
    """Redis or the audit log could not be reached or refused a write (UNAVAILABLE)."""


class ConfigError(GatewayError):
    """A configuration or policy file is invalid; the message names file, line and key."""
