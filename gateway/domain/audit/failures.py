"""The kinds of failure verifying an export names: the vocabulary of docs/audit-format.md §8.

Owns the names only; which rule yields which kind, and in what order, is the
verifier's (`verify.py`, and `inspection.py` for a line's own problems).
"""

from __future__ import annotations

import enum


class FailureKind(enum.StrEnum):
    """Why verification stopped; the rules are in docs/audit-format.md."""

    MALFORMED = "malformed"
    EDITED = "edited"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    UNTRUSTED_KEY = "untrusted_key"
    KEY_OUT_OF_RANGE = "key_out_of_range"
    BAD_ROTATION = "bad_rotation"
    KEY_HISTORY_MISMATCH = "key_history_mismatch"
    BROKEN_LINK = "broken_link"
    DELETED = "deleted"
    DUPLICATE_SEQ = "duplicate_seq"
    REORDERED = "reordered"
    INSERTED = "inserted"
    TRUNCATED = "truncated"
    CHECKPOINT_SIGNATURE = "checkpoint_signature"
    ROOT_MISMATCH = "root_mismatch"
    HEAD_MISMATCH = "head_mismatch"
