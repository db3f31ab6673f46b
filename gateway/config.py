"""Typed configuration: YAML file, then environment, then command-line flags.

Parsed and validated once at start into frozen values; errors name the file, the
line and the key. Nothing else in the gateway reads os.environ. When no config file
exists, `first_run_config` makes one with fresh random tokens; `serve` writes it
(mode 0600) only once the server listens, and shows the tokens once.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from yaml.nodes import Node

from gateway.domain.actions import Verdict
from gateway.domain.alerts.channels import resolve_secrets
from gateway.domain.alerts.settings import AlertSettings, read_alerts
from gateway.domain.audit_settings import AuditSettings, read_audit_settings
from gateway.domain.detect.engine import DetectionSettings
from gateway.domain.detect.settings import read_detection
from gateway.domain.log_settings import LogSettings, read_log_settings
from gateway.domain.principals import Principal, Role, token_digest
from gateway.domain.redaction import RedactionRules, key_word, value_pattern
from gateway.domain.validation import Limits
from gateway.domain.verdicts import DEFAULT_RECOMMENDATIONS, Effect
from gateway.domain.yaml_reader import YamlReader, join
from gateway.errors import ConfigError
from gateway.store.connection import parse_redis_url

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATA_DIR = Path("agentgw-data")
CONFIG_FILE_NAME = "agentgw.yaml"
_T = TypeVar("_T")


@dataclass(frozen=True)
class RedisSettings:
    url: str | None = None  # None: start the embedded server
    key_prefix: str = "agw"
    appendfsync: str = "everysec"
    server_binary: Path | None = None
    # Answer only once the audit entry is on this many replicas (WAIT); 0: standalone.
    min_replicas_acked: int = 0
    replica_ack_timeout_seconds: float = 1.0


@dataclass(frozen=True)
class ServerSettings:
    """The gRPC server's connection limits (the `server:` section)."""

    max_connection_idle_seconds: float = 300.0  # close a connection with no call this long
    max_concurrent_streams: int = 1000  # calls in flight per connection; more queue
    keepalive_time_seconds: float = 60.0  # ping a connection with calls this often
    keepalive_timeout_seconds: float = 20.0  # close it if a ping gets no answer by then
    # Calls gRPC has accepted that the gateway has not started yet (a burst of many
    # new calls at once); beyond it gRPC cancels new calls.
    max_pending_calls: int = 10_000


