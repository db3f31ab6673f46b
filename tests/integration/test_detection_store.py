"""Detection counters in Redis, through the store and its real Lua scripts.

The sliding windows and the baselines are checked against straightforward Python
models (hypothesis): a log of timestamps for the windows, and the domain's own
`learn` for the Welford baselines, so the Lua and the domain cannot drift apart.
Time is the `now` each call is given: no clock, no sleep.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any, TypeVar

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.domain.actions import ActionRequest
from gateway.domain.detect.anomaly import Prior, Stats, learn
from gateway.domain.detect.engine import DetectionSettings
from gateway.domain.detect.rates import AgentLimits, RateSettings, over_limit
from gateway.store.connection import close, connect
from gateway.store.intents import Claim
from gateway.store.keys import KeySpace
from gateway.store.state import Limited, Marks, Observation, StateStore

T = TypeVar("T")
START = 1_800_000_000.0  # a minute boundary (divisible by 60)


def run(redis_url: str, prefix: str, body: Callable[[StateStore], Awaitable[T]]) -> T:
    async def scenario() -> T:
        client = connect(redis_url)
        try:
            return await body(StateStore(client, KeySpace(prefix)))
        finally:
            await close(client)

    return asyncio.run(scenario())


def action(n: int, session: str = "s", action_type: str = "search") -> ActionRequest:
    return ActionRequest(f"a-{n}", "agent-1", session, action_type, parameters={"n": n})


async def observe(
    store: StateStore,
    request: ActionRequest,
    now: float,
    detection: DetectionSettings,
    size: int = 100,
) -> tuple[Observation | Limited | Any, Claim, Marks]:
    claim = Claim.new(uuid.uuid4().hex * 2)
    marks = Marks(
        request.action_type,
        f"{request.action_type}|{request.parameters}",
        request.session_id,
        size,
        now,
    )
    quota = detection.rates.quota(request.agent_id, request.action_type, size)
    return await store.observe(request, claim, marks, detection, quota), claim, marks


def limits(
    agent: int = 0, session: int = 0, type_limit: int = 0, bytes_: int = 0
) -> DetectionSettings:
    rates = RateSettings(
        defaults=AgentLimits(agent, session, bytes_),
        action_types={"send_email": type_limit} if type_limit else {},
    )
    return DetectionSettings(rates=rates)


@pytest.fixture
def prefix() -> Iterator[str]:
    yield f"t{uuid.uuid4().hex}"


def test_the_window_slides_instead_of_resetting_each_minute(redis_url: str, prefix: str) -> None:
    # 10 per minute: 5 at 0:50 and 5 at 1:10 fill the window around the minute
    # boundary (a fixed per-minute bucket would allow 10 more at 1:10); at 1:51 the
    # first five have left it, so five more fit, and not six.
    detection = limits(agent=10)

    async def body(store: StateStore) -> list[bool]:
        admitted = []
        for n, t in enumerate([50] * 5 + [70] * 6 + [111] * 6):
            observed, _, _ = await observe(store, action(n), START + t, detection)
            admitted.append(isinstance(observed, Observation))
        return admitted

    assert run(redis_url, prefix, body) == [True] * 10 + [False] + [True] * 5 + [False]


def test_each_window_refuses_on_its_own(redis_url: str, prefix: str) -> None:
    async def body(store: StateStore) -> list[str]:
        refused = []
        cases: list[tuple[DetectionSettings, ActionRequest, int]] = [
            (limits(session=2), action(1, "x"), 10),
            (limits(type_limit=2), action(2, "y", "send_email"), 10),
            (limits(bytes_=1000), action(3, "z"), 400),
        ]
        for detection, request, size in cases:
            for i in range(3):
                numbered = replace(request, action_id=f"{request.action_id}-{i}")
                observed, _, _ = await observe(store, numbered, START, detection, size)
            assert isinstance(observed, Limited)
            refused.append(observed.refusal.window)
        return refused

    assert run(redis_url, prefix, body) == ["session", "type", "bytes"]


def test_a_refused_action_is_not_claimed_or_counted(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    detection = limits(agent=1)
    keys = KeySpace(prefix)

    async def body(store: StateStore) -> None:
        await observe(store, action(1), START, detection)
        for n in range(2, 50):
            observed, _, _ = await observe(store, action(n), START, detection)
            assert isinstance(observed, Limited)
            assert observed.refusal.counts.agent_actions == 1

    run(redis_url, prefix, body)
    assert raw.zcard(keys.agent_window("agent-1")) == 1
    assert raw.llen(keys.recent_types("agent-1", "s")) == 1
    assert not raw.exists(keys.claim("agent-1", "a-2"))
    assert raw.hget(keys.agent_profile("agent-1"), "search") == "1"


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(st.floats(0, 40), st.sampled_from(["a", "b"]), st.integers(1, 600)),
        min_size=1,
        max_size=40,
    ),
    agent_limit=st.integers(1, 8),
    session_limit=st.integers(0, 5),
    bytes_limit=st.sampled_from([0, 1500]),
)
def test_windows_agree_with_a_log_of_timestamps(
    redis_url: str,
    steps: list[tuple[float, str, int]],
    agent_limit: int,
    session_limit: int,
    bytes_limit: int,
) -> None:
    """Each call is admitted exactly when a plain list of the admitted (time,
    session, size) says the window has room, and the counts agree."""
    detection = limits(agent=agent_limit, session=session_limit, bytes_=bytes_limit)
    prefix = f"t{uuid.uuid4().hex}"

    async def body(store: StateStore) -> None:
        log: list[tuple[float, str, int]] = []
        now = START
        for n, (dt, session, size) in enumerate(steps):
            now += dt
            live = [e for e in log if e[0] >= now - 60]
            before = (
                len(live),
                sum(e[1] == session for e in live),
                0,
                sum(e[2] for e in live),
            )
            from gateway.domain.detect.rates import RateCounts

            counts = RateCounts(*before)
            quota = detection.rates.quota("agent-1", "search", size)
            expected = over_limit(quota, counts)
            observed, _, _ = await observe(store, action(n, session), now, detection, size)
            if expected is None:
                assert isinstance(observed, Observation), (n, observed)
                log.append((now, session, size))
                rates = observed.counters.rates
                assert (rates.agent_actions, rates.session_actions, rates.agent_bytes) == (
                    before[0] + 1,
                    before[1] + 1,
                    before[3] + size,
                )
            else:
                assert isinstance(observed, Limited), (n, observed)
                assert observed.refusal.window == expected
                assert observed.refusal.counts == counts

    run(redis_url, prefix, body)


def test_a_release_takes_back_everything_observe_counted(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    detection = DetectionSettings()
    keys = KeySpace(prefix)

    def snapshot() -> dict[str, Any]:
        found: dict[str, Any] = {}
        for key in raw.scan_iter(f"{prefix}:*"):
            kind = raw.type(key)
            if kind == "zset":
                found[key] = raw.zrange(key, 0, -1)
            elif kind == "hash":
                found[key] = {k: v for k, v in raw.hgetall(key).items() if k != "apm:minute"}
            elif kind == "list":
                found[key] = raw.lrange(key, 0, -1)
            else:
                found[key] = raw.get(key)
        return found

    async def first(store: StateStore) -> None:
        await observe(store, action(1), START, detection)

    async def second(store: StateStore) -> None:
        observed, claim, marks = await observe(
            store, action(2, "other", "export"), START, detection
        )
        assert isinstance(observed, Observation)
        await store.release_claim(action(2, "other", "export"), claim, marks)

    run(redis_url, prefix, first)
    before = snapshot()
    run(redis_url, prefix, second)
    after = {k: v for k, v in snapshot().items() if v not in ([], {}, None)}
    assert after == {k: v for k, v in before.items() if v not in ([], {}, None)}
    assert not raw.exists(keys.claim("agent-1", "a-2"))


PRIOR = Prior(5, 2)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(minutes=st.lists(st.integers(0, 40), min_size=1, max_size=60))
def test_the_actions_per_minute_baseline_is_the_domains_learn(
    redis_url: str, minutes: list[int]
) -> None:
    """Each minute with actions is one sample, learned (or, if anomalous, not) exactly
    as `gateway.domain.detect.anomaly.learn` does."""
    detection = DetectionSettings(rates=RateSettings(defaults=AgentLimits(0, 0, 0)))
    prefix = f"t{uuid.uuid4().hex}"

    async def body(store: StateStore) -> Stats:
        n = 0
        for minute, count in enumerate(minutes):
            for _ in range(count):
                n += 1
                await observe(store, action(n, f"s{n}"), START + minute * 60, detection)
        # One more action, a minute later, closes the last minute.
        observed, _, _ = await observe(
            store, action(0, "last"), START + len(minutes) * 60, detection
        )
        assert isinstance(observed, Observation)
        return observed.counters.stats.get("actions_per_minute", Stats())

    learned = run(redis_url, prefix, body)
    expected = Stats()
    for count in minutes:
        if count:
            expected, _ = learn(expected, count, PRIOR, detection.anomaly)
    assert learned.n == expected.n
    assert learned.mean == pytest.approx(expected.mean, rel=1e-12, abs=1e-12)
    assert learned.m2 == pytest.approx(expected.m2, rel=1e-9, abs=1e-9)


def test_a_finished_task_is_a_calls_per_task_sample(redis_url: str, prefix: str) -> None:
    detection = replace(DetectionSettings(), task_idle_seconds=600)

    async def body(store: StateStore) -> Stats:
        for n in range(12):
            await observe(store, action(n, "task-1"), START + n, detection)
        # task-1 has been idle for more than 600 s when the next action arrives.
        observed, _, _ = await observe(store, action(99, "task-2"), START + 700, detection)
        assert isinstance(observed, Observation)
        assert observed.counters.samples["calls_per_task"] == 1
        return observed.counters.stats["calls_per_task"]

    assert run(redis_url, prefix, body) == Stats(1, 12.0, 0.0)
