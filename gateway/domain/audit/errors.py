"""The audit library's errors: one small hierarchy, so that a caller catches
`AuditError` once and the server maps it in one place (gateway/api/status.py).

    AuditError
      FormatError     bytes that break the v1 format: canonical JSON, entries,
                      signed notes, checkpoints, export lines
      TrustError      keys: key files and key sets, the key history, rotations
      ProofFailed     a proof or checkpoint that does not check out
      UnreadableFile  an input file that cannot be read

Every one is a ValueError, as the format errors always were.
"""

from __future__ import annotations


class AuditError(ValueError):
    """Base of every error the audit library raises."""


class FormatError(AuditError):
    """Bytes that break the v1 audit format (docs/audit-format.md)."""


class TrustError(AuditError):
    """A key, key set, key history or rotation that cannot be trusted or read."""