@dataclass(frozen=True)
class TlsSettings:
    """The server's certificate (the `tls:` section, --tls-cert/--tls-key): TLS when
    both are set; with `client_ca_file`, clients must present a certificate it
    signed (mTLS), which may also name their principal (`client_certificate`)."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None


@dataclass(frozen=True)
class MetricsSettings:
    """The Prometheus endpoint (the `metrics:` section, --metrics-listen)."""

    listen: str | None = None  # HOST:PORT; None: no endpoint
    public: bool = False  # serve without a token (auditor or admin) when True
    refresh_seconds: float = 10.0  # how often the all-replica gauges are read from Redis


@dataclass(frozen=True)
class TileServerSettings:
    """The audit log as tlog-tiles over HTTP (the `tiles:` section, --tiles-listen)."""

    listen: str | None = None  # HOST:PORT; None: no tile server
    public: bool = False  # serve without a token (auditor or admin) when True


@dataclass(frozen=True)
class Config:
    listen: str = DEFAULT_LISTEN
    data_dir: Path = DEFAULT_DATA_DIR
    policy_file: Path | None = None  # None: the built-in default policy
    principals: tuple[Principal, ...] = ()
    redis: RedisSettings = field(default_factory=RedisSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    tiles: TileServerSettings = field(default_factory=TileServerSettings)
    # Serve cleartext on a non-loopback address (--insecure): tokens then travel in
    # the clear, so it must be asked for.
    insecure: bool = False
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    limits: Limits = field(default_factory=Limits)
    hold_ttl_seconds: float = 900.0
    hold_retention_seconds: float = 7 * 86400.0  # a resolved hold stays readable this long
    idempotency_ttl_seconds: float = 86400.0
    session_idle_timeout_seconds: float = 86400.0  # history and pause of an idle session
    paused_session_verdict: Verdict = Verdict.HOLD
    quarantine_verdict: Verdict = Verdict.HOLD  # every action of a quarantined agent
    # A hold pending this long is escalated (a security log line; an alert once
    # alerts exist); 0: never.
    hold_escalation_seconds: float = 600.0
    # what each finding's recommendation does (YAML `recommendations`)
    recommendations: Mapping[str, Effect] = field(
        default_factory=lambda: dict(DEFAULT_RECOMMENDATIONS)
    )
    log_level: str = "INFO"
    logs: LogSettings = field(default_factory=LogSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    redaction: RedactionRules = field(default_factory=RedactionRules)  # added to the built-ins
    source: str = "<defaults>"

    @property
    def signing_key_path(self) -> Path:
        return self.audit.signing_key_file or self.data_dir / "audit-signing-key.pem"

    @property
    def key_dir_path(self) -> Path:
        return self.audit.key_dir or self.data_dir / "audit-keys"

    @property
    def tile_dir_path(self) -> Path:
        return self.audit.tiles.dir or self.data_dir / "tiles"


@dataclass(frozen=True)
class Overrides:
    """Values from command-line flags; None means not given."""

    config_file: Path | None = None
    listen: str | None = None
    data_dir: Path | None = None
    redis_url: str | None = None
    log_format: str | None = None  # text | json
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    insecure: bool = False
    metrics_listen: str | None = None
    tiles_listen: str | None = None


# --- the file: one function per top-level section ----------------------------------


def parse_config(text: str, source: str, base_dir: Path) -> Config:
    """Parses a config file's text. Relative paths resolve against base_dir.

    Each top-level key has one function that reads its value into the Config fields
    it sets; once the keys are checked, they run in this order.
    """
    sections: dict[str, _Section] = {
        "listen": _listen,
        "data_dir": _data_dir,
        "policy_file": _policy_file,
        "log_level": _log_level,
        "principals": _principals,
        "redis": _redis,
        "audit": _audit,
        "detection": _detection,
        "limits": _limits,
        "holds": _holds,
        "sessions": _sessions,
        "idempotency_ttl_seconds": _idempotency_ttl_seconds,
        "paused_session_verdict": _hold_or_deny("paused_session_verdict"),
        "quarantine_verdict": _hold_or_deny("quarantine_verdict"),
        "recommendations": _recommendations,
        "redaction": _redaction,
        "server": _server,
        "tls": _tls,
        "metrics": _metrics,
        "tiles": _tiles,
        "logs": _logs,
        "alerts": _alerts,
    }
    r = _ConfigReader(source, base_dir)
    root = r.compose(text)
    if root is None:
        return Config(source=source)
    top = r.mapping(root, "", sorted(sections))
    changes: dict[str, Any] = {}
    for key, section in sections.items():
        if key in top:
            changes.update(section(r, top[key]))
    return Config(source=source, **changes)


class _ConfigReader(YamlReader):
    """The reader of one config file, which also knows where its relative paths start."""

    def __init__(self, source: str, base_dir: Path) -> None:
        super().__init__(source)
        self.base_dir = base_dir

    def path(self, node: Node, key: str) -> Path:
        p = Path(self.string(node, key)).expanduser()
        return p if p.is_absolute() else self.base_dir / p


# A section's function: its node -> {Config field: value} for the fields it sets.
_Section = Callable[[_ConfigReader, Node], Mapping[str, object]]

_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")


def _listen(r: _ConfigReader, node: Node) -> dict[str, str]:
    return {"listen": _check_listen(r, node, r.string(node, "listen"))}


def _check_listen(r: YamlReader, node: Node | None, value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise r.fail(node, "listen", f"expected HOST:PORT, got '{value}'")
    return value


def _check_redis_url(r: YamlReader, node: Node | None, value: str) -> str:
    try:
        parse_redis_url(value)
    except ValueError as e:  # the message never quotes the URL: it may hold a password
        raise r.fail(node, "redis.url", str(e)) from None
    return value


def _data_dir(r: _ConfigReader, node: Node) -> dict[str, Path]:
    return {"data_dir": r.path(node, "data_dir")}


def _policy_file(r: _ConfigReader, node: Node) -> dict[str, Path]:
    return {"policy_file": r.path(node, "policy_file")}


def _log_level(r: _ConfigReader, node: Node) -> dict[str, str]:
    level = r.string(node, "log_level").upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise r.fail(node, "log_level", "expected DEBUG, INFO, WARNING or ERROR")
    return {"log_level": level}


def _principals(r: _ConfigReader, node: Node) -> dict[str, tuple[Principal, ...]]:
    out: list[Principal] = []
    seen_names: set[str] = set()
    seen_tokens: set[str] = set()
    seen_certificates: set[str] = set()
    for key, item in r.sequence(node, "principals"):
        keys = ("name", "role")
        m = r.mapping(
            item, key, (*keys, "token_sha256", "client_certificate", "owns"), required=keys
        )
        if "token_sha256" not in m and "client_certificate" not in m:
            raise r.fail(
                item,
                key,
                "needs token_sha256, client_certificate (with tls.client_ca_file) or both",
            )
        name = r.string(m["name"], f"{key}.name")
        if not _NAME.fullmatch(name):
            raise r.fail(m["name"], f"{key}.name", "expected 1-128 of A-Z a-z 0-9 . _ : @ / -")
        role_text = r.string(m["role"], f"{key}.role")
        try:
            role = Role(role_text)
        except ValueError:
            raise r.fail(
                m["role"],
                f"{key}.role",
                f"unknown role '{role_text}' (expected agent, approver, auditor or admin)",
            ) from None
        digest = ""
        if "token_sha256" in m:
            digest = r.string(m["token_sha256"], f"{key}.token_sha256").lower()
            if not _HEX64.fullmatch(digest):
                raise r.fail(
                    m["token_sha256"],
                    f"{key}.token_sha256",
                    "expected 64 hex characters (SHA-256 of the token)",
                )
            if digest in seen_tokens:
                raise r.fail(
                    m["token_sha256"],
                    f"{key}.token_sha256",
                    "the same token is used by two principals",
                )
        certificate = ""
        if "client_certificate" in m:
            certificate = r.string(m["client_certificate"], f"{key}.client_certificate")
            if not certificate.strip() or certificate != certificate.strip():
                raise r.fail(
                    m["client_certificate"],
                    f"{key}.client_certificate",
                    "expected the certificate's common name or a subject alternative name",
                )
            if certificate in seen_certificates:
                raise r.fail(
                    m["client_certificate"],
                    f"{key}.client_certificate",
                    "the same certificate name is used by two principals",
                )
            seen_certificates.add(certificate)
        if name in seen_names:
            raise r.fail(m["name"], f"{key}.name", f"duplicate principal '{name}'")
        owns: frozenset[str] = frozenset()
        if "owns" in m:
            owned = r.sequence(m["owns"], f"{key}.owns")
            owns = frozenset(r.string(agent, path) for path, agent in owned)
        seen_names.add(name)
        if digest:
            seen_tokens.add(digest)
        out.append(
            Principal(
                name=name,
                role=role,
                token_sha256=digest,
                owns=owns,
                client_certificate=certificate,
            )
        )
    return {"principals": tuple(out)}


def _redis(r: _ConfigReader, node: Node) -> dict[str, RedisSettings]:
    m = r.mapping(node, "redis", tuple(sorted(f.name for f in fields(RedisSettings))))
    redis = RedisSettings()
    if "url" in m:
        redis = replace(redis, url=_check_redis_url(r, m["url"], r.string(m["url"], "redis.url")))
    if "min_replicas_acked" in m:
        count = r.integer(m["min_replicas_acked"], "redis.min_replicas_acked", 0)
        redis = replace(redis, min_replicas_acked=count)
    if "replica_ack_timeout_seconds" in m:
        key = "redis.replica_ack_timeout_seconds"
        redis = replace(
            redis, replica_ack_timeout_seconds=r.number(m["replica_ack_timeout_seconds"], key, 0.01)
        )
    if "key_prefix" in m:
        prefix = r.string(m["key_prefix"], "redis.key_prefix")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", prefix):
            raise r.fail(m["key_prefix"], "redis.key_prefix", "expected 1-32 of A-Z a-z 0-9 _ . -")
        redis = replace(redis, key_prefix=prefix)
    if "appendfsync" in m:
        mode = r.string(m["appendfsync"], "redis.appendfsync")
        if mode not in {"always", "everysec", "no"}:
            raise r.fail(m["appendfsync"], "redis.appendfsync", "expected always, everysec or no")
        redis = replace(redis, appendfsync=mode)
    if "server_binary" in m:
        redis = replace(redis, server_binary=r.path(m["server_binary"], "redis.server_binary"))
    return {"redis": redis}


def _audit(r: _ConfigReader, node: Node) -> dict[str, AuditSettings]:
    return {"audit": read_audit_settings(r, node, r.base_dir)}


def _detection(r: _ConfigReader, node: Node) -> dict[str, DetectionSettings]:
    return {"detection": read_detection(r, node)}


def _limits(r: _ConfigReader, node: Node) -> dict[str, Limits]:
    return {"limits": Limits(**_integers(r, node, "limits", Limits))}


def _integers(r: _ConfigReader, node: Node, section: str, settings: type) -> dict[str, int]:
    """A section whose keys are the fields of the dataclass `settings`, each an integer >= 1."""
    m = r.mapping(node, section, sorted(f.name for f in fields(settings)))
    return {k: r.integer(v, join(section, k), 1) for k, v in m.items()}


def _holds(r: _ConfigReader, node: Node) -> dict[str, float]:
    m = r.mapping(node, "holds", ("escalation_seconds", "retention_seconds", "ttl_seconds"))
    changes = {}
    if "escalation_seconds" in m:
        changes["hold_escalation_seconds"] = r.number(
            m["escalation_seconds"], "holds.escalation_seconds", 0
        )
    if "ttl_seconds" in m:
        changes["hold_ttl_seconds"] = r.number(m["ttl_seconds"], "holds.ttl_seconds", 1)
    if "retention_seconds" in m:
        changes["hold_retention_seconds"] = r.number(
            m["retention_seconds"], "holds.retention_seconds", 60
        )
    return changes


def _sessions(r: _ConfigReader, node: Node) -> dict[str, float]:
    m = r.mapping(node, "sessions", ("idle_timeout_seconds",))
    if "idle_timeout_seconds" not in m:
        return {}
    timeout = r.number(m["idle_timeout_seconds"], "sessions.idle_timeout_seconds", 60)
    return {"session_idle_timeout_seconds": timeout}


def _idempotency_ttl_seconds(r: _ConfigReader, node: Node) -> dict[str, float]:
    return {"idempotency_ttl_seconds": r.number(node, "idempotency_ttl_seconds", 60)}


def _hold_or_deny(key: str) -> Callable[[_ConfigReader, Node], dict[str, Verdict]]:
    """The reader of a top-level key whose value is hold or deny."""

    def read(r: _ConfigReader, node: Node) -> dict[str, Verdict]:
        value = r.string(node, key)
        if value not in {"hold", "deny"}:
            raise r.fail(node, key, "expected hold or deny")
        return {key: Verdict[value.upper()]}

    return read


def _recommendations(r: _ConfigReader, node: Node) -> dict[str, dict[str, Effect]]:
    """`recommendations:` sets the effect of a detector's recommendation; others keep theirs."""
    effects = dict(DEFAULT_RECOMMENDATIONS)
    allowed = ", ".join(e.value for e in Effect)
    for name, value_node in r.mapping(node, "recommendations").items():
        key = join("recommendations", name)
        value = r.string(value_node, key)
        try:
            effects[name] = Effect(value)
        except ValueError:
            raise r.fail(
                value_node, key, f"unknown effect '{value}' (expected one of {allowed})"
            ) from None
    return {"recommendations": effects}


