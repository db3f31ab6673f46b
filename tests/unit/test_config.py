"""Configuration: YAML + env + flags, every error names file, line and key; first run."""

from __future__ import annotations

import math
import stat
import textwrap
from pathlib import Path

import pytest

from gateway.config import (
    CONFIG_FILE_NAME,
    DEFAULT_DATA_DIR,
    DEFAULT_LISTEN,
    Config,
    Overrides,
    first_run_config,
    load_config,
    parse_config,
)
from gateway.domain.actions import Verdict
from gateway.domain.detect.anomaly import Prior
from gateway.domain.detect.loops import LoopSettings
from gateway.domain.detect.profile import ProfileSettings
from gateway.domain.detect.rates import AgentLimits
from gateway.domain.principals import Role, token_digest
from gateway.domain.redaction import REDACTED, RedactionRules, Redactor
from gateway.domain.validation import Limits
from gateway.domain.verdicts import DEFAULT_RECOMMENDATIONS, Effect
from gateway.errors import ConfigError

SOURCE = "/etc/agentgw/agentgw.yaml"
BASE = Path("/etc/agentgw")
DIGEST_A = token_digest("token-a")
DIGEST_B = token_digest("token-b")

PRINCIPALS = f"""\
principals:
  - name: agent-1
    role: agent
    token_sha256: {DIGEST_A}
  - name: ana
    role: approver
    token_sha256: {DIGEST_B}
"""


def text(body: str) -> str:
    return textwrap.dedent(body).lstrip("\n")


def parse(body: str) -> Config:
    return parse_config(text(body), SOURCE, BASE)


def parse_error(body: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(body)
    return str(caught.value)


def write_config(directory: Path, body: str, name: str = CONFIG_FILE_NAME) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text(body), encoding="utf-8")
    return path


# -- parsing: a complete file ---------------------------------------------------------------


def test_empty_file_gives_the_defaults() -> None:
    config = parse_config("", SOURCE, BASE)
    assert config == Config(source=SOURCE)
    assert config.listen == DEFAULT_LISTEN
    assert config.data_dir == DEFAULT_DATA_DIR
    assert config.principals == ()
    assert config.hold_ttl_seconds == 900.0
    assert config.paused_session_verdict is Verdict.HOLD
    assert config.recommendations == DEFAULT_RECOMMENDATIONS


def test_every_key_is_read() -> None:
    config = parse(
        f"""
        listen: 0.0.0.0:6000
        data_dir: data
        policy_file: /srv/policy.yaml
        log_level: debug
        {textwrap.indent(PRINCIPALS, " " * 8).strip()}
        redis:
          url: redis://db:6379/0
          key_prefix: gw-1
          appendfsync: always
          server_binary: bin/valkey-server
        audit:
          origin: example.com/audit
          signing_key_file: keys/audit.pem
        detection:
          loop_window: 7
          stuck_window: 6
          stuck_max_distinct: 3
          fingerprint_chars: 40
          agent_loop_window: 12
          task_idle_seconds: 600
          baseline_ttl_seconds: 86400
          rates:
            actions_per_minute: 100
            session_actions_per_minute: 50
            request_bytes_per_minute: 1000000
            action_types:
              send_email: 5
            agents:
              agent-1:
                actions_per_minute: 1000
          anomaly:
            enabled: true
            min_samples: 20
            z_threshold: 4
            min_std_fraction: 0.2
            priors:
              tokens_per_action:
                mean: 2000
                std: 400
          profile:
            enabled: false
            threshold: 0.6
            min_session_actions: 5
            min_agent_actions: 40
            max_types: 32
          suspicious:
            enabled: true
            words: [wire]
            exact: [rm]
            globs: ["*.exec"]
        limits:
          max_parameter_depth: 8
          max_labels: 4
        holds:
          ttl_seconds: 60
        idempotency_ttl_seconds: 3600
        paused_session_verdict: deny
        recommendations:
          investigate: deny
          custom_check: hold_and_pause
        """
    )
    assert config.listen == "0.0.0.0:6000"
    assert config.data_dir == BASE / "data"
    assert config.policy_file == Path("/srv/policy.yaml")
    assert config.log_level == "DEBUG"
    assert [(p.name, p.role, p.token_sha256) for p in config.principals] == [
        ("agent-1", Role.AGENT, DIGEST_A),
        ("ana", Role.APPROVER, DIGEST_B),
    ]
    assert config.redis.url == "redis://db:6379/0"
    assert config.redis.key_prefix == "gw-1"
    assert config.redis.appendfsync == "always"
    assert config.redis.server_binary == BASE / "bin/valkey-server"
    assert config.audit.origin == "example.com/audit"
    assert config.audit.signing_key_file == BASE / "keys/audit.pem"
    assert config.signing_key_path == BASE / "keys/audit.pem"
    detection = config.detection
    assert detection.loops == LoopSettings(7, 6, 3, 40, 12)
    assert (detection.task_idle_seconds, detection.baseline_ttl_seconds) == (600.0, 86400.0)
    rates = detection.rates
    assert rates.defaults == AgentLimits(100, 50, 1_000_000)
    assert rates.action_types == {"send_email": 5}
    # An agent's limits start from the defaults and override what they name.
    assert rates.agents == {"agent-1": AgentLimits(1000, 50, 1_000_000)}
    anomaly = detection.anomaly
    assert (anomaly.enabled, anomaly.min_samples, anomaly.z_threshold) == (True, 20, 4.0)
    assert anomaly.min_std_fraction == 0.2
    assert anomaly.priors["tokens_per_action"] == Prior(2000, 400)
    assert anomaly.priors["actions_per_minute"] == Prior(5, 2)  # defaults kept
    assert detection.profile == ProfileSettings(False, 0.6, 5, 40, 32)
    suspicious = detection.suspicious
    assert (suspicious.words, suspicious.exact, suspicious.globs) == (
        ("wire",),
        ("rm",),
        ("*.exec",),
    )
    assert config.limits == Limits(max_parameter_depth=8, max_labels=4)
    assert config.hold_ttl_seconds == 60.0
    assert config.idempotency_ttl_seconds == 3600.0
    assert config.paused_session_verdict is Verdict.DENY
    assert config.recommendations["investigate"] is Effect.DENY
    assert config.recommendations["custom_check"] is Effect.HOLD_AND_PAUSE
    assert config.recommendations["require_approval"] is Effect.HOLD  # defaults kept
    assert config.source == SOURCE


