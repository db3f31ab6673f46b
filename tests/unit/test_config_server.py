"""The `server:` section: connection idle time, keepalive, streams per connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.app import server_options
from gateway.config import Config, ServerSettings, parse_config
from gateway.errors import ConfigError

SOURCE = "/etc/agentgw/agentgw.yaml"


def parse(text: str) -> Config:
    return parse_config(text, SOURCE, Path("/etc/agentgw"))


def test_defaults_without_a_server_section() -> None:
    assert parse("log_level: INFO\n").server == ServerSettings()


def test_every_server_key_is_read() -> None:
    config = parse(
        "server:\n"
        "  max_connection_idle_seconds: 0.5\n"
        "  max_concurrent_streams: 8\n"
        "  keepalive_time_seconds: 30\n"
        "  keepalive_timeout_seconds: 5\n"
        "  max_pending_calls: 50\n"
    )
    assert config.server == ServerSettings(
        max_connection_idle_seconds=0.5,
        max_concurrent_streams=8,
        keepalive_time_seconds=30.0,
        keepalive_timeout_seconds=5.0,
        max_pending_calls=50,
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("server: 5\n", "1: server: expected a mapping"),
        ("server:\n  idle: 5\n", "2: server.idle: unknown key"),
        (
            "server:\n  max_connection_idle_seconds: 0\n",
            "2: server.max_connection_idle_seconds: expected a number >= 0.1",
        ),
        (
            "server:\n  max_concurrent_streams: 0\n",
            "2: server.max_concurrent_streams: expected an integer >= 1",
        ),
        (
            "server:\n  max_concurrent_streams: 2.5\n",
            "2: server.max_concurrent_streams: expected an integer >= 1",
        ),
        (
            "server:\n  keepalive_time_seconds: .inf\n",
            "2: server.keepalive_time_seconds: expected a number >= 1",
        ),
    ],
)
def test_bad_server_value_names_line_and_key(body: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(body)
    assert str(caught.value).startswith(f"{SOURCE}:{message}")


def test_server_settings_become_grpc_options() -> None:
    config = parse("server:\n  max_connection_idle_seconds: 0.25\n  max_concurrent_streams: 7\n")
    options = dict(server_options(config))
    assert options["grpc.max_connection_idle_ms"] == 250
    assert options["grpc.max_concurrent_streams"] == 7
    assert options["grpc.keepalive_time_ms"] == 60_000
    assert options["grpc.keepalive_timeout_ms"] == 20_000
    assert options["grpc.max_receive_message_length"] == config.limits.max_request_bytes
    assert options["grpc.server.max_pending_requests"] == 10_000
    assert options["grpc.server.max_pending_requests_hard_limit"] == 10_000