def _redaction(r: _ConfigReader, node: Node) -> dict[str, RedactionRules]:
    """`redaction:` adds key words and value patterns; the built-in rules always apply."""
    m = r.mapping(node, "redaction", ("key_words", "patterns"))

    def each(name: str, check: Callable[[str], _T]) -> tuple[_T, ...]:
        if name not in m:
            return ()
        out = []
        for key, item in r.sequence(m[name], f"redaction.{name}"):
            try:
                out.append(check(r.string(item, key)))
            except ValueError as e:  # the reason, e.g. "invalid regular expression: ..."
                raise r.fail(item, key, str(e)) from None
        return tuple(out)

    rules = RedactionRules(
        key_words=each("key_words", key_word), patterns=each("patterns", value_pattern)
    )
    return {"redaction": rules}


def _server(r: _ConfigReader, node: Node) -> dict[str, ServerSettings]:
    m = r.mapping(node, "server", sorted(f.name for f in fields(ServerSettings)))
    values: dict[str, Any] = {}
    for name, minimum in (
        ("max_connection_idle_seconds", 0.1),
        ("keepalive_time_seconds", 1),
        ("keepalive_timeout_seconds", 1),
    ):
        if name in m:
            values[name] = r.number(m[name], f"server.{name}", minimum)
    for name in ("max_concurrent_streams", "max_pending_calls"):
        if name in m:
            values[name] = r.integer(m[name], f"server.{name}", 1)
    return {"server": ServerSettings(**values)}


