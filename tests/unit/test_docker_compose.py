"""docker-compose.yml and the Dockerfile stay consistent with the code (no Docker here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from clients.cli import build_parser
from gateway.config import Overrides, load_config

REPO = Path(__file__).resolve().parents[2]
COMPOSE_KEYS = {"services", "volumes", "networks", "configs", "secrets", "name"}
SERVICE_KEYS = {
    "image",
    "build",
    "command",
    "entrypoint",
    "environment",
    "ports",
    "volumes",
    "depends_on",
    "healthcheck",
    "restart",
    "stop_grace_period",
    "networks",
    "env_file",
}


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_has_only_known_keys_and_both_services() -> None:
    doc = compose()
    assert set(doc) <= COMPOSE_KEYS
    assert set(doc["services"]) == {"gateway", "redis"}
    for name, service in doc["services"].items():
        assert set(service) <= SERVICE_KEYS, name
        assert ("image" in service) != ("build" in service), name


def test_gateway_waits_for_a_healthy_redis_with_persistence() -> None:
    doc = compose()
    assert doc["services"]["gateway"]["depends_on"]["redis"]["condition"] == "service_healthy"
    redis_cmd = doc["services"]["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"


def test_named_volumes_are_declared() -> None:
    doc = compose()
    for service in doc["services"].values():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            assert source in doc["volumes"], source


def test_gateway_command_and_environment_are_understood(tmp_path: Path) -> None:
    gateway = compose()["services"]["gateway"]
    args = build_parser().parse_args(gateway["command"])
    assert args.run.__name__ == "run_serve"
    env = dict(gateway["environment"])
    env["AGENTGW_DATA_DIR"] = str(tmp_path)  # /data does not exist here
    config, tokens = load_config(Overrides(), env)
    assert config.redis.url == "redis://redis:6379/0"
    assert config.listen == "0.0.0.0:50051"
    assert set(tokens) == {p.name for p in config.principals}
    port = gateway["ports"][0].rsplit(":", 1)[1]
    assert config.listen.endswith(":" + port)


def test_dockerfile_copies_what_exists() -> None:
    text = (REPO / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (.+) \S+$", text, flags=re.M):
        for part in source.split():
            assert (REPO / part).exists(), part
