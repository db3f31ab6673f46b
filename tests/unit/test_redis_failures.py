"""How Redis failures become the store's errors: what was never sent, what may have
run, and redis-py's own transport errors, without hiding a bug of ours."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from redis.exceptions import (
    ConnectionError,
    MaxConnectionsError,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import OutcomeUnknown, StoreUnavailable
from gateway.store.connection import unavailable_on_error


def raising_in(filename: str, error: BaseException) -> Callable[[], None]:
    """A function whose code lives in `filename` and raises `error`."""
    namespace: dict[str, object] = {"error": error}
    exec(compile("def fail():\n    raise error\n", filename, "exec"), namespace)
    fail = namespace["fail"]
    assert callable(fail)
    return fail  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("error", "kind", "message"),
    [
        (
            ResponseError("OOM command not allowed"),
            StoreUnavailable,
            "Redis refused the command (OOM)",
        ),
        (MaxConnectionsError("Too many connections"), StoreUnavailable, "no free Redis connection"),
        (SlotNotCoveredError("slot 5 not covered"), StoreUnavailable, "Redis is unreachable"),
        (ConnectionError("reset"), OutcomeUnknown, "Redis is unreachable"),
        (RedisTimeoutError("read"), OutcomeUnknown, "Redis timed out"),
        (OSError("broken pipe"), OutcomeUnknown, "Redis is unreachable"),
    ],
)
def test_redis_failures_map_to_the_store_errors(
    error: BaseException, kind: type[Exception], message: str
) -> None:
    with pytest.raises(kind) as raised, unavailable_on_error("reading a hold"):
        raise error
    assert type(raised.value) is kind
    assert str(raised.value) == f"reading a hold: {message}"


def test_a_transport_error_inside_redis_py_is_a_broken_connection() -> None:
    # What redis-py leaks when a connection closes under a write.
    leak = raising_in(
        "/site-packages/redis/asyncio/connection.py",
        AttributeError("'NoneType' object has no attribute 'writelines'"),
    )
    unreachable = "recording the action: Redis is unreachable"
    with (
        pytest.raises(OutcomeUnknown, match=unreachable),
        unavailable_on_error("recording the action"),
    ):
        leak()


def test_an_attribute_error_of_our_own_is_not_hidden() -> None:
    ours = raising_in("/work/gateway/store/state.py", AttributeError("no such field"))
    with pytest.raises(AttributeError, match="no such field"), unavailable_on_error("ours"):
        ours()


def test_every_failure_reaches_the_listeners_and_a_success_does_not() -> None:
    """The app's `agentgw_redis_errors_total` counts through FAILURE_LISTENERS."""
    from gateway.store.connection import FAILURE_LISTENERS

    seen: list[str] = []
    FAILURE_LISTENERS.append(lambda: seen.append("failure"))
    try:
        with unavailable_on_error("reading"):
            pass
        for error in (ConnectionError("down"), RedisTimeoutError("slow")):
            # A lost connection or a timeout: the command may have run.
            with pytest.raises(OutcomeUnknown), unavailable_on_error("reading"):
                raise error
    finally:
        FAILURE_LISTENERS.pop()
    assert seen == ["failure", "failure"]