def _tls(r: _ConfigReader, node: Node) -> dict[str, TlsSettings]:
    m = r.mapping(node, "tls", sorted(f.name for f in fields(TlsSettings)))
    return {
        "tls": TlsSettings(**{name: r.path(m[name], f"tls.{name}") for name in m}),
    }


def _metrics(r: _ConfigReader, node: Node) -> dict[str, MetricsSettings]:
    m = r.mapping(node, "metrics", ("listen", "public", "refresh_seconds"))
    listen = None
    if "listen" in m:
        listen = _check_listen(r, m["listen"], r.string(m["listen"], "metrics.listen"))
    public = r.boolean(m["public"], "metrics.public") if "public" in m else False
    refresh = 10.0
    if "refresh_seconds" in m:
        refresh = r.number(m["refresh_seconds"], "metrics.refresh_seconds", 0.1)
    return {"metrics": MetricsSettings(listen=listen, public=public, refresh_seconds=refresh)}


def _tiles(r: _ConfigReader, node: Node) -> dict[str, TileServerSettings]:
    m = r.mapping(node, "tiles", ("listen", "public"))
    listen = None
    if "listen" in m:
        listen = _check_listen(r, m["listen"], r.string(m["listen"], "tiles.listen"))
    public = r.boolean(m["public"], "tiles.public") if "public" in m else False
    return {"tiles": TileServerSettings(listen=listen, public=public)}