def test_signing_key_defaults_to_the_data_dir() -> None:
    config = parse("data_dir: /var/lib/agentgw\n")
    assert config.signing_key_path == Path("/var/lib/agentgw/audit-signing-key.pem")


def test_relative_paths_resolve_against_the_config_directory() -> None:
    config = parse(
        """
        data_dir: ./state
        policy_file: ../policies/main.yaml
        """
    )
    assert config.data_dir == BASE / "state"
    assert config.policy_file == BASE / "../policies/main.yaml"


def test_absolute_paths_are_kept() -> None:
    assert parse("data_dir: /var/lib/agentgw\n").data_dir == Path("/var/lib/agentgw")


def test_home_relative_paths_expand() -> None:
    config = parse("data_dir: ~/agentgw\n")
    assert config.data_dir == Path("~/agentgw").expanduser()
    assert config.data_dir.is_absolute()


def test_token_sha256_is_normalised_to_lower_case() -> None:
    config = parse(
        f"""
        principals:
          - name: a
            role: admin
            token_sha256: {DIGEST_A.upper()}
        """
    )
    assert config.principals[0].token_sha256 == DIGEST_A


def test_token_digest_is_hex_sha256() -> None:
    assert token_digest("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


# -- parsing: errors name file, line and key ---------------------------------------------------


def test_unknown_top_level_key_names_its_line() -> None:
    error = parse_error(
        """
        listen: 127.0.0.1:1
        lissten: 127.0.0.1:2
        """
    )
    assert error.startswith(f"{SOURCE}:2: lissten: unknown key (expected one of ")
    assert "listen" in error


def test_unknown_nested_key_names_its_line_and_dotted_path() -> None:
    error = parse_error(
        """
        redis:
          url: redis://x
          apendfsync: always
        """
    )
    assert error.startswith(f"{SOURCE}:3: redis.apendfsync: unknown key")


def test_duplicate_key_names_its_line() -> None:
    error = parse_error(
        """
        listen: 127.0.0.1:1
        log_level: info
        listen: 127.0.0.1:2
        """
    )
    assert error == f"{SOURCE}:3: listen: duplicate key"


def test_bad_role_names_the_line_and_principal() -> None:
    error = parse_error(
        f"""
        principals:
          - name: a
            role: agent
            token_sha256: {DIGEST_A}
          - name: b
            role: superuser
            token_sha256: {DIGEST_B}
        """
    )
    assert error == (
        f"{SOURCE}:6: principals[1].role: unknown role 'superuser' "
        "(expected agent, approver, auditor or admin)"
    )


@pytest.mark.parametrize(
    "digest", ["abc", DIGEST_A[:-1], DIGEST_A + "0", "g" * 64, f"'{DIGEST_A} '"]
)
def test_bad_token_sha256_names_the_line(digest: str) -> None:
    error = parse_error(
        f"""
        principals:
          - name: a
            role: agent
            token_sha256: {digest}
        """
    )
    assert error == (
        f"{SOURCE}:4: principals[0].token_sha256: expected 64 hex characters (SHA-256 of the token)"
    )


def test_duplicate_principal_names_the_second_one() -> None:
    error = parse_error(
        f"""
        principals:
          - name: a
            role: agent
            token_sha256: {DIGEST_A}
          - name: a
            role: approver
            token_sha256: {DIGEST_B}
        """
    )
    assert error == f"{SOURCE}:5: principals[1].name: duplicate principal 'a'"


def test_duplicate_token_names_the_second_one() -> None:
    error = parse_error(
        f"""
        principals:
          - name: a
            role: agent
            token_sha256: {DIGEST_A}
          - name: b
            role: approver
            token_sha256: {DIGEST_A.upper()}
        """
    )
    assert error == (
        f"{SOURCE}:7: principals[1].token_sha256: the same token is used by two principals"
    )


def test_missing_principal_field_names_the_entry() -> None:
    error = parse_error(
        """
        principals:
          - name: a
            role: agent
        """
    )
    assert error == (
        f"{SOURCE}:2: principals[0]: needs token_sha256, client_certificate "
        "(with tls.client_ca_file) or both"
    )


@pytest.mark.parametrize("name", ["-a", "a b", "a{b}", "x" * 129])
def test_bad_principal_name_names_the_line(name: str) -> None:
    error = parse_error(
        f"""
        principals:
          - role: agent
            name: "{name}"
            token_sha256: {DIGEST_A}
        """
    )
    assert error.startswith(f"{SOURCE}:3: principals[0].name: expected 1-128 of")


def test_principals_must_be_a_list() -> None:
    error = parse_error(
        """
        log_level: INFO
        principals:
          name: a
        """
    )
    assert error == f"{SOURCE}:3: principals: expected a list, got a mapping"


@pytest.mark.parametrize(
    "listen", ["localhost", "localhost:", ":50051", "localhost:http", "localhost:65536", "1:-1"]
)
def test_bad_listen_names_the_line(listen: str) -> None:
    error = parse_error(
        f"""
        log_level: INFO
        listen: "{listen}"
        """
    )
    assert error == f"{SOURCE}:2: listen: expected HOST:PORT, got '{listen}'"


@pytest.mark.parametrize("listen", ["localhost:0", "[::1]:50051", "0.0.0.0:65535", "unix:x:1"])
def test_good_listen_is_kept(listen: str) -> None:
    assert parse(f'listen: "{listen}"\n').listen == listen


def test_bad_appendfsync_names_the_line() -> None:
    error = parse_error(
        """
        redis:
          key_prefix: agw
          appendfsync: sometimes
        """
    )
    assert error == f"{SOURCE}:3: redis.appendfsync: expected always, everysec or no"


def test_bad_key_prefix_names_the_line() -> None:
    error = parse_error(
        """
        redis:
          key_prefix: "a{b}"
        """
    )
    assert error == f"{SOURCE}:2: redis.key_prefix: expected 1-32 of A-Z a-z 0-9 _ . -"


def test_unknown_recommendation_effect_names_the_line() -> None:
    error = parse_error(
        """
        recommendations:
          investigate: allow
          pause_and_review: explode
        """
    )
    assert error == (
        f"{SOURCE}:3: recommendations.pause_and_review: unknown effect 'explode' "
        "(expected one of allow, hold, deny, hold_and_pause)"
    )


def test_recommendations_must_be_a_mapping() -> None:
    error = parse_error(
        """
        recommendations:
          - hold
        """
    )
    assert error == f"{SOURCE}:2: recommendations: expected a mapping, got a list"


def test_a_recommendation_named_twice_is_refused() -> None:
    error = parse_error(
        """
        recommendations:
          investigate: deny
          investigate: hold
        """
    )
    assert error == f"{SOURCE}:3: recommendations.investigate: duplicate key"


def test_invalid_yaml_names_the_line() -> None:
    error = parse_error(
        """
        listen: 127.0.0.1:1
        redis:
          url: "unterminated
        log_level: INFO
        """
    )
    assert error.startswith(f"{SOURCE}:")
    assert "invalid YAML" in error
    line = int(error.split(":")[1])
    assert line in (3, 4, 5)


def test_invalid_yaml_with_bad_indentation_names_the_line() -> None:
    error = parse_error(
        """
        listen: 127.0.0.1:1
        redis:
          url: redis://x
         key_prefix: y
        """
    )
    assert error.startswith(f"{SOURCE}:4: invalid YAML: ")


def test_two_documents_are_refused_as_invalid_yaml() -> None:
    error = parse_error(
        """
        listen: 127.0.0.1:1
        ---
        listen: 127.0.0.1:2
        """
    )
    assert error.startswith(f"{SOURCE}:2: invalid YAML: ")


def test_control_character_in_the_file_is_a_config_error_naming_the_line() -> None:
    error = parse_error("listen: 127.0.0.1:1\nlog_level: IN\x07FO\n")
    assert error.startswith(f"{SOURCE}:2: invalid YAML: ")


@pytest.mark.parametrize(
    "value", ["!!python/name:os.system", "!!int abc", "!!float abc", "!!binary '%%%'"]
)
def test_unconstructible_value_is_a_config_error_naming_the_line_and_key(value: str) -> None:
    error = parse_error(
        f"""
        log_level: INFO
        listen: {value}
        """
    )
    assert error.startswith(f"{SOURCE}:2: listen: ")


def test_top_level_must_be_a_mapping() -> None:
    assert parse_error("- a\n- b\n") == f"{SOURCE}:1: expected a mapping, got a list"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("log_level: LOUD\n", "1: log_level: expected DEBUG, INFO, WARNING or ERROR"),
        ("paused_session_verdict: allow\n", "1: paused_session_verdict: expected hold or deny"),
        ("listen: [a, b]\n", "1: listen: expected a string, got a list"),
        ("listen: ''\n", "1: listen: expected a non-empty string"),
        ("data_dir: 12\n", "1: data_dir: expected a string, got an integer"),
        ("holds:\n  ttl_seconds: 0.5\n", "2: holds.ttl_seconds: expected a number >= 1"),
        ("holds:\n  ttl_seconds: yes\n", "2: holds.ttl_seconds: expected a number >= 1"),
        ("holds:\n  ttl_seconds: .nan\n", "2: holds.ttl_seconds: expected a number >= 1"),
        ("holds:\n  ttl_seconds: .inf\n", "2: holds.ttl_seconds: expected a number >= 1"),
        ("idempotency_ttl_seconds: 59\n", "1: idempotency_ttl_seconds: expected a number >= 60"),
        ("detection:\n  loop_window: 0\n", "2: detection.loop_window: expected an integer >= 1"),
        ("detection:\n  loop_window: 2.5\n", "2: detection.loop_window: expected an integer >= 1"),
        ("limits:\n  max_labels: true\n", "2: limits.max_labels: expected an integer >= 1"),
        (
            "detection:\n  rates:\n    actions_per_minute: -1\n",
            "3: detection.rates.actions_per_minute: expected an integer >= 0",
        ),
        (
            "detection:\n  rates:\n    agents:\n      a:\n        burst: 3\n",
            "5: detection.rates.agents.a.burst: unknown key (expected one of actions_per_minute, "
            "session_actions_per_minute, request_bytes_per_minute)",
        ),
        (
            "detection:\n  rates:\n    action_types:\n      send_email: 0\n",
            "4: detection.rates.action_types.send_email: expected an integer >= 1",
        ),
        (
            "detection:\n  anomaly:\n    priors:\n      latency: {mean: 1, std: 1}\n",
            "4: detection.anomaly.priors.latency: unknown key (expected one of "
            "actions_per_minute, error_rate, tokens_per_action, calls_per_task)",
        ),
        (
            "detection:\n  anomaly:\n    priors:\n      error_rate: {mean: 0.1}\n",
            "4: detection.anomaly.priors.error_rate: missing required key 'std'",
        ),
        (
            "detection:\n  profile:\n    threshold: 1.5\n",
            "3: detection.profile.threshold: expected a number from 0 to 1",
        ),
        (
            "detection:\n  suspicious:\n    words: delete\n",
            "3: detection.suspicious.words: expected a list, got a string",
        ),
        (
            "detection:\n  suspicious:\n    globs: ['[a']\n",
            "3: detection.suspicious: globs[0]: invalid glob '[a': unclosed '[' at position 0",
        ),
        ("audit:\n  origin: a b\n", "2: audit.origin: must not contain spaces or '+'"),
        ("audit:\n  origin: a+b\n", "2: audit.origin: must not contain spaces or '+'"),
        ("holds: 5\n", "1: holds: expected a mapping, got an integer"),
    ],
)
def test_bad_value_names_line_and_key(body: str, message: str) -> None:
    assert parse_error(body) == f"{SOURCE}:{message}"


