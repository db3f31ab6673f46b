"""deploy/: the Kubernetes manifests, the health probe and example certificates, and
the Grafana dashboard stay valid and consistent with the gateway (offline: the
Kubernetes schemas come with the kubernetes-validate package)."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from clients.cli import build_parser
from gateway.api.tls import CertificateFiles
from gateway.config import Overrides, TlsSettings, load_config
from gateway.domain.audit.keys import KeyFileError, Signer
from gateway.domain.principals import Role
from gateway.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
# The oldest Kubernetes the manifests are meant for, and the newest schema shipped.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
DASHBOARD = DEPLOY / "grafana" / "agentgw-dashboard.json"

# The gateway's Prometheus metrics (name -> kind, labels).
METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "agentgw_decisions_total": ("counter", frozenset({"verdict"})),
    "agentgw_findings_total": ("counter", frozenset({"type"})),
    "agentgw_decision_duration_seconds": ("histogram", frozenset()),
    "agentgw_holds_pending": ("gauge", frozenset()),
    "agentgw_holds_resolved_total": ("counter", frozenset({"status"})),
    "agentgw_hold_resolution_seconds": ("histogram", frozenset()),
    "agentgw_audit_appends_total": ("counter", frozenset()),
    "agentgw_audit_batch_entries": ("histogram", frozenset()),
    "agentgw_audit_head_seq": ("gauge", frozenset()),
    "agentgw_checkpoint_age_seconds": ("gauge", frozenset()),
    "agentgw_redis_errors_total": ("counter", frozenset()),
    "agentgw_alerts_total": ("counter", frozenset({"rule", "severity"})),
    "agentgw_alert_delivery_failures_total": ("counter", frozenset({"channel"})),
    "agentgw_rpcs_total": ("counter", frozenset({"method", "code"})),
    "agentgw_rpc_duration_seconds": ("histogram", frozenset({"method"})),
}
# Labels Prometheus adds to every series it scrapes, and the histogram's bucket label.
SCRAPE_LABELS = frozenset({"instance", "job", "le"})


def load_script(name: str) -> ModuleType:
    """A script of deploy/ (not a package: it runs as `python /app/deploy/<name>.py`)."""
    spec = importlib.util.spec_from_file_location(name, DEPLOY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


health_probe = load_script("health_probe")
example_certs = load_script("example_certs")


# --- Kubernetes ----------------------------------------------------------------------


@functools.cache
def manifests() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for path in sorted(KUBERNETES.rglob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def only(kind: str, folder: Path = KUBERNETES) -> dict[str, Any]:
    found = [doc for path, doc in manifests() if doc["kind"] == kind and path.parent == folder]
    assert len(found) == 1, f"expected one {kind} in {folder}, found {len(found)}"
    return found[0]


def example_secrets() -> dict[str, dict[str, str]]:
    """The example Secrets (not applied with the rest): name -> key -> value."""
    return {
        doc["metadata"]["name"]: doc["stringData"]
        for path, doc in manifests()
        if doc["kind"] == "Secret" and path.parent.name == "example-secrets"
    }


def pod() -> dict[str, Any]:
    spec: dict[str, Any] = only("Deployment")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (gateway,) = pod()["containers"]
    return dict(gateway)


def container_ports() -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container()["ports"]}


def env_value(name: str) -> str:
    values = [e["value"] for e in container()["env"] if e["name"] == name]
    assert len(values) == 1, name
    return str(values[0])


def port_of(host_port: str) -> int:
    return int(host_port.rsplit(":", 1)[1])


def dockerfile_uid() -> int:
    users = re.findall(r"^USER (\S+)$", (REPO / "Dockerfile").read_text(), flags=re.M)
    return int(users[-1].split(":")[0])


def image_file(path: str) -> Path:
    """The repo file that the Dockerfile copies to `path` in the image (WORKDIR /app)."""
    text = (REPO / "Dockerfile").read_text()
    (workdir,) = re.findall(r"^WORKDIR (\S+)$", text, flags=re.M)
    for line in re.findall(r"^COPY (.+)$", text, flags=re.M):
        *sources, target = line.split()
        for source in sources:
            into = Path(workdir, target)
            placed = into / Path(source).name if target.endswith("/") else into
            if str(placed) == path:
                return REPO / str(source)
    raise AssertionError(f"the Dockerfile copies nothing to {path}")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_matches_the_kubernetes_schema(version: str) -> None:
    found = manifests()
    assert {doc["kind"] for _, doc in found} == {"Deployment", "Service", "Secret"}
    for path, doc in found:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(f"{path.relative_to(REPO)}: {doc['kind']}: {where}: {e.message}")


def test_the_gateway_runs_unprivileged_on_a_read_only_filesystem() -> None:
    spec = pod()
    uid = dockerfile_uid()
    assert uid != 0
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == uid
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    security = container()["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "runAsUser" not in security or security["runAsUser"] == uid
    # What a read-only root needs writable: the data dir and /tmp, both emptyDir.
    writable = {
        m["mountPath"]
        for m in container()["volumeMounts"]
        if not m.get("readOnly")
        and "emptyDir" in next(v for v in spec["volumes"] if v["name"] == m["name"])
    }
    assert writable == {env_value("AGENTGW_DATA_DIR"), "/tmp"}


def test_every_variable_is_one_the_gateway_reads() -> None:
    """A misspelt variable is silently ignored (e.g. a TLS setting that never applies)."""
    sources = "".join(
        p.read_text() for folder in ("gateway", "clients") for p in (REPO / folder).rglob("*.py")
    )
    unread = [e["name"] for e in container()["env"] if f'"{e["name"]}"' not in sources]
    assert not unread, f"nothing in gateway/ or clients/ reads {unread}"


def test_resources_are_requested_and_memory_is_bounded() -> None:
    resources = container()["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert "memory" in resources["limits"]


def test_ports_agree_between_gateway_deployment_and_service() -> None:
    deployment = only("Deployment")
    service = only("Service")
    ports = container_ports()
    assert ports["grpc"] == port_of(env_value("AGENTGW_LISTEN"))
    assert ports["metrics"] == port_of(env_value("AGENTGW_METRICS_LISTEN"))
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert annotations["prometheus.io/path"] == "/metrics"
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(service_ports) == {"grpc", "metrics"}
    for name, port in service_ports.items():
        assert port["targetPort"] in (name, ports[name]), name
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()


def test_every_secret_the_deployment_uses_is_in_the_examples() -> None:
    secrets = example_secrets()
    used = {v["secret"]["secretName"] for v in pod()["volumes"] if "secret" in v}
    for env in container()["env"]:
        if "valueFrom" in env:
            ref = env["valueFrom"]["secretKeyRef"]
            used.add(ref["name"])
            assert ref["key"] in secrets.get(ref["name"], {}), f"{ref['name']}: {ref['key']}"
    assert used == set(secrets)
    assert set(secrets["agentgw-tls"]) == {"tls.crt", "tls.key", "ca.crt"}


def probe_arguments(kind: str) -> Any:
    command = container()[kind]["exec"]["command"]
    assert command[:2] == ["python", "/app/deploy/health_probe.py"], kind
    assert image_file(command[1]) == DEPLOY / "health_probe.py"
    return health_probe.build_parser().parse_args(command[2:])


def test_probes_check_health_over_tls_and_only_readiness_needs_redis() -> None:
    service = only("Service")
    mounted = pod_files()
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        args = probe_arguments(kind)
        assert args.ready == (kind == "readinessProbe"), kind
        assert port_of(args.address) == container_ports()["grpc"], kind
        # The certificate's name for the Service, which deploy/README.md asks for.
        assert args.server_name == service["metadata"]["name"], kind
        assert str(args.ca) in mounted, f"{kind}: --ca {args.ca} is not in a mounted Secret"
        assert container()[kind]["timeoutSeconds"] > args.timeout, kind


def pod_files() -> dict[str, tuple[str, str]]:
    """Every file the Secrets put in the pod: its path -> (Secret name, key)."""
    secrets = example_secrets()
    volumes = {v["name"]: v for v in pod()["volumes"]}
    files: dict[str, tuple[str, str]] = {}
    for mount in container()["volumeMounts"]:
        volume = volumes[mount["name"]]
        assert "subPath" not in mount, "a subPath mount never sees a Secret's updates"
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            assert mount.get("readOnly") is True, mount["name"]
            for key in secrets[name]:
                files[f"{mount['mountPath']}/{key}"] = (name, key)
    return files


def write_pod_files(root: Path) -> dict[str, str]:
    """The pod's Secret files and emptyDirs under `root`, with real TLS files and a
    real signing key in place of the placeholders; returns pod path -> local path."""
    secrets = example_secrets()
    certificates = root / "made"
    example_certs.main([str(certificates), "--server-name", "agentgw"])
    made = {
        ("agentgw-tls", "tls.crt"): (certificates / "server.crt").read_text(),
        ("agentgw-tls", "tls.key"): (certificates / "server.key").read_text(),
        ("agentgw-tls", "ca.crt"): (certificates / "ca.crt").read_text(),
        ("agentgw-audit-keys", "audit-signing-key.pem"): ed25519.Ed25519PrivateKey.generate()
        .private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        .decode(),
    }
    paths: dict[str, str] = {}
    for mount in container()["volumeMounts"]:
        local = root / "pod" / mount["mountPath"].lstrip("/")
        local.mkdir(parents=True)
        paths[mount["mountPath"]] = str(local)
    for pod_path, (name, key) in pod_files().items():
        local = Path(in_pod(paths, pod_path))
        local.write_text(made.get((name, key), secrets[name][key]))
    return paths


def in_pod(paths: dict[str, str], pod_path: str) -> str:
    for mount_path, local in paths.items():
        if pod_path == mount_path or pod_path.startswith(mount_path + "/"):
            return local + pod_path[len(mount_path) :]
    raise AssertionError(f"{pod_path} is on no volume of the pod")


def test_the_gateway_understands_the_deployment(tmp_path: Path) -> None:
    """The args, environment and Secrets as the pod sees them load as a config whose
    every file is on a mounted volume (a root that is read-only has no others)."""
    paths = write_pod_files(tmp_path)
    secrets = example_secrets()
    env: dict[str, str] = {}
    for item in container()["env"]:
        if "value" in item:
            value = str(item["value"])
            env[item["name"]] = in_pod(paths, value) if value.startswith("/") else value
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
    args = build_parser().parse_args(container()["args"])
    assert args.run.__name__ == "run_serve"
    assert args.config is not None, "the config comes from the agentgw-config Secret"
    config_file = Path(in_pod(paths, str(args.config)))
    assert config_file.exists(), args.config
    # The config names pod paths; the mounts are elsewhere here.
    mounts = "|".join(re.escape(m) for m in sorted(paths, key=len, reverse=True))
    text = re.sub(
        rf"(?<![\w/])({mounts})(?![\w.-])", lambda m: paths[m[1]], config_file.read_text()
    )
    config_file.write_text(text)
    config, first_run = load_config(Overrides(config_file=config_file), env)
    assert first_run is None, "a config from a Secret never generates tokens"
    assert {p.role for p in config.principals} == set(Role)
    assert config.listen == env_value("AGENTGW_LISTEN")
    assert config.redis.url == secrets["agentgw-redis"]["url"]
    assert config.tls.enabled and not config.tls.mutual
    CertificateFiles(config.tls)  # the TLS files load as the gateway loads them
    # The metrics endpoint speaks the gateway's TLS and, unless public, wants the
    # token of an auditor or admin (gateway/api/metrics.py).
    assert config.metrics.listen == env_value("AGENTGW_METRICS_LISTEN")
    annotations = only("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scheme"] == "https"
    assert config.metrics.public or any(
        p.name == "prometheus" and p.role is Role.AUDITOR for p in config.principals
    ), "a principal for the scraper"
    for path in (config.signing_key_path, config.key_dir_path, config.data_dir):
        assert str(path).startswith(str(tmp_path / "pod")), f"{path}: not on a volume"
    assert config.signing_key_path.exists(), "the signing key comes from a Secret"
    audit_mount = in_pod(paths, "/etc/agentgw/audit")
    assert str(config.key_dir_path) == audit_mount, "rotated keys come from the same Secret"


def test_example_secrets_let_nobody_in(tmp_path: Path) -> None:
    """The placeholders grant nothing: token digests nobody has a token for, and TLS
    files and a signing key that are not PEM, so a pod started on them fails."""
    secrets = example_secrets()
    config = yaml.safe_load(secrets["agentgw-config"]["agentgw.yaml"])
    for principal in config["principals"]:
        assert re.fullmatch(r"0{63}[1-9]", principal["token_sha256"]), principal["name"]
    for name, key in pod_files().values():
        (tmp_path / key).write_text(secrets[name][key])
    tls = TlsSettings(cert_file=tmp_path / "tls.crt", key_file=tmp_path / "tls.key")
    with pytest.raises(ConfigError, match="no PEM certificate"):
        CertificateFiles(tls)
    with pytest.raises(KeyFileError, match="not an unencrypted PEM private key"):
        Signer.load(tmp_path / "audit-signing-key.pem")


# --- the health probe and the example certificates --------------------------------


def test_example_certificates_are_made_once(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    assert example_certs.main([str(directory)]) == 0
    files = {name: (directory / name).read_bytes() for name in example_certs.FILES}
    for name in ("server.key", "client.key"):
        assert (directory / name).stat().st_mode & 0o777 == 0o600, name
    assert example_certs.main([str(directory)]) == 0
    assert {name: (directory / name).read_bytes() for name in files} == files
    (directory / "client.key").unlink()
    assert example_certs.main([str(directory)]) == 0
    assert (directory / "ca.crt").read_bytes() != files["ca.crt"], "an incomplete set is remade"


def test_example_certificates_name_the_gateway_and_chain_to_the_ca(tmp_path: Path) -> None:
    example_certs.main([str(tmp_path)])
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    client = x509.load_pem_x509_certificate((tmp_path / "client.crt").read_bytes())
    alt = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alt.get_values_for_type(x509.DNSName) == ["gateway", "localhost"]
    assert [str(ip) for ip in alt.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    for leaf, usage in (
        (server, ExtendedKeyUsageOID.SERVER_AUTH),
        (client, ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        leaf.verify_directly_issued_by(ca)
        assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
    assert not (tmp_path / "ca.key").exists(), "the CA's key is never written"


class HealthServer:
    """A grpc.health.v1 server with the example certificates, requiring a client
    certificate (mTLS), on a free loopback port."""

    def __init__(self, tls: Path) -> None:
        self.health = health.HealthServicer()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        credentials = grpc.ssl_server_credentials(
            [((tls / "server.key").read_bytes(), (tls / "server.crt").read_bytes())],
            root_certificates=(tls / "ca.crt").read_bytes(),
            require_client_auth=True,
        )
        self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.server.start()

    def serve(self, serving: bool) -> None:
        answer = health_pb2.HealthCheckResponse
        self.health.set("", answer.SERVING if serving else answer.NOT_SERVING)


@pytest.fixture
def tls(tmp_path: Path) -> Path:
    example_certs.main([str(tmp_path / "tls")])
    return tmp_path / "tls"


@pytest.fixture
def health_server(tls: Path) -> Iterator[HealthServer]:
    server = HealthServer(tls)
    yield server
    server.server.stop(grace=None)


def probe(server: HealthServer, tls: Path, *extra: str, client: bool = True) -> int:
    args = ["--address", f"127.0.0.1:{server.port}", "--server-name", "gateway"]
    args += ["--ca", str(tls / "ca.crt")]
    if client:
        args += ["--cert", str(tls / "client.crt"), "--key", str(tls / "client.key")]
    code: int = health_probe.main([*args, *extra])
    return code


def test_probe_ready_only_when_serving_alive_on_any_answer(
    health_server: HealthServer, tls: Path
) -> None:
    health_server.serve(True)
    assert probe(health_server, tls, "--ready") == 0
    assert probe(health_server, tls) == 0
    health_server.serve(False)
    assert probe(health_server, tls, "--ready") == 1
    assert probe(health_server, tls) == 0, "NOT_SERVING is alive: Redis is down, not the process"


def test_probe_fails_on_tls_it_cannot_trust(
    health_server: HealthServer, tls: Path, tmp_path: Path
) -> None:
    health_server.serve(True)
    assert probe(health_server, tls, client=False) == 1, "mTLS needs the client certificate"
    assert probe(health_server, tls, "--server-name", "elsewhere") == 1, "a name not in the cert"
    other = tmp_path / "other"
    example_certs.main([str(other)])
    assert probe(health_server, tls, "--ca", str(other / "ca.crt")) == 1, "another CA"


def test_probe_fails_when_nothing_listens(health_server: HealthServer, tls: Path) -> None:
    health_server.server.stop(grace=None).wait()
    assert probe(health_server, tls) == 1


# --- Grafana ------------------------------------------------------------------------


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def test_dashboard_queries_only_the_gateways_metrics_and_all_of_them() -> None:
    queries = dashboard_queries()
    used: set[str] = set()
    for query in queries:
        names = re.findall(r"\bagentgw_\w+", query)
        assert names, query
        for name in names:
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            metric = base if base != name and base in METRICS else name
            assert metric in METRICS, f"{name} is not a metric of the gateway: {query}"
            kind, _ = METRICS[metric]
            if kind == "histogram":
                assert name != metric, f"a histogram is queried by its _bucket series: {query}"
            if kind in ("counter", "histogram"):
                assert re.search(rf"\b(rate|increase)\(\s*{name}\b", query), (
                    f"{name} is cumulative: query its rate: {query}"
                )
            used.add(metric)
    assert used == set(METRICS), f"not on the dashboard: {sorted(set(METRICS) - used)}"


def test_dashboard_groups_and_filters_by_labels_the_metrics_have() -> None:
    for query in dashboard_queries():
        labels: set[str] = set()
        metric_labels: set[str] = set(SCRAPE_LABELS)
        for name in re.findall(r"\bagentgw_\w+", query):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            metric_labels |= METRICS.get(base, METRICS.get(name, ("", frozenset())))[1]
        for group in re.findall(r"\bby \(([^)]*)\)", query):
            labels |= {label.strip() for label in group.split(",")}
        for matcher in re.findall(r"\{([^}]*)\}", query):
            labels |= {m.split("=")[0].rstrip("!~").strip() for m in matcher.split(",")}
        assert labels <= metric_labels, f"{sorted(labels - metric_labels)}: {query}"


def test_dashboard_uses_its_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = dashboard["templating"]["list"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${" + variable["name"] + "}", panel["title"]


def test_the_readme_commands_name_files_that_exist() -> None:
    """deploy/README.md points at these files; a rename must update it."""
    readme = (DEPLOY / "README.md").read_text()
    named = re.findall(r"\b((?:deploy|docs)/[\w./-]+\.(?:ya?ml|py|json|md))\b", readme)
    assert named
    for path in named:
        assert (REPO / path).exists(), path
