"""Rotating the audit signing key: the admin's call, recorded in the log it changes.

A rotation is one audit entry, `key_rotated`, signed by the old key and naming the
new one; the audit writer switches the log's head to the new key in the same atomic
append, so the entry with seq k is the old key's last and k + 1 the new key's first.
That entry is what makes verifiers trust the new key; the key history the writer
also keeps in Redis (for `Audit.GetPublicKeys`) is a convenience. It never decides
which key is current (the head does) nor stores private keys anywhere but the key
directory (`SigningKeys`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from gateway.domain.audit.chain import rotation_draft
from gateway.domain.audit.entry import AuditEntry
from gateway.domain.audit.keys import (
    KeyFileError,
    TrustedKey,
)
from gateway.domain.holds import check_reason
from gateway.domain.principals import Principal
from gateway.domain.redaction import Redactor
from gateway.errors import Conflict, InvalidRequest, StoreUnavailable
from gateway.store.audit_log import AuditLog
from gateway.store.intents import RotateKey

log = logging.getLogger("agentgw.keys")


@dataclass(frozen=True)
class Rotation:
    entry: AuditEntry  # the key_rotated entry, signed by the old key
    old_key: TrustedKey
    new_key: TrustedKey


async def rotate_key(
    audit: AuditLog,
    principal: Principal,
    reason: str,
    key_id: str,
    clock: Callable[[], float],
    redactor: Redactor | None = None,
) -> Rotation:
    """Moves the log to a new signing key: the provisioned `key_id`, or a new one.
    The reason is free text signed into the log: redacted like any other."""
    reason = (redactor or Redactor()).text(check_reason(reason))
    history = await audit.key_history()
    if key_id:
        if any(key.key_id == key_id for key in history):
            raise Conflict(f"key {key_id} has already signed this log; rotate to a new key")
        try:
            new = audit.signing_keys.get(key_id)
        except KeyFileError as e:
            raise InvalidRequest("key_id", str(e)) from e
        if new is None:
            raise InvalidRequest(
                "key_id", f"no key file {key_id}.pem in {audit.signing_keys.directory}"
            )
    else:
        try:
            new = audit.signing_keys.create()
        except OSError as e:
            raise StoreUnavailable(f"cannot write a new key to the key directory: {e}") from e
    draft = rotation_draft(principal.name, new, audit.origin, reason, clock())
    (entry,) = await audit.commit([draft], RotateKey(new))
    # Read again: a concurrent rotation may have moved the head before this one.
    keys = {key.key_id: key for key in await audit.key_history()}
    log.warning(
        "audit signing key rotated",
        extra={
            "category": "security",
            "actor": principal.name,
            "old_signer": entry.key_id,
            "new_signer": new.key_id,
            "audit_seq": entry.seq,
        },
    )
    return Rotation(entry=entry, old_key=keys[entry.key_id], new_key=keys[new.key_id])