def test_record_lifetimes_are_configurable() -> None:
    config = parse("holds:\n  retention_seconds: 3600\nsessions:\n  idle_timeout_seconds: 600\n")
    assert config.hold_retention_seconds == 3600
    assert config.session_idle_timeout_seconds == 600
    assert Config().hold_retention_seconds == 7 * 86400
    assert Config().session_idle_timeout_seconds == 86400


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "holds:\n  retention_seconds: 59\n",
            "2: holds.retention_seconds: expected a number >= 60",
        ),
        (
            "sessions:\n  idle_timeout_seconds: .inf\n",
            "2: sessions.idle_timeout_seconds: expected a number >= 60",
        ),
        ("sessions:\n  idle: 60\n", "2: sessions.idle: unknown key"),
    ],
)
def test_bad_record_lifetimes_name_line_and_key(body: str, message: str) -> None:
    assert message in parse_error(body)


def test_holds_ttl_accepts_a_finite_number() -> None:
    assert parse("holds:\n  ttl_seconds: 1.5\n").hold_ttl_seconds == 1.5
    assert math.isfinite(parse("holds:\n  ttl_seconds: 1.0e+9\n").hold_ttl_seconds)


# -- load_config: precedence -----------------------------------------------------------------


def full_principals_file(directory: Path, extra: str = "") -> Path:
    return write_config(directory, PRINCIPALS + text(extra))


