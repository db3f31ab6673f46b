"""docker-compose.yml and the Dockerfile stay consistent with the code (no Docker here):
the gateway runs unprivileged with TLS from the example certificates, health checks
speak that TLS, Redis persists an AOF, and every file they name exists."""

from __future__ import annotations

import fnmatch
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from cryptography import x509

from clients.cli import build_parser
from gateway.api.tls import CertificateFiles
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
    "read_only",
    "tmpfs",
    "cap_drop",
    "security_opt",
    "user",
}
TLS_DIR = "/etc/agentgw/tls"


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "deploy" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example_certs = load_script("example_certs")
health_probe = load_script("health_probe")


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return doc


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"][name]
    return found


def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def image_uid() -> int:
    users = re.findall(r"^USER (\S+)$", dockerfile(), flags=re.M)
    assert users, "the Dockerfile sets no USER: the gateway would run as root"
    return int(users[-1].split(":")[0])


def image_file(path: str) -> Path:
    """The repo file that the Dockerfile copies to `path` in the image."""
    (workdir,) = re.findall(r"^WORKDIR (\S+)$", dockerfile(), flags=re.M)
    for line in re.findall(r"^COPY (.+)$", dockerfile(), flags=re.M):
        *sources, target = line.split()
        for source in sources:
            into = Path(workdir, target)
            placed = into / Path(source).name if target.endswith("/") else into
            if str(placed) == path:
                return REPO / str(source)
    raise AssertionError(f"the Dockerfile copies nothing to {path}")


def mounts(name: str) -> dict[str, str]:
    """A service's volume mounts: path in the container -> volume name."""
    return {m.split(":")[1]: m.split(":")[0] for m in service(name).get("volumes", [])}


def made_certificates(tmp_path: Path) -> Path:
    """What the `certs` service writes into its volume, made here by the same command."""
    certs = service("certs")
    assert certs["entrypoint"][:2] == ["python", "/app/deploy/example_certs.py"]
    command = [str(tmp_path) if a == TLS_DIR else a for a in certs["command"]]
    assert command != certs["command"], f"the certs service does not write into {TLS_DIR}"
    assert example_certs.main(command) == 0
    return tmp_path


def gateway_environment(tls: Path, data: Path) -> dict[str, str]:
    """The gateway's environment, its TLS files and data dir where they are here."""
    env: dict[str, str] = {}
    for name, value in service("gateway")["environment"].items():
        value = str(value)
        if value.startswith(TLS_DIR + "/"):
            value = str(tls / value.removeprefix(TLS_DIR + "/"))
        env[name] = value
    env["AGENTGW_DATA_DIR"] = str(data)  # /data does not exist here
    return env


def test_compose_has_only_known_keys_and_its_three_services() -> None:
    doc = compose()
    assert set(doc) <= COMPOSE_KEYS
    assert set(doc["services"]) == {"certs", "gateway", "redis"}
    for name, spec in doc["services"].items():
        assert set(spec) <= SERVICE_KEYS, name
        assert ("image" in spec) != ("build" in spec), name


def test_gateway_waits_for_its_certificates_and_a_healthy_redis() -> None:
    depends = service("gateway")["depends_on"]
    assert depends["certs"]["condition"] == "service_completed_successfully"
    assert depends["redis"]["condition"] == "service_healthy"
    assert mounts("certs")[TLS_DIR] == mounts("gateway")[TLS_DIR], "one volume"
    assert f"{mounts('gateway')[TLS_DIR]}:{TLS_DIR}:ro" in service("gateway")["volumes"]


def test_redis_persists_an_aof_on_its_volume_and_is_health_checked() -> None:
    redis = service("redis")
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] in {"everysec", "always"}
    assert "/data" in mounts("redis"), "the AOF (in /data) must be on a volume"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_named_volumes_are_declared() -> None:
    doc = compose()
    for spec in doc["services"].values():
        for mount in spec.get("volumes", []):
            source = mount.split(":", 1)[0]
            assert source in doc["volumes"], source


