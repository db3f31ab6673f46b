"""Secrets planted by the redaction tests: the key names probing found leaking (issue 7)."""

from __future__ import annotations

LEAKED_KEYS = (
    "passwd",
    "pwd",
    "authorization",
    "auth",
    "bearer",
    "cookie",
    "set-cookie",
    "jwt",
    "passphrase",
    "otp",
    "pin",
    "private_key",
    "apiKey",
    "X-Auth-Token",
)