def test_file_values_beat_defaults(tmp_path: Path) -> None:
    path = full_principals_file(tmp_path / "etc", "listen: 10.0.0.1:7000\n")
    config, first_run = load_config(Overrides(config_file=path), {})
    assert first_run is None
    assert config.listen == "10.0.0.1:7000"
    assert config.source == str(path)
    assert len(config.principals) == 2


def test_env_beats_file(tmp_path: Path) -> None:
    path = full_principals_file(
        tmp_path / "etc",
        """
        listen: 10.0.0.1:7000
        data_dir: /from/file
        redis:
          url: redis://file:6379
          key_prefix: filep
        """,
    )
    env = {
        "AGENTGW_CONFIG": str(path),
        "AGENTGW_LISTEN": "10.0.0.2:7001",
        "AGENTGW_DATA_DIR": str(tmp_path / "env-data"),
        "AGENTGW_REDIS_URL": "redis://env:6379",
    }
    config, _ = load_config(Overrides(), env)
    assert config.listen == "10.0.0.2:7001"
    assert config.data_dir == tmp_path / "env-data"
    assert config.redis.url == "redis://env:6379"
    assert config.redis.key_prefix == "filep"  # the rest of the redis section stays


def test_flags_beat_env(tmp_path: Path) -> None:
    env_path = full_principals_file(tmp_path / "env", "listen: 10.0.0.1:7000\n")
    flag_path = full_principals_file(tmp_path / "flag", "listen: 10.0.0.9:7009\n")
    env = {
        "AGENTGW_CONFIG": str(env_path),
        "AGENTGW_LISTEN": "10.0.0.2:7001",
        "AGENTGW_DATA_DIR": str(tmp_path / "env-data"),
        "AGENTGW_REDIS_URL": "redis://env:6379",
    }
    flags = Overrides(
        config_file=flag_path,
        listen="10.0.0.3:7002",
        data_dir=tmp_path / "flag-data",
        redis_url="redis://flag:6379",
    )
    config, _ = load_config(flags, env)
    assert config.source == str(flag_path)
    assert config.listen == "10.0.0.3:7002"
    assert config.data_dir == tmp_path / "flag-data"
    assert config.redis.url == "redis://flag:6379"


