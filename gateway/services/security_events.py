"""Security refusals at the wire, recorded in the audit log and raised as alerts.

Every refused call with no or an unknown token (`authentication_failed`) and every
call refused for the caller's role or identity (`permission_denied`) is a security
event. Recording each one as a signed audit entry would let anyone without a token
grow the log at will, so they are coalesced per kind and source (the caller's
address for an unknown caller, the principal otherwise): the first refusal from a
source is recorded (and alerted) at once, the ones after it within `window` seconds
in one entry with their count at the end of the window. At most `MAX_SOURCES`
sources are tallied per window; refusals from more sources are counted under
"other". So the audit log grows by at most about 2 * `MAX_SOURCES` entries per
window, whatever the flood.

`refused` does no I/O (the wire calls it before it answers); `run` writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.domain.alerts.events import security_event
from gateway.domain.alerts.model import GATEWAY_SUBJECT
from gateway.domain.alerts.rules import AlertEvent
from gateway.domain.audit.entry import EntryDraft
from gateway.domain.audit.events import ActorType, EventType
from gateway.errors import StoreUnavailable
from gateway.store.audit_log import AuditLog

log = logging.getLogger("agentgw.security")

WINDOW_SECONDS = 10.0
MAX_SOURCES = 100
MAX_RPCS = 5  # distinct RPC paths named per entry
OTHER = "other"

KINDS = {
    "authentication_failed": EventType.AUTHENTICATION_FAILED,
    "permission_denied": EventType.PERMISSION_DENIED,
}


@dataclass
class _Tally:
    kind: str
    source: str
    principal: str  # "" for an unknown caller
    actor_type: ActorType
    opened_at: float
    count: int = 0
    recorded: int = 0  # of `count`, how many an entry already stands for
    rpcs: list[str] = field(default_factory=list)
    message: str = ""


def peer_address(peer: str) -> str:
    """The caller's address without its port: 'ipv4:10.0.0.1:5555' -> 'ipv4:10.0.0.1'."""
    if peer.startswith("ipv6:[") and "]" in peer:
        return peer[: peer.index("]") + 1]
    scheme, _, rest = peer.partition(":")
    return f"{scheme}:{rest.rpartition(':')[0]}" if ":" in rest else peer


class SecurityEvents:
    def __init__(
        self,
        audit: AuditLog,
        observe: Callable[[AlertEvent], None],
        clock: Callable[[], float],
        window: float = WINDOW_SECONDS,
    ) -> None:
        self.audit = audit
        self.observe = observe
        self.clock = clock
        self.window = window
        self._tallies: dict[tuple[str, str], _Tally] = {}
        self._due = asyncio.Event()

    def refused(
        self,
        kind: str,
        rpc: str,
        principal: str,
        actor_type: ActorType,
        peer: str,
        message: str,
    ) -> None:
        """Counts one refusal; never blocks, never raises."""
        source = principal or peer_address(peer) or "unknown"
        key = (kind, source)
        tally = self._tallies.get(key)
        if tally is None:
            if len(self._tallies) >= MAX_SOURCES:
                key = (kind, OTHER)
                tally = self._tallies.get(key)
            if tally is None:
                tally = _Tally(kind, key[1], principal, actor_type, self.clock())
                self._tallies[key] = tally
                self._due.set()  # the first one from a source is recorded at once
        tally.count += 1
        tally.message = message
        if rpc not in tally.rpcs and len(tally.rpcs) < MAX_RPCS:
            tally.rpcs.append(rpc)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), min(1.0, self.window))
            self._due.clear()
            await self.flush()

    async def flush(self, final: bool = False) -> None:
        """Records what is due: a new source's first refusal, and each window's rest
        once the window is over (everything when `final`)."""
        now = self.clock()
        for key, tally in list(self._tallies.items()):
            closed = final or now - tally.opened_at >= self.window
            due = tally.count > tally.recorded and (tally.recorded == 0 or closed)
            if due and not await self._record(tally):
                return  # Redis is down: try again on the next round
            if closed:
                del self._tallies[key]

    async def _record(self, tally: _Tally) -> bool:
        # A snapshot: refusals counted while the entry is written go in the next one.
        counted = tally.count
        count = counted - tally.recorded
        description = (
            f"{count} call(s) refused ({tally.message})"
            if tally.source != OTHER
            else f"{count} call(s) refused from sources beyond the first {MAX_SOURCES}"
        )
        draft = EntryDraft.of_no_action(
            self.clock(),
            KINDS[tally.kind],
            tally.principal or GATEWAY_SUBJECT,
            tally.actor_type,
            details={
                "source": tally.source,
                "count": count,
                "rpcs": list(tally.rpcs),
                "reason": tally.message,
                "window_seconds": self.window,
            },
            outcome="refused",
        )
        try:
            (entry,) = await self.audit.commit([draft])
        except StoreUnavailable as e:
            log.warning(
                "could not record security refusals",
                extra={"category": "error", "kind": tally.kind, "error": str(e)},
            )
            return False
        tally.recorded = counted
        self.observe(
            security_event(
                tally.kind,
                description,
                self.clock(),
                subject=tally.principal or GATEWAY_SUBJECT,
                agent_id=tally.principal if tally.actor_type is ActorType.AGENT else "",
                data={"source": tally.source, "rpcs": list(tally.rpcs), "audit_seq": entry.seq},
                count=count,
            )
        )
        return True
