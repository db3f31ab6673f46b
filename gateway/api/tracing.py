"""The trace a call belongs to: W3C Trace Context's `traceparent` metadata, or a new
trace id when the caller sent none (or one that does not parse).

    traceparent: 00-<trace-id: 32 hex>-<parent-id: 16 hex>-<flags: 2 hex>

Only the trace id is kept: it is what the Decision, the log records and the audit
entry of a call share, so one id finds all three.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gateway.domain.log_records import new_trace_id

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32


def trace_id_of(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    for key, value in metadata or ():
        if key != "traceparent":
            continue
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        m = _TRACEPARENT.fullmatch(text.strip())
        # Version ff is invalid; a future version may add fields after the flags.
        if m and m[1] != "ff" and (m[1] != "00" or m[5] is None) and m[2] != _ZERO_TRACE:
            return m[2]
        break
    return new_trace_id()