def test_flag_config_file_beats_env_config_file(tmp_path: Path) -> None:
    env_path = full_principals_file(tmp_path / "env", "log_level: ERROR\n")
    flag_path = full_principals_file(tmp_path / "flag", "log_level: DEBUG\n")
    config, _ = load_config(Overrides(config_file=flag_path), {"AGENTGW_CONFIG": str(env_path)})
    assert config.log_level == "DEBUG"


def test_empty_env_values_are_ignored(tmp_path: Path) -> None:
    path = full_principals_file(tmp_path / "etc", "listen: 10.0.0.1:7000\n")
    env = {"AGENTGW_LISTEN": "", "AGENTGW_REDIS_URL": "", "AGENTGW_DATA_DIR": ""}
    config, _ = load_config(Overrides(config_file=path), env)
    assert config.listen == "10.0.0.1:7000"
    assert config.redis.url is None


def test_bad_listen_from_env_is_refused(tmp_path: Path) -> None:
    path = full_principals_file(tmp_path / "etc")
    with pytest.raises(ConfigError, match="expected HOST:PORT, got 'nonsense'"):
        load_config(Overrides(config_file=path), {"AGENTGW_LISTEN": "nonsense"})


def test_bad_listen_flag_is_refused(tmp_path: Path) -> None:
    path = full_principals_file(tmp_path / "etc")
    with pytest.raises(ConfigError, match=r"^--listen: listen: expected HOST:PORT"):
        load_config(Overrides(config_file=path, listen="x"), {})