def _logs(r: _ConfigReader, node: Node) -> dict[str, LogSettings]:
    return {"logs": read_log_settings(r, node, r.base_dir)}


def _alerts(r: _ConfigReader, node: Node) -> dict[str, AlertSettings]:
    return {"alerts": read_alerts(r, node)}


def config_path(overrides: Overrides, env: Mapping[str, str]) -> tuple[Path, bool]:
    """The config file to read, and whether it is the one inside the data dir.

    --config (AGENTGW_CONFIG) names it; else it is <data dir>/agentgw.yaml, the one a
    first start generates. The config found inside the data dir defines the data dir;
    an explicit config file keeps the data_dir it names."""
    explicit = overrides.config_file or _env_path(env, "AGENTGW_CONFIG")
    if explicit is not None:
        return explicit, False
    data_dir = overrides.data_dir or _env_path(env, "AGENTGW_DATA_DIR")
    return (data_dir or DEFAULT_DATA_DIR) / CONFIG_FILE_NAME, True


def read_config_file(path: Path) -> str:
    """The config file's text. A file every user may write is refused (ConfigError):
    whoever can write it can add an admin principal."""
    try:
        with path.open(encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: the config is not UTF-8 text ({e.reason})") from None
    if mode & stat.S_IWOTH:
        raise ConfigError(
            f"{path}: the config is writable by every user (mode {stat.S_IMODE(mode):04o}), "
            f"so anyone on this host could add a principal; run `chmod o-w {path}`"
        )
    return text


def read_principals(config: Config) -> tuple[Principal, ...]:
    """The principals the config file lists now (to take up a change while serving):
    the whole file must parse, and the principals must hang together with the TLS
    settings in force, as at start. ConfigError otherwise."""
    path = Path(config.source)
    text = read_config_file(path)
    principals = parse_config(text, str(path), path.parent.resolve()).principals
    if not principals:
        raise ConfigError(f"{path}: principals: at least one principal is required")
    check_tls(replace(config, principals=principals))
    return principals


def load_config(overrides: Overrides, env: Mapping[str, str]) -> tuple[Config, FirstRun | None]:
    """Builds the effective config. Returns it with the first-run config when there was
    no config file yet: not written (`FirstRun.write`, once the server listens).

    Precedence: flags > environment (AGENTGW_*) > file > defaults.
    """
    config_file, in_data_dir = config_path(overrides, env)
    data_dir = overrides.data_dir or _env_path(env, "AGENTGW_DATA_DIR")
    first_run: FirstRun | None = None
    if in_data_dir:
        if not config_file.exists():
            first_run = first_run_config(config_file)
    elif not config_file.exists():
        raise ConfigError(f"{config_file}: config file not found")
    text = first_run.text if first_run else read_config_file(config_file)
    config = parse_config(text, str(config_file), config_file.parent.resolve())
    if data_dir is None and config.data_dir == DEFAULT_DATA_DIR and in_data_dir:
        data_dir = config_file.parent
    changes: dict[str, Any] = {}
    listen = overrides.listen or env.get("AGENTGW_LISTEN")
    if listen:
        changes["listen"] = _check_listen(YamlReader("--listen"), None, listen)
    if data_dir is not None:
        changes["data_dir"] = data_dir
    redis_url = overrides.redis_url or env.get("AGENTGW_REDIS_URL")
    if redis_url:
        where = YamlReader("--redis-url" if overrides.redis_url else "AGENTGW_REDIS_URL")
        changes["redis"] = replace(config.redis, url=_check_redis_url(where, None, redis_url))
    log_format = overrides.log_format or env.get("AGENTGW_LOG_FORMAT")
    if log_format:
        if log_format not in {"json", "text"}:
            flag = "--log-format" if overrides.log_format else "AGENTGW_LOG_FORMAT"
            raise ConfigError(f"{flag}: expected json or text")
        changes["logs"] = replace(config.logs, format=log_format)
    changes["tls"] = TlsSettings(
        cert_file=overrides.tls_cert or _env_path(env, "AGENTGW_TLS_CERT") or config.tls.cert_file,
        key_file=overrides.tls_key or _env_path(env, "AGENTGW_TLS_KEY") or config.tls.key_file,
        client_ca_file=(
            overrides.tls_client_ca
            or _env_path(env, "AGENTGW_TLS_CLIENT_CA")
            or config.tls.client_ca_file
        ),
    )
    changes["insecure"] = overrides.insecure or env.get("AGENTGW_INSECURE", "") in TRUE_WORDS
    metrics_listen = overrides.metrics_listen or env.get("AGENTGW_METRICS_LISTEN")
    if metrics_listen:
        flag = "--metrics-listen" if overrides.metrics_listen else "AGENTGW_METRICS_LISTEN"
        checked = _check_listen(YamlReader(flag), None, metrics_listen)
        changes["metrics"] = replace(config.metrics, listen=checked)
    tiles_listen = overrides.tiles_listen or env.get("AGENTGW_TILES_LISTEN")
    if tiles_listen:
        flag = "--tiles-listen" if overrides.tiles_listen else "AGENTGW_TILES_LISTEN"
        checked = _check_listen(YamlReader(flag), None, tiles_listen)
        changes["tiles"] = replace(config.tiles, listen=checked)
    # Channel URLs and keys may come from the environment (they are secrets).
    channels = resolve_secrets(config.alerts.channels, env, config.source)
    changes["alerts"] = replace(config.alerts, channels=channels)
    config = replace(config, **changes)
    if not config.principals:
        raise ConfigError(f"{config.source}: principals: at least one principal is required")
    check_tls(config)
    if config.redis.url is None and config.redis.min_replicas_acked:
        # The private server has no replicas: every append would wait for nothing.
        raise ConfigError(
            f"{config.source}: redis.min_replicas_acked: the embedded Redis has no "
            "replicas; set redis.url to a Redis with replicas, or leave it at 0"
        )
    return config, first_run


TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


def check_tls(config: Config) -> None:
    """The TLS settings hang together: a certificate with its key, a client CA only
    with them, and principals named by certificates only under mTLS."""
    tls = config.tls
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ConfigError(
            "tls: the certificate and its key go together: give both --tls-cert and --tls-key "
            "(tls.cert_file and tls.key_file) or neither"
        )
    if tls.client_ca_file is not None and not tls.enabled:
        raise ConfigError(
            "tls.client_ca_file: client certificates need TLS: give --tls-cert and --tls-key too"
        )
    by_certificate = [p.name for p in config.principals if p.client_certificate]
    if by_certificate and not tls.mutual:
        raise ConfigError(
            f"{config.source}: principals: {', '.join(by_certificate)} name a "
            "client_certificate, which only mTLS can check: set tls.client_ca_file "
            "(--tls-client-ca)"
        )


def _env_path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name)
    return Path(value) if value else None


