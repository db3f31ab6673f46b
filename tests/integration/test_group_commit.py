"""Group commit: the audit writer waits (briefly) for the commits being prepared, so
that one commit.lua call appends many entries; a lone commit never waits, and a
preparation that never ends delays the others by GATHER_SECONDS at most.

In-process gateway on real Redis; the writer is driven through `AuditLog.preparing`
and `enqueue` as the decision path drives it. Waits are conditions with timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from gateway.domain.audit.entry import AuditEntry, EntryDraft
from gateway.store.audit_log import AuditLog
from tests.harness import RunningGateway


def draft(n: int) -> EntryDraft:
    return EntryDraft.of_no_action(1.0, "session_resumed", f"user-{n}", "user", {"n": n}, "ok")


async def until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)  # yields to the writer; the timeout bounds it
    assert condition(), what


def test_commits_in_preparation_join_one_batch(gw: RunningGateway) -> None:
    async def scenario(audit: AuditLog) -> tuple[int, list[list[AuditEntry]]]:
        first, second, third = audit.preparing(), audit.preparing(), audit.preparing()
        for preparation in (first, second, third):
            preparation.__enter__()
        batches = audit.batches
        futures = [audit.enqueue([draft(1)])]
        first.__exit__(None, None, None)
        # The writer woke for the first commit and waits for the two in preparation.
        await until(lambda: audit.gathering, "the writer to wait for the others")
        futures.append(audit.enqueue([draft(2)]))
        second.__exit__(None, None, None)
        futures.append(audit.enqueue([draft(3)]))
        third.__exit__(None, None, None)
        results = [await asyncio.wait_for(f, 10) for f in futures]
        return audit.batches - batches, results

    appended, results = gw.run(scenario(gw.app.audit))
    assert appended == 1  # one script call for the three
    seqs = [entries[0].seq for entries in results]
    assert seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2]


def test_a_lone_commit_is_appended_without_waiting(gw: RunningGateway) -> None:
    """Concurrency 1: every Submit finds nothing else in preparation."""
    agent = gw.agent("agent-1")
    gathers = gw.app.audit.gathers
    for n in range(5):
        agent.submit("search", session_id="s", action_id=f"lone-{n}")
    assert gw.app.audit.gathers == gathers


def test_a_preparation_that_never_ends_delays_the_others_boundedly(gw: RunningGateway) -> None:
    async def scenario(audit: AuditLog) -> list[AuditEntry]:
        stuck = audit.preparing()
        stuck.__enter__()  # a decision stuck before its enqueue (e.g. a slow claim)
        try:
            # Appended once GATHER_SECONDS have passed, though `stuck` never enqueues.
            return await asyncio.wait_for(audit.enqueue([draft(9)]), 10)
        finally:
            stuck.__exit__(None, None, None)

    (entry,) = gw.run(scenario(gw.app.audit))
    assert entry.actor == "user-9"
    assert gw.app.audit.gathers >= 1


def test_concurrent_submits_share_batches(gw: RunningGateway) -> None:
    """Sixteen agents' Submits at once: fewer script calls than entries, one chain."""
    audit = gw.app.audit
    before_batches, before_seq = audit.batches, gw.audit_head()
    agents = [gw.agent(f"agent-{1 + n % 2}") for n in range(16)]
    with ThreadPoolExecutor(16) as pool:
        decisions = list(
            pool.map(
                lambda n: agents[n].submit("search", session_id=f"c{n}", action_id=f"c-{n}"),
                range(16),
            )
        )
    seqs = sorted(d.audit_seq for d in decisions)
    assert seqs == list(range(before_seq + 1, before_seq + 17))
    assert audit.batches - before_batches < 16