def test_the_gateway_runs_unprivileged_on_a_read_only_filesystem() -> None:
    uid = image_uid()
    assert uid != 0
    for name in ("certs", "gateway"):
        spec = service(name)
        assert spec["build"] == "."
        assert str(spec.get("user", uid)).split(":")[0] == str(uid), name
        assert spec["read_only"] is True, name
        assert spec["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in spec["security_opt"], name
        # A new named volume takes the owner of the image's directory it is mounted on.
        for path in mounts(name):
            assert re.search(rf"chown {uid}:{uid} [^\n]*{re.escape(path)}\b", dockerfile()), (
                f"{name}: {path} must be owned by uid {uid} in the image"
            )
    assert service("gateway")["tmpfs"] == ["/tmp"]


def test_gateway_command_and_environment_are_understood(tmp_path: Path) -> None:
    gateway = service("gateway")
    args = build_parser().parse_args(gateway["command"])
    assert args.run.__name__ == "run_serve"
    tls = made_certificates(tmp_path / "tls")
    env = gateway_environment(tls, tmp_path / "data")
    assert "AGENTGW_INSECURE" not in env
    config, first_run = load_config(Overrides(), env)
    assert first_run is not None
    assert config.redis.url == "redis://redis:6379/0"
    assert config.listen == "0.0.0.0:50051"
    assert set(first_run.tokens) == {p.name for p in config.principals}
    assert config.tls.enabled and config.tls.mutual and not config.insecure
    CertificateFiles(config.tls)  # the certs service's files load as the gateway loads them
    published = {p.rsplit(":", 1)[1] for p in gateway["ports"]}
    assert published == {
        config.listen.rsplit(":", 1)[1],
        env["AGENTGW_METRICS_LISTEN"].rsplit(":", 1)[1],
    }
    assert all(p.startswith("127.0.0.1:") for p in gateway["ports"]), "loopback only"


def test_every_gateway_variable_is_one_the_gateway_reads() -> None:
    """A misspelt variable is silently ignored (e.g. TLS without its client CA)."""
    sources = "".join(
        p.read_text() for folder in ("gateway", "clients") for p in (REPO / folder).rglob("*.py")
    )
    unread = [name for name in service("gateway")["environment"] if f'"{name}"' not in sources]
    assert not unread, f"nothing in gateway/ or clients/ reads {unread}"


def test_healthcheck_asks_over_the_gateways_own_tls(tmp_path: Path) -> None:
    check = service("gateway")["healthcheck"]
    command = check["test"]
    assert command[:3] == ["CMD", "python", "/app/deploy/health_probe.py"]
    args = health_probe.build_parser().parse_args(command[3:])
    env = service("gateway")["environment"]
    assert args.ready, "healthy means SERVING"
    assert args.address.rsplit(":", 1)[1] == env["AGENTGW_LISTEN"].rsplit(":", 1)[1]
    assert str(args.ca) == env["AGENTGW_TLS_CLIENT_CA"] == f"{TLS_DIR}/ca.crt"
    assert args.cert is not None and args.key is not None, "the gateway requires mTLS"
    tls = made_certificates(tmp_path)
    for path in (args.ca, args.cert, args.key):
        assert (tls / path.relative_to(TLS_DIR)).exists(), path
    server = x509.load_pem_x509_certificate((tls / "server.crt").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert args.server_name in names.get_values_for_type(x509.DNSName)
    assert args.timeout < int(check["timeout"].removesuffix("s"))


def test_every_file_the_compose_file_names_exists() -> None:
    for name, spec in compose()["services"].items():
        if "build" in spec:
            assert (REPO / spec["build"] / "Dockerfile").exists(), name
        for mount in spec.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name}: {source}"
        words = [*spec.get("entrypoint", []), *spec.get("healthcheck", {}).get("test", [])]
        for word in words:
            if word.startswith("/app/"):
                assert image_file(word).exists(), f"{name}: {word}"


def test_dockerfile_copies_what_exists_and_dockerignore_keeps_it() -> None:
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ".venv" in ignored and ".git" in ignored
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile(), flags=re.M):
        for part in source.split():
            assert (REPO / part).exists(), part
            for pattern in ignored:
                assert not fnmatch.fnmatch(part, pattern), f"{part} is in .dockerignore"
                assert not part.startswith(pattern.rstrip("/") + "/"), part
