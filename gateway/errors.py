"""The domain's error hierarchy.

Domain and storage code raise these; `gateway/api/status.py` is the one place that
maps them to gRPC status codes. Messages name the field and the rule broken, and
quote what the caller sent only through `preview`, so they stay short whatever the
input was.
"""

from __future__ import annotations

import re


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


class ConfigChanged:
    """Marks the refusal that ends a call already open because the config changed
    under it (an operator revoked or changed its principal): not an attempt by the
    caller, so logged but not a security event."""


class RevokedUnauthenticated(ConfigChanged, Unauthenticated):
    """An open call whose credentials no longer name its principal, unchanged."""


class RevokedForbidden(ConfigChanged, Forbidden):
    """An open call whose principal's new role may not make it."""


class RecordedRefusal(Forbidden):
    """A refusal its service has already written to the audit log and raised an alert
    for (a separation-of-duties violation): the wire records nothing more."""


class NotFound(GatewayError):
    """The named object does not exist, or is not visible to the caller (NOT_FOUND)."""


class Conflict(GatewayError):
    """The object is not in a state that allows the call (FAILED_PRECONDITION)."""


class AlreadyExists(GatewayError):
    """The identifier was already used for something else, e.g. an action_id for a
    request with other content (ALREADY_EXISTS)."""


class InFlight(GatewayError):
    """The same action_id is being decided by another call right now (ABORTED)."""


class Exhausted(GatewayError):
    """A bound of the gateway's resources was reached (RESOURCE_EXHAUSTED)."""


class StoreUnavailable(GatewayError):
    """Redis or the audit log could not be reached or refused a write (UNAVAILABLE).

    The message says what failed in plain words; `detail` (the client library's own
    words: addresses, exception types) is for the log only.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class OutcomeUnknown(StoreUnavailable):
    """A write was sent but its reply was lost: it may or may not have been applied
    (UNAVAILABLE). Whoever holds a claim on what it wrote must not release it."""


class ConfigError(GatewayError):
    """A configuration or policy file is invalid; the message names file, line and key."""


class UndecodableRequest(GatewayError):
    """The request bytes are not a valid message of the RPC's type (INVALID_ARGUMENT).

    The message says what is wrong in plain words, never the parser's internals;
    `detail` (the parser's own words, the size) is for the log only.
    """

    def __init__(self, why: str, detail: str = "") -> None:
        super().__init__(f"request could not be decoded: {why}")
        self.why = why
        self.detail = detail


class NotImplementedYet(GatewayError):
    """The RPC is part of the contract but not built yet (UNIMPLEMENTED); raised only
    after the caller is authenticated and authorized."""

    def __init__(self, rpc: str) -> None:
        super().__init__(f"{rpc} is not implemented yet")


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def preview(value: str, limit: int = 64) -> str:
    """`value` made safe to put into an error or log message: at most `limit`
    characters of it, control characters escaped, and, when cut, the original length.

    preview("x" * 100_000) == "xxx...x... (100000 chars)" with 64 x's.
    """
    head = value[:limit]
    safe = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", head)
    if len(value) <= limit:
        return safe
    return f"{safe}... ({len(value)} chars)"