def test_data_dir_from_the_file_resolves_against_the_file(tmp_path: Path) -> None:
    path = full_principals_file(tmp_path / "etc", "data_dir: state\n")
    config, _ = load_config(Overrides(config_file=path), {})
    assert config.data_dir == (tmp_path / "etc").resolve() / "state"


def test_config_in_the_data_dir_is_found_there(tmp_path: Path) -> None:
    data = tmp_path / "data"
    full_principals_file(data, "log_level: WARNING\n")
    config, first_run = load_config(Overrides(), {"AGENTGW_DATA_DIR": str(data)})
    assert first_run is None
    assert config.log_level == "WARNING"
    assert config.source == str(data / CONFIG_FILE_NAME)
    assert config.data_dir == data


def test_missing_explicit_config_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(Overrides(config_file=missing), {})
    assert str(caught.value) == f"{missing}: config file not found"
    assert not missing.exists()  # never a first-run file at an explicit path


def test_missing_env_config_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Overrides(), {"AGENTGW_CONFIG": str(missing)})


@pytest.mark.parametrize("mode", [0o666, 0o602, 0o777])
def test_a_config_every_user_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = full_principals_file(tmp_path / "etc", "")
    path.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        load_config(Overrides(config_file=path), {})
    assert str(caught.value) == (
        f"{path}: the config is writable by every user (mode {mode:04o}), so anyone on this "
        f"host could add a principal; run `chmod o-w {path}`"
    )
    path.chmod(0o664)  # writable by its group only: taken
    assert load_config(Overrides(config_file=path), {})[0].principals


def test_file_errors_name_the_real_path_and_line(tmp_path: Path) -> None:
    path = write_config(tmp_path / "etc", "log_level: INFO\nbogus: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(Overrides(config_file=path), {})
    assert str(caught.value).startswith(f"{path}:2: bogus: unknown key")


def test_config_without_principals_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path / "etc", "listen: 127.0.0.1:1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(Overrides(config_file=path), {})
    assert str(caught.value) == f"{path}: principals: at least one principal is required"


def test_config_with_an_empty_principals_list_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path / "etc", "principals: []\n")
    with pytest.raises(ConfigError, match="at least one principal is required"):
        load_config(Overrides(config_file=path), {})


def test_config_file_from_env_or_flag_gives_the_same_data_dir(tmp_path: Path) -> None:
    path = full_principals_file(tmp_path / "etc")
    from_flag, _ = load_config(Overrides(config_file=path), {})
    from_env, _ = load_config(Overrides(), {"AGENTGW_CONFIG": str(path)})
    assert from_flag.data_dir == from_env.data_dir


# -- first run ------------------------------------------------------------------------------


def test_first_run_makes_a_config_with_one_principal_per_role_and_writes_nothing(
    tmp_path: Path,
) -> None:
    data = tmp_path / "fresh" / "data"
    config, first_run = load_config(Overrides(data_dir=data), {})
    path = data / CONFIG_FILE_NAME
    assert first_run is not None and first_run.path == path
    assert not path.exists()  # written by `serve` once the server listens
    assert not data.exists()
    assert config.source == str(path)
    assert config.data_dir == data
    tokens = first_run.tokens
    assert set(tokens) == {"demo-agent", "approver", "auditor", "admin"}
    assert {p.role for p in config.principals} == set(Role)
    assert len(config.principals) == 4
    for principal in config.principals:
        assert principal.token_sha256 == token_digest(tokens[principal.name])
    assert len(set(tokens.values())) == 4
    for token in tokens.values():
        assert token not in first_run.text  # only digests are stored


