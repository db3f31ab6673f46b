"""Typed configuration: YAML file, then environment, then command-line flags.

Parsed and validated once at start into frozen values; errors name the file, the
line and the key. Nothing else in the gateway reads os.environ. When no config file
exists, `first_run_config` writes one with fresh random tokens (mode 0600) and
returns the tokens so they can be shown once.
"""

from __future__ import annotations

import math
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gateway.domain.actions import Verdict
from gateway.domain.detect.loops import LoopSettings
from gateway.domain.principals import Principal, Role, token_digest
from gateway.domain.redaction import RedactionRules, key_word, value_pattern
from gateway.domain.validation import Limits
from gateway.domain.verdicts import DEFAULT_EFFECTS, Effect
from gateway.errors import ConfigError

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


@dataclass(frozen=True)
class AuditSettings:
    origin: str = "agentgw.local/audit"
    signing_key_file: Path | None = None  # default: <data_dir>/audit-signing-key.pem
    key_dir: Path | None = None  # rotated keys; default: <data_dir>/audit-keys
    checkpoint_interval_seconds: float = 30.0


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
class Config:
    listen: str = DEFAULT_LISTEN
    data_dir: Path = DEFAULT_DATA_DIR
    policy_file: Path | None = None  # None: the built-in default policy
    principals: tuple[Principal, ...] = ()
    redis: RedisSettings = field(default_factory=RedisSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    detection: LoopSettings = field(default_factory=LoopSettings)
    limits: Limits = field(default_factory=Limits)
    hold_ttl_seconds: float = 900.0
    hold_retention_seconds: float = 7 * 86400.0  # a resolved hold stays readable this long
    idempotency_ttl_seconds: float = 86400.0
    session_idle_timeout_seconds: float = 86400.0  # history and pause of an idle session
    paused_session_verdict: Verdict = Verdict.HOLD
    effects: Mapping[str, Effect] = field(default_factory=lambda: dict(DEFAULT_EFFECTS))
    log_level: str = "INFO"
    redaction: RedactionRules = field(default_factory=RedactionRules)  # added to the built-ins
    source: str = "<defaults>"

    @property
    def signing_key_path(self) -> Path:
        return self.audit.signing_key_file or self.data_dir / "audit-signing-key.pem"

    @property
    def key_dir_path(self) -> Path:
        return self.audit.key_dir or self.data_dir / "audit-keys"


@dataclass(frozen=True)
class Overrides:
    """Values from command-line flags; None means not given."""

    config_file: Path | None = None
    listen: str | None = None
    data_dir: Path | None = None
    redis_url: str | None = None


# --- YAML reading with line numbers ------------------------------------------------


class _Reader:
    """Walks a composed YAML node tree so every error can name its line."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: yaml.Node | None, key: str, why: str) -> ConfigError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        where = f"{key}: " if key else ""
        return ConfigError(f"{self.source}{line}: {where}{why}")

    def mapping(self, node: yaml.Node, key: str, allowed: set[str]) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, key, "expected a mapping")
        out: dict[str, yaml.Node] = {}
        for k, v in node.value:
            name = k.value if isinstance(k, yaml.ScalarNode) else None
            path = f"{key}.{name}" if key else str(name)
            if name not in allowed:
                raise self.fail(
                    k, path, f"unknown key (expected one of {', '.join(sorted(allowed))})"
                )
            if name in out:
                raise self.fail(k, path, "duplicate key")
            out[name] = v
        return out

    def scalar(self, node: yaml.Node, key: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, key, "expected a single value")
        try:
            return yaml.constructor.SafeConstructor().construct_object(node)
        except (yaml.YAMLError, ValueError, TypeError) as e:
            # e.g. `!!python/name:...` or `!!int abc`: still an error naming line and key.
            raise self.fail(node, key, f"invalid value ({e.__class__.__name__})") from None

    def string(self, node: yaml.Node, key: str) -> str:
        value = self.scalar(node, key)
        if not isinstance(value, str) or not value:
            raise self.fail(node, key, "expected a non-empty string")
        return value

    def number(self, node: yaml.Node, key: str, minimum: float) -> float:
        value = self.scalar(node, key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < minimum
        ):
            raise self.fail(node, key, f"expected a number >= {minimum}")
        return float(value)

    def integer(self, node: yaml.Node, key: str, minimum: int) -> int:
        value = self.scalar(node, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(node, key, f"expected an integer >= {minimum}")
        return value


_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")


def parse_config(text: str, source: str, base_dir: Path) -> Config:
    """Parses a config file's text. Relative paths resolve against base_dir."""
    r = _Reader(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{line}: invalid YAML: {e.problem}") from e
    except yaml.reader.ReaderError as e:
        # Not a MarkedYAMLError: it carries a character position instead of a mark.
        line_number = text.count("\n", 0, e.position) + 1
        raise ConfigError(f"{source}:{line_number}: invalid YAML: {e.reason}") from e
    if root is None:
        return Config(source=source)
    top = r.mapping(
        root,
        "",
        {
            "listen",
            "data_dir",
            "policy_file",
            "principals",
            "redis",
            "audit",
            "detection",
            "limits",
            "holds",
            "idempotency_ttl_seconds",
            "paused_session_verdict",
            "recommendations",
            "log_level",
            "redaction",
            "server",
            "sessions",
        },
    )
    cfg = Config(source=source)
    changes: dict[str, Any] = {}

    def path_value(node: yaml.Node, key: str) -> Path:
        p = Path(r.string(node, key)).expanduser()
        return p if p.is_absolute() else base_dir / p

    if "listen" in top:
        changes["listen"] = _check_listen(r, top["listen"], r.string(top["listen"], "listen"))
    if "data_dir" in top:
        changes["data_dir"] = path_value(top["data_dir"], "data_dir")
    if "policy_file" in top:
        changes["policy_file"] = path_value(top["policy_file"], "policy_file")
    if "log_level" in top:
        level = r.string(top["log_level"], "log_level").upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise r.fail(top["log_level"], "log_level", "expected DEBUG, INFO, WARNING or ERROR")
        changes["log_level"] = level
    if "principals" in top:
        changes["principals"] = _principals(r, top["principals"])
    if "redis" in top:
        m = r.mapping(top["redis"], "redis", {"url", "key_prefix", "appendfsync", "server_binary"})
        redis = RedisSettings()
        if "url" in m:
            redis = replace(redis, url=r.string(m["url"], "redis.url"))
        if "key_prefix" in m:
            prefix = r.string(m["key_prefix"], "redis.key_prefix")
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", prefix):
                raise r.fail(
                    m["key_prefix"], "redis.key_prefix", "expected 1-32 of A-Z a-z 0-9 _ . -"
                )
            redis = replace(redis, key_prefix=prefix)
        if "appendfsync" in m:
            mode = r.string(m["appendfsync"], "redis.appendfsync")
            if mode not in {"always", "everysec", "no"}:
                raise r.fail(
                    m["appendfsync"], "redis.appendfsync", "expected always, everysec or no"
                )
            redis = replace(redis, appendfsync=mode)
        if "server_binary" in m:
            redis = replace(
                redis, server_binary=path_value(m["server_binary"], "redis.server_binary")
            )
        changes["redis"] = redis
    if "audit" in top:
        m = r.mapping(
            top["audit"],
            "audit",
            {"origin", "signing_key_file", "key_dir", "checkpoint_interval_seconds"},
        )
        audit = AuditSettings()
        if "origin" in m:
            origin = r.string(m["origin"], "audit.origin")
            if any(c.isspace() for c in origin) or "+" in origin:
                raise r.fail(m["origin"], "audit.origin", "must not contain spaces or '+'")
            audit = replace(audit, origin=origin)
        if "signing_key_file" in m:
            audit = replace(
                audit, signing_key_file=path_value(m["signing_key_file"], "audit.signing_key_file")
            )
        if "key_dir" in m:
            audit = replace(audit, key_dir=path_value(m["key_dir"], "audit.key_dir"))
        if "checkpoint_interval_seconds" in m:
            interval = r.number(
                m["checkpoint_interval_seconds"], "audit.checkpoint_interval_seconds", 1
            )
            audit = replace(audit, checkpoint_interval_seconds=interval)
        changes["audit"] = audit
    if "detection" in top:
        names = {f.name for f in fields(LoopSettings)}
        m = r.mapping(top["detection"], "detection", names)
        changes["detection"] = LoopSettings(
            **{k: r.integer(v, f"detection.{k}", 1) for k, v in m.items()}
        )
    if "limits" in top:
        names = {f.name for f in fields(Limits)}
        m = r.mapping(top["limits"], "limits", names)
        changes["limits"] = Limits(**{k: r.integer(v, f"limits.{k}", 1) for k, v in m.items()})
    if "holds" in top:
        m = r.mapping(top["holds"], "holds", {"ttl_seconds", "retention_seconds"})
        if "ttl_seconds" in m:
            changes["hold_ttl_seconds"] = r.number(m["ttl_seconds"], "holds.ttl_seconds", 1)
        if "retention_seconds" in m:
            changes["hold_retention_seconds"] = r.number(
                m["retention_seconds"], "holds.retention_seconds", 60
            )
    if "sessions" in top:
        m = r.mapping(top["sessions"], "sessions", {"idle_timeout_seconds"})
        if "idle_timeout_seconds" in m:
            changes["session_idle_timeout_seconds"] = r.number(
                m["idle_timeout_seconds"], "sessions.idle_timeout_seconds", 60
            )
    if "idempotency_ttl_seconds" in top:
        changes["idempotency_ttl_seconds"] = r.number(
            top["idempotency_ttl_seconds"], "idempotency_ttl_seconds", 60
        )
    if "paused_session_verdict" in top:
        value = r.string(top["paused_session_verdict"], "paused_session_verdict")
        if value not in {"hold", "deny"}:
            raise r.fail(
                top["paused_session_verdict"], "paused_session_verdict", "expected hold or deny"
            )
        changes["paused_session_verdict"] = Verdict[value.upper()]
    if "recommendations" in top:
        node = top["recommendations"]
        if not isinstance(node, yaml.MappingNode):
            raise r.fail(node, "recommendations", "expected a mapping")
        effects = dict(DEFAULT_EFFECTS)
        allowed = ", ".join(e.value for e in Effect)
        for k, v in node.value:
            key = f"recommendations.{k.value}"
            value = r.string(v, key)
            try:
                effects[str(k.value)] = Effect(value)
            except ValueError:
                raise r.fail(
                    v, key, f"unknown effect '{value}' (expected one of {allowed})"
                ) from None
        changes["effects"] = effects
    if "redaction" in top:
        changes["redaction"] = _redaction(r, top["redaction"])
    if "server" in top:
        changes["server"] = _server(r, top["server"])
    return replace(cfg, **changes)


def _server(r: _Reader, node: yaml.Node) -> ServerSettings:
    m = r.mapping(node, "server", {f.name for f in fields(ServerSettings)})
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
    return ServerSettings(**values)


def _redaction(r: _Reader, node: yaml.Node) -> RedactionRules:
    """`redaction:` adds key words and value patterns; the built-in rules always apply."""
    m = r.mapping(node, "redaction", {"key_words", "patterns"})

    def each(name: str, check: Callable[[str], _T]) -> tuple[_T, ...]:
        if name not in m:
            return ()
        seq = m[name]
        if not isinstance(seq, yaml.SequenceNode):
            raise r.fail(seq, f"redaction.{name}", "expected a list")
        out = []
        for i, item in enumerate(seq.value):
            key = f"redaction.{name}[{i}]"
            try:
                out.append(check(r.string(item, key)))
            except ValueError as e:  # the reason, e.g. "invalid regular expression: ..."
                raise r.fail(item, key, str(e)) from None
        return tuple(out)

    return RedactionRules(
        key_words=each("key_words", key_word), patterns=each("patterns", value_pattern)
    )


def _check_listen(r: _Reader, node: yaml.Node | None, value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise r.fail(node, "listen", f"expected HOST:PORT, got '{value}'")
    return value


def _principals(r: _Reader, node: yaml.Node) -> tuple[Principal, ...]:
    if not isinstance(node, yaml.SequenceNode):
        raise r.fail(node, "principals", "expected a list")
    out: list[Principal] = []
    seen_names: set[str] = set()
    seen_tokens: set[str] = set()
    for i, item in enumerate(node.value):
        key = f"principals[{i}]"
        m = r.mapping(item, key, {"name", "role", "token_sha256"})
        for required in ("name", "role", "token_sha256"):
            if required not in m:
                raise r.fail(item, f"{key}.{required}", "is required")
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
        digest = r.string(m["token_sha256"], f"{key}.token_sha256").lower()
        if not _HEX64.fullmatch(digest):
            raise r.fail(
                m["token_sha256"],
                f"{key}.token_sha256",
                "expected 64 hex characters (SHA-256 of the token)",
            )
        if name in seen_names:
            raise r.fail(m["name"], f"{key}.name", f"duplicate principal '{name}'")
        if digest in seen_tokens:
            raise r.fail(
                m["token_sha256"], f"{key}.token_sha256", "the same token is used by two principals"
            )
        seen_names.add(name)
        seen_tokens.add(digest)
        out.append(Principal(name=name, role=role, token_sha256=digest))
    return tuple(out)


def load_config(overrides: Overrides, env: Mapping[str, str]) -> tuple[Config, dict[str, str]]:
    """Builds the effective config. Returns it with any first-run tokens (name -> token).

    Precedence: flags > environment (AGENTGW_*) > file > defaults.
    """
    config_file = overrides.config_file or _env_path(env, "AGENTGW_CONFIG")
    data_dir = overrides.data_dir or _env_path(env, "AGENTGW_DATA_DIR")
    tokens: dict[str, str] = {}
    # The config found inside the data dir (generated on first start) defines it;
    # an explicit config file (flag or environment) keeps the data_dir it names.
    in_data_dir = config_file is None
    if config_file is None:
        config_file = (data_dir or DEFAULT_DATA_DIR) / CONFIG_FILE_NAME
        if not config_file.exists():
            tokens = first_run_config(config_file)
    elif not config_file.exists():
        raise ConfigError(f"{config_file}: config file not found")
    text = config_file.read_text(encoding="utf-8")
    config = parse_config(text, str(config_file), config_file.parent.resolve())
    if data_dir is None and config.data_dir == DEFAULT_DATA_DIR and in_data_dir:
        data_dir = config_file.parent
    changes: dict[str, Any] = {}
    listen = overrides.listen or env.get("AGENTGW_LISTEN")
    if listen:
        changes["listen"] = _check_listen(_Reader("--listen"), None, listen)
    if data_dir is not None:
        changes["data_dir"] = data_dir
    redis_url = overrides.redis_url or env.get("AGENTGW_REDIS_URL")
    if redis_url:
        changes["redis"] = replace(config.redis, url=redis_url)
    config = replace(config, **changes)
    if not config.principals:
        raise ConfigError(f"{config.source}: principals: at least one principal is required")
    return config, tokens


def _env_path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name)
    return Path(value) if value else None


FIRST_RUN_PRINCIPALS = (
    ("demo-agent", Role.AGENT),
    ("approver", Role.APPROVER),
    ("auditor", Role.AUDITOR),
    ("admin", Role.ADMIN),
)


def first_run_config(path: Path) -> dict[str, str]:
    """Writes a config with one principal per role and random tokens (file mode 0600)."""
    tokens = {name: f"agw_{secrets.token_urlsafe(32)}" for name, _ in FIRST_RUN_PRINCIPALS}
    lines = [
        "# Generated by agentgw on first start. Tokens are stored only as SHA-256 digests;",
        "# the tokens themselves were printed once. See docs/configuration.md.",
        "principals:",
    ]
    for name, role in FIRST_RUN_PRINCIPALS:
        lines += [
            f"  - name: {name}",
            f"    role: {role.value}",
            f"    token_sha256: {token_digest(tokens[name])}",
        ]
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return tokens
