"""Alerting: rules evaluated on the gateway's events, off the decision path.

`observe(event)` is all the decision path does: it puts the event on a bounded
queue and returns (a full queue drops the event and counts it; it never waits).
`run` takes events off the queue, evaluates the rules (gateway/domain/alerts), and
fires each match through the store, which checks the rule's cooldown for the
subject across every replica. A fired alert is written to the `log` channel (a
structured record in the rule's category) if the rule sends there, its other
deliveries are queued in Redis for the delivery worker, and `Alerts.Watch`
streams read it from the shared feed.

If Redis is down (an audit append failing is the usual reason) the alert cannot be
stored or cooled down across replicas: it is logged, sent to the watchers of this
replica, and handed to the local best-effort delivery, each at most once per rule,
subject and cooldown on this replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any

from gateway.domain.alerts.model import Alert, Severity, new_alert_id
from gateway.domain.alerts.rules import AlertEvent, Match, evaluate
from gateway.domain.alerts.settings import LOG_CHANNEL, AlertSettings
from gateway.domain.audit.entry import EntryDraft, format_timestamp
from gateway.domain.audit.events import ActorType, EventType
from gateway.domain.principals import Principal
from gateway.domain.redaction import Redactor
from gateway.domain.validation import require_identifier
from gateway.errors import Conflict, Exhausted, InvalidRequest, NotFound, StoreUnavailable
from gateway.store.alerts import AlertStore, FeedEvent
from gateway.store.audit_log import AuditLog
from gateway.store.intents import AcknowledgeAlert

log = logging.getLogger("agentgw.alerts")

QUEUE_SIZE = 10_000  # events waiting for evaluation
WATCH_QUEUE = 1_000  # alerts waiting for one slow watcher before it is dropped
FEED_POLL_SECONDS = 0.2
FOLLOW_TIMEOUT = 10.0  # a watcher waits this long for the feed to be followed
RULE_ERROR_EVERY = 60.0  # a broken rule's error is logged at most this often
NOTE_LIMIT = 1_000
COOLING_KEPT = 10_000  # (rule, subject) cooldowns remembered locally
LEVELS = {
    Severity.LOW: logging.INFO,
    Severity.MEDIUM: logging.WARNING,
    Severity.HIGH: logging.ERROR,
    Severity.CRITICAL: logging.CRITICAL,
}

LocalDelivery = Callable[[Alert, Sequence[str]], Coroutine[Any, Any, None]]


class Alerting:
    def __init__(
        self,
        settings: AlertSettings,
        store: AlertStore,
        clock: Callable[[], float],
        redactor: Redactor,
        wake_delivery: Callable[[], None] = lambda: None,
        deliver_locally: LocalDelivery | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.redactor = redactor
        self.wake_delivery = wake_delivery
        self.deliver_locally = deliver_locally
        self.dropped = 0  # events the full queue refused
        self.on_fired: Callable[[Alert], None] = lambda alert: None  # the app counts them
        self._queue: asyncio.Queue[AlertEvent] = asyncio.Queue(QUEUE_SIZE)
        self._rule_errors: dict[str, float] = {}
        # (rule, subject) -> until when it is known to cool down: as Redis reported, or
        # as this replica set it for an alert fired without Redis. Matches before then
        # need no Redis call. Bounded by COOLING_KEPT.
        self._cooling: dict[tuple[str, str], float] = {}
        self._watchers: set[asyncio.Queue[Alert | None]] = set()
        self._watched = asyncio.Event()  # someone watches
        self._following = asyncio.Event()  # the feed is followed from a known point

    # --- evaluating and firing --------------------------------------------------

    def observe(self, event: AlertEvent) -> None:
        """Queues an event for evaluation; never blocks, never raises."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.error(
                    "alert queue full; events dropped",
                    extra={"category": "error", "dropped": self.dropped},
                )

    async def run(self) -> None:
        while True:
            event = await self._queue.get()
            await self.handle(event)

    async def drain(self) -> None:
        """Evaluates what is queued (the app calls this when stopping)."""
        while not self._queue.empty():
            await self.handle(self._queue.get_nowait())

    async def handle(self, event: AlertEvent) -> list[Alert]:
        """Evaluates one event and fires its matches; returns the alerts that fired."""
        now, subject = self.clock(), event.subject
        # A rule known to be cooling down for the subject is not evaluated (on a busy
        # gateway most events meet only such rules), and no alert is built for it.
        evaluation = evaluate(
            self.settings.rules,
            event,
            skip=lambda rule: now < self._cooling.get((rule.name, subject), 0.0),
        )
        for error in evaluation.errors:
            self._rule_error(error)
        fired = []
        for match in evaluation.matches:
            alert = self._alert(match, event)
            if await self._fire(alert, match):
                fired.append(alert)
                self.on_fired(alert)
        return fired

    def _alert(self, match: Match, event: AlertEvent) -> Alert:
        data = self.redactor.value(
            {
                "metrics": dict(event.metrics),
                "findings": [dict(f) for f in event.findings],
                **dict(event.data),
                "session_id": event.session_id,
            }
        )
        return Alert(
            alert_id=new_alert_id(),
            rule=match.rule.name,
            severity=match.rule.severity,
            subject=event.subject,
            message=self.redactor.text(match.message),
            fired_at=self.clock(),
            event_type=event.event_type,
            data=data,
            channels=self.settings.channels_of(match.rule),
            trace_id=event.trace_id,
        )

    async def _fire(self, alert: Alert, match: Match) -> bool:
        key = (alert.rule, alert.subject)
        if alert.fired_at < self._cooling.get(key, 0.0):
            return False  # known to be cooling down: no call needed
        remote = [c for c in alert.channels if c != LOG_CHANNEL]
        try:
            cooling = await self.store.fire(alert, match.rule.cooldown_seconds, remote)
        except StoreUnavailable as e:
            return await self._fire_locally(alert, match, str(e))
        if cooling is not None:
            self._remember_cooling(key, cooling.until)
            return False
        self._log(alert, match)
        if remote:
            self.wake_delivery()
        return True

    def _remember_cooling(self, key: tuple[str, str], until: float) -> None:
        if len(self._cooling) >= COOLING_KEPT:
            now = self.clock()
            self._cooling = {k: t for k, t in self._cooling.items() if t > now}
            if len(self._cooling) >= COOLING_KEPT:
                self._cooling.clear()
        self._cooling[key] = until

    async def _fire_locally(self, alert: Alert, match: Match, error: str) -> bool:
        # Without Redis the cooldown is this replica's, and at least a minute.
        key = (alert.rule, alert.subject)
        self._remember_cooling(key, alert.fired_at + max(match.rule.cooldown_seconds, 60.0))
        self._log(alert, match, stored=False, error=error)
        self._publish(alert)
        remote = [c for c in alert.channels if c != LOG_CHANNEL]
        if remote and self.deliver_locally is not None:
            task = asyncio.get_running_loop().create_task(self.deliver_locally(alert, remote))
            task.add_done_callback(_report_failure)
        return True

    def _log(self, alert: Alert, match: Match, stored: bool = True, error: str = "") -> None:
        if LOG_CHANNEL not in alert.channels and stored:
            return
        extra: dict[str, Any] = {
            "category": match.rule.category,
            "event_type": "alert_fired",
            "agent_id": alert.subject if alert.subject != "gateway" else "",
            "session_id": str(alert.data.get("session_id", "")),
            "trace_id": alert.trace_id,
            "alert_id": alert.alert_id,
            "rule": alert.rule,
            "severity": alert.severity.value,
            "subject": alert.subject,
            "channels": list(alert.channels),
        }
        if not stored:
            extra["stored"] = False
            extra["error"] = error
        log.log(LEVELS[alert.severity], alert.message, extra=extra)

    def _rule_error(self, error: str) -> None:
        rule = error.split(":", 1)[0]
        now = self.clock()
        if now < self._rule_errors.get(rule, 0.0):
            return
        self._rule_errors[rule] = now + RULE_ERROR_EVERY
        log.error(
            "alert rule error",
            extra={"category": "error", "rule": rule, "error": self.redactor.text(error)},
        )

    # --- Watch ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def subscribed(
        self, min_severity: Severity | None
    ) -> AsyncIterator[AsyncIterator[Alert]]:
        """Alerts fired (or acknowledged) on any replica from the moment the block
        starts, as they come: the feed is being followed once it has started. The
        subscription ends with the block, however it ends."""
        queue: asyncio.Queue[Alert | None] = asyncio.Queue(WATCH_QUEUE)
        self._watchers.add(queue)
        self._watched.set()
        try:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel.
                async with asyncio.timeout(FOLLOW_TIMEOUT):
                    await self._following.wait()
            except TimeoutError:
                raise StoreUnavailable(
                    "the alert feed cannot be read (Redis); watch again"
                ) from None
            yield self._stream(queue, min_severity)
        finally:
            self._unsubscribe(queue)

    async def _stream(
        self, queue: asyncio.Queue[Alert | None], min_severity: Severity | None
    ) -> AsyncIterator[Alert]:
        while True:
            alert = await queue.get()
            if alert is None:
                raise Exhausted(
                    "this watcher fell behind by more than "
                    f"{WATCH_QUEUE} alerts; watch again (and List what was missed)"
                )
            if min_severity is None or alert.severity.rank >= min_severity.rank:
                yield alert

    def _unsubscribe(self, queue: asyncio.Queue[Alert | None]) -> None:
        self._watchers.discard(queue)
        if not self._watchers:
            self._watched.clear()

    def _publish(self, alert: Alert) -> None:
        for queue in list(self._watchers):
            try:
                queue.put_nowait(alert)
            except asyncio.QueueFull:
                self._watchers.discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)  # tells the watcher it was dropped

    async def run_feed(self) -> None:
        """While anyone watches, follows the shared feed and hands its alerts over."""
        while True:
            await self._watched.wait()
            try:
                last = await self.store.feed_head()
                self._following.set()
                while self._watchers:
                    events: list[FeedEvent] = await self.store.feed_after(last)
                    for event in events:
                        last = event.id
                        self._publish(event.alert)
                    if not events:
                        await asyncio.sleep(FEED_POLL_SECONDS)
                self._following.clear()
            except StoreUnavailable as e:
                self._following.clear()
                log.warning("alert feed unreadable", extra={"category": "error", "error": str(e)})
                await asyncio.sleep(1.0)

    # --- List and Acknowledge ---------------------------------------------------

    async def list_alerts(
        self, active_only: bool, min_severity: Severity | None, subject: str, limit: int
    ) -> list[Alert]:
        if subject:
            require_identifier("subject", subject, 128)
        if limit > 1000:
            raise InvalidRequest("limit", f"{limit} exceeds the maximum of 1000")
        return await self.store.list_alerts(active_only, min_severity, subject, limit or 100)

    async def acknowledge(
        self, principal: Principal, alert_id: str, note: str, audit: AuditLog
    ) -> Alert:
        """Records who acknowledged an active alert, when and why, with its audit
        entry; refused (FAILED_PRECONDITION) if it is acknowledged already."""
        require_identifier("alert_id", alert_id, 64)
        if len(note) > NOTE_LIMIT:
            raise InvalidRequest("note", f"{len(note)} characters exceed the limit of {NOTE_LIMIT}")
        note = self.redactor.text(note)
        alert = await self.store.get(alert_id)
        if alert is None:
            raise NotFound(f"alert {alert_id} not found (or past its retention)")
        if alert.acknowledged:
            raise Conflict(f"alert {alert_id} was acknowledged by {alert.acknowledged_by} already")
        now = self.clock()
        after = replace(alert, acknowledged_by=principal.name, acknowledged_at=now, note=note)
        draft = EntryDraft.of_no_action(
            now,
            EventType.ALERT_ACKNOWLEDGED,
            principal.name,
            ActorType.USER,
            details={
                "alert_id": alert_id,
                "rule": alert.rule,
                "severity": alert.severity.value,
                "subject": alert.subject,
                "fired_at": format_timestamp(alert.fired_at),
                "note": note,
            },
            outcome="acknowledged",
        )
        (entry,) = await audit.commit(
            [draft],
            AcknowledgeAlert(after),
            conflict=f"alert {alert_id} was acknowledged by someone else just now",
        )
        log.info(
            "alert acknowledged",
            extra={
                "category": "security",
                "event_type": "alert_acknowledged",
                "alert_id": alert_id,
                "actor": principal.name,
                "audit_seq": entry.seq,
            },
        )
        return replace(after, acknowledgement_audit_seq=entry.seq)


def _report_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "local alert delivery failed",
            extra={"category": "error", "error": repr(task.exception())},
        )
