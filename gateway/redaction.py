"""Redaction of secrets in action parameters and details.

Values under keys whose name contains password, token, key, secret or credential
(case-insensitive, at any depth) become "[REDACTED]". Applied before anything is
hashed, logged, stored or returned; never mutates its input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

REDACTED = "[REDACTED]"
SENSITIVE_KEY_PARTS = ("password", "token", "key", "secret", "credential")


def is_sensitive_key(name: str) -> bool:
    lowered = name.lower()
    return any(part in lowered for part in SENSITIVE_KEY_PARTS)


def redact(value: Any) -> Any:
    """Returns a copy of a JSON-like value with sensitive keys' values replaced."""
    if isinstance(value, Mapping):
        return {k: (REDACTED if is_sensitive_key(str(k)) else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value