def test_a_written_first_run_config_is_private_and_loads_as_it_was_made(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first, first_run = load_config(Overrides(data_dir=data), {})
    assert first_run is not None
    first_run.write()
    path = data / CONFIG_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    second, again = load_config(Overrides(data_dir=data), {})
    assert again is None  # the tokens are shown once
    assert second.principals == first.principals


def test_first_run_uses_the_env_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "env-data"
    config, first_run = load_config(Overrides(), {"AGENTGW_DATA_DIR": str(data)})
    assert first_run is not None and len(first_run.tokens) == 4
    assert first_run.path == data / CONFIG_FILE_NAME == Path(config.source)


def test_first_run_config_returns_fresh_random_tokens(tmp_path: Path) -> None:
    one = first_run_config(tmp_path / "a" / CONFIG_FILE_NAME).tokens
    two = first_run_config(tmp_path / "b" / CONFIG_FILE_NAME).tokens
    assert set(one.values()).isdisjoint(two.values())
    assert all(token.startswith("agw_") and len(token) > 40 for token in one.values())


def test_first_run_config_never_overwrites_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / CONFIG_FILE_NAME
    path.write_text("principals: []\n", encoding="utf-8")
    with pytest.raises(FileExistsError):
        first_run_config(path).write()
    assert path.read_text(encoding="utf-8") == "principals: []\n"


def test_first_run_config_creates_a_private_directory(tmp_path: Path) -> None:
    path = tmp_path / "new" / CONFIG_FILE_NAME
    first_run_config(path).make_folder()
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0


def test_first_run_file_parses_on_its_own(tmp_path: Path) -> None:
    path = tmp_path / CONFIG_FILE_NAME
    first_run = first_run_config(path)
    first_run.write()
    config = parse_config(path.read_text(encoding="utf-8"), str(path), tmp_path)
    assert {p.name: p.token_sha256 for p in config.principals} == {
        name: token_digest(token) for name, token in first_run.tokens.items()
    }


# -- redaction -----------------------------------------------------------------------------


def test_redaction_defaults_to_the_built_in_rules() -> None:
    assert parse("log_level: INFO\n").redaction == RedactionRules()


def test_redaction_section_adds_key_words_and_patterns() -> None:
    config = parse(
        r"""
        redaction:
          key_words: [ssn, Account-Number]
          patterns:
            - 'ACME-[0-9a-f]{8}'
            - 'employee (?P<secret>\d{6})'
        """
    )
    assert config.redaction.key_words == ("ssn", "account number")
    assert [p.pattern for p in config.redaction.patterns] == [
        "ACME-[0-9a-f]{8}",
        r"employee (?P<secret>\d{6})",
    ]
    redactor = Redactor(config.redaction)
    assert redactor.value({"accountNumber": "1", "password": "p", "to": "ana"}) == {
        "accountNumber": REDACTED,
        "password": REDACTED,  # the built-ins still apply
        "to": "ana",
    }
    out = redactor.text("ACME-0badc0de for employee 123456")
    assert out == f"{REDACTED} for employee {REDACTED}"


def test_a_bad_redaction_pattern_names_its_line_and_key() -> None:
    error = parse_error(
        """
        log_level: INFO
        redaction:
          patterns:
            - 'ok-[0-9]+'
            - 'ACME-[0-9'
        """
    )
    assert error.startswith(f"{SOURCE}:5: redaction.patterns[1]: invalid regular expression: ")


def test_a_redaction_pattern_matching_nothing_at_all_is_refused() -> None:
    error = parse_error(
        """
        redaction:
          patterns: ['.*']
        """
    )
    assert error == f"{SOURCE}:2: redaction.patterns[0]: the pattern matches the empty string"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("redaction:\n  key_words: ssn\n", ":2: redaction.key_words: expected a list"),
        ("redaction:\n  key_words: ['--']\n", ":2: redaction.key_words[0]: expected a word"),
        ("redaction:\n  key_words: ['']\n", ":2: redaction.key_words[0]: expected a non-empty"),
        ("redaction:\n  disable_built_ins: true\n", ":2: redaction.disable_built_ins: unknown key"),
        ("redaction: [x]\n", ":1: redaction: expected a mapping"),
    ],
)
def test_bad_redaction_settings_name_their_line_and_key(body: str, expected: str) -> None:
    assert parse_error(body).startswith(SOURCE + expected)