FIRST_RUN_PRINCIPALS = (
    ("demo-agent", Role.AGENT),
    ("approver", Role.APPROVER),
    ("auditor", Role.AUDITOR),
    ("admin", Role.ADMIN),
)


@dataclass(frozen=True)
class FirstRun:
    """The config of a first start: one principal per role with random tokens. The
    tokens are shown once and the file keeps only their digests, so it is written
    only once the server listens: a start that fails before (a port in use) leaves
    no file whose tokens nobody saw, and the next start makes new ones."""

    path: Path
    text: str
    tokens: dict[str, str]  # name -> token

    def make_folder(self) -> None:
        """The file's folder (the data dir), private, before anything else is put there."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    def write(self) -> None:
        """Creates the file (mode 0600); FileExistsError if another process made one
        meanwhile (this one's tokens would then be void)."""
        self.make_folder()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.text)
            f.flush()
            os.fsync(f.fileno())


def first_run_config(path: Path) -> FirstRun:
    """A config for `path` with one principal per role and random tokens."""
    tokens = {name: f"agw_{secrets.token_urlsafe(32)}" for name, _ in FIRST_RUN_PRINCIPALS}
    lines = [
        "# Generated by agentgw on first start. Tokens are stored only as SHA-256 digests;",
        "# the tokens themselves were printed once. Add or rotate tokens with",
        "# `agentgw tokens issue|rotate` (docs/configuration.md).",
        "principals:",
    ]
    for name, role in FIRST_RUN_PRINCIPALS:
        lines += [
            f"  - name: {name}",
            f"    role: {role.value}",
            f"    token_sha256: {token_digest(tokens[name])}",
        ]
    return FirstRun(path, "\n".join(lines) + "\n", tokens)
