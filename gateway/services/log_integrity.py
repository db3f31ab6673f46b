"""Verifying the stored audit log in place, and raising tampering as a security event.

The offline verifier (`gateway.domain.audit.verify`) reads the log as Redis holds it,
from seq 1 to the head, trusting only the gateway's first key (every later key must
be introduced by the chain), and checks it against a checkpoint the gateway signs of
the same head. Anyone who edits, deletes or reorders entries in Redis directly, or
rewrites the head, is found here, named by the first bad entry. A failure is
recorded (`security_tampering_detected`, appended after the damaged part: the chain
itself is left as it is for investigators) and raised as a critical alert.

Verification is CPU work (about 0.1 ms per entry): it runs in a thread, reading the
log in chunks from the event loop, and one runs at a time (a second caller shares
the one running). `audit.verify_interval_seconds` also runs it periodically.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

from gateway.domain.alerts.events import security_event
from gateway.domain.alerts.rules import AlertEvent
from gateway.domain.audit.entry import EntryDraft
from gateway.domain.audit.events import ActorType, EventType
from gateway.domain.audit.keys import KeySet, TrustAnchor
from gateway.domain.audit.verify import VerifyReport, verify_export
from gateway.store.audit_log import AuditLog

log = logging.getLogger("agentgw.integrity")

CHUNK = 1000  # entries read from Redis at a time


class LogIntegrity:
    def __init__(
        self,
        audit: AuditLog,
        observe: Callable[[AlertEvent], None],
        clock: Callable[[], float],
    ) -> None:
        self.audit = audit
        self.observe = observe
        self.clock = clock
        self._running: asyncio.Task[tuple[VerifyReport, int, int]] | None = None

    async def verify(self, actor: str = "system") -> tuple[VerifyReport, int, int]:
        """(the report, the checkpoint's size, the seq of the tampering entry or 0)."""
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().create_task(self._verify(actor))
        return await asyncio.shield(self._running)

    async def _verify(self, actor: str) -> tuple[VerifyReport, int, int]:
        signed = await self.audit.checkpoint()
        size = signed.checkpoint.size
        keys = KeySet(self.audit.origin, await self.audit.key_history())
        first = self.audit.signing_keys.first
        anchor = TrustAnchor(first.key_id, first.public_key_raw, self.audit.origin)
        loop = asyncio.get_running_loop()

        def lines() -> Iterator[str]:
            for start in range(1, size + 1, CHUNK):
                end = min(start + CHUNK - 1, size)
                read = asyncio.run_coroutine_threadsafe(self.audit.read_lines(start, end), loop)
                yield from read.result(60)

        report = await asyncio.to_thread(
            verify_export, lines(), keys, signed.checkpoint, anchor=anchor
        )
        if report.ok:
            log.info(
                "audit log verified in place",
                extra={"category": "security", "entries": report.count, "size": size},
            )
            return report, size, 0
        return report, size, await self._record(report, actor, size)

    async def _record(self, report: VerifyReport, actor: str, size: int) -> int:
        failure = report.failure
        assert failure is not None
        details = {
            "kind": failure.kind.value,
            "seq": failure.seq or 0,
            "message": failure.message,
            "entries_verified": report.count,
            "tree_size": size,
        }
        draft = EntryDraft.of_no_action(
            self.clock(),
            EventType.TAMPERING_DETECTED,
            actor,
            ActorType.SYSTEM if actor == "system" else ActorType.USER,
            details=details,
            outcome="failed",
        )
        (entry,) = await self.audit.commit([draft])
        log.critical(
            "the stored audit log does not verify",
            extra={
                "category": "security",
                "event_type": "tampering_detected",
                "audit_seq": entry.seq,
                "failure": details,
            },
        )
        self.observe(
            security_event(
                "tampering_detected",
                f"the stored audit log fails verification at seq {failure.seq or '?'}: "
                f"{failure.kind.value}",
                self.clock(),
                data={**details, "audit_seq": entry.seq},
            )
        )
        return entry.seq