def test_owners_quarantine_verdict_and_escalation_are_read() -> None:
    config = parse(
        "principals:\n"
        "  - name: ana\n    role: approver\n    token_sha256: " + "ab" * 32 + "\n"
        "    owns: [billing-agent, ops-agent]\n"
        "quarantine_verdict: deny\n"
        "holds:\n  escalation_seconds: 120\n"
    )
    [ana] = config.principals
    assert ana.owns == frozenset({"billing-agent", "ops-agent"})
    assert config.quarantine_verdict is Verdict.DENY
    assert config.hold_escalation_seconds == 120
    assert (Config().quarantine_verdict, Config().hold_escalation_seconds) == (Verdict.HOLD, 600)
    assert parse_error("quarantine_verdict: allow\n") == (
        f"{SOURCE}:1: quarantine_verdict: expected hold or deny"
    )


# -- TLS ---------------------------------------------------------------------------------


def test_the_tls_section_resolves_its_files_against_the_config() -> None:
    config = parse(
        """
        tls:
          cert_file: tls/server.crt
          key_file: /abs/server.key
          client_ca_file: tls/ca.pem
        """
    )
    assert config.tls.cert_file == BASE / "tls/server.crt"
    assert config.tls.key_file == Path("/abs/server.key")
    assert config.tls.client_ca_file == BASE / "tls/ca.pem"
    assert config.tls.enabled and config.tls.mutual
    assert "tls.key_fil" in parse_error("tls:\n  key_fil: x\n")


def test_tls_flags_beat_env_which_beats_the_file(tmp_path: Path) -> None:
    path = full_principals_file(
        tmp_path / "etc", "tls:\n  cert_file: file.crt\n  key_file: file.key\n"
    )
    env = {"AGENTGW_TLS_CERT": "/env.crt", "AGENTGW_TLS_KEY": "/env.key", "AGENTGW_INSECURE": "1"}
    config, _ = load_config(Overrides(config_file=path, tls_cert=Path("/flag.crt")), env)
    assert (config.tls.cert_file, config.tls.key_file) == (Path("/flag.crt"), Path("/env.key"))
    assert config.insecure
    config, _ = load_config(Overrides(config_file=path), {})
    assert config.tls.cert_file == (tmp_path / "etc").resolve() / "file.crt"
    assert not config.insecure


@pytest.mark.parametrize(
    ("tls", "error"),
    [
        ("tls:\n  cert_file: a.crt\n", "give both --tls-cert and --tls-key"),
        ("tls:\n  client_ca_file: ca.pem\n", "client certificates need TLS"),
    ],
)
def test_incomplete_tls_settings_are_refused(tmp_path: Path, tls: str, error: str) -> None:
    path = full_principals_file(tmp_path / "etc", tls)
    with pytest.raises(ConfigError, match=error):
        load_config(Overrides(config_file=path), {})


def test_a_principal_may_be_known_by_its_client_certificate(tmp_path: Path) -> None:
    body = f"""
        tls:
          cert_file: s.crt
          key_file: s.key
          client_ca_file: ca.pem
        principals:
          - name: robot
            role: agent
            client_certificate: robot.agents.example
          - name: ana
            role: approver
            token_sha256: {DIGEST_B}
            client_certificate: ana
        """
    path = write_config(tmp_path / "etc", text(body))
    config, _ = load_config(Overrides(config_file=path), {})
    robot, ana = config.principals
    assert (robot.token_sha256, robot.client_certificate) == ("", "robot.agents.example")
    assert (ana.token_sha256, ana.client_certificate) == (DIGEST_B, "ana")
    # Without mTLS nothing could check the certificate: refused at start.
    plain = write_config(tmp_path / "plain", text(body).replace("  client_ca_file: ca.pem\n", ""))
    with pytest.raises(ConfigError, match="robot, ana name a client_certificate"):
        load_config(Overrides(config_file=plain), {})


def test_two_principals_cannot_share_a_certificate_name() -> None:
    error = parse_error(
        """
        principals:
          - name: a
            role: agent
            client_certificate: same
          - name: b
            role: agent
            client_certificate: same
        """
    )
    assert error.endswith(
        "principals[1].client_certificate: the same certificate name is used by two principals"
    )
