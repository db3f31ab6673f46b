"""`agentgw serve --check`: is this setup able to start, without starting it?

Checks what a start would load, in the order it loads it, and reports each: the
config (already parsed by the caller), the policy, the audit signing key and the
rotated keys, the tile store, and the Redis the gateway would use. Nothing is written: a missing
signing key is reported as one a first start would create, never created, and the
external Redis is not contacted (a start reports an unreachable one in one line).
The transport (cleartext refusal, TLS files) is checked by the app, which owns it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from gateway.config import Config, FirstRun
from gateway.domain.audit.keys import KeyFileError, Signer
from gateway.domain.policy.loader import default_policy, load_policy_file
from gateway.errors import ConfigError, StoreUnavailable
from gateway.store.embedded import find_server_binary
from gateway.store.tile_store import DirectoryTileStore, TileStoreError


@dataclass(frozen=True)
class Check:
    what: str  # "config", "policy", "signing key", ...
    ok: bool
    detail: str


def check_setup(config: Config, first_run: FirstRun | None) -> list[Check]:
    return [
        _config(config, first_run),
        _policy(config),
        *_keys(config),
        _tile_store(config),
        _redis(config),
    ]


def _tile_store(config: Config) -> Check:
    store = DirectoryTileStore(config.tile_dir_path)
    try:
        identity = store.identity(create=False)
    except TileStoreError as e:
        return Check("tile store", False, str(e))
    if identity is None:
        return Check(
            "tile store",
            True,
            f"{store.describe()}: empty, the first seal makes it (replicas must share one)",
        )
    return Check("tile store", True, f"{store.describe()}: store {identity}")


def _config(config: Config, first_run: FirstRun | None) -> Check:
    roles = Counter(p.role.value for p in config.principals)
    listed = ", ".join(f"{n} {role}" for role, n in sorted(roles.items()))
    if first_run is not None:
        detail = f"none yet: a first start writes {first_run.path} ({listed})"
    else:
        detail = f"{config.source}: {_count(len(config.principals), 'principal')} ({listed})"
    return Check("config", True, detail)


def _policy(config: Config) -> Check:
    try:
        if config.policy_file is None:
            policy, where = default_policy(), "the built-in default policy"
        else:
            policy = load_policy_file(config.policy_file)
            where = str(config.policy_file)
    except ConfigError as e:
        return Check("policy", False, str(e))
    rules = _count(len(policy.rules), "rule")
    return Check("policy", True, f"{where}: {rules}, digest {policy.digest[:12]}")


def _keys(config: Config) -> list[Check]:
    path = config.signing_key_path
    if path.exists():
        try:
            first = Check("signing key", True, f"{path}: key {Signer.load(path).key_id}")
        except KeyFileError as e:
            first = Check("signing key", False, str(e))
    else:
        first = Check(
            "signing key",
            True,
            f"{path}: none yet, a start creates one (replicas must share one key: "
            "provision it before they start)",
        )
    rotated: list[str] = []
    problems: list[str] = []
    directory = config.key_dir_path
    for pem in sorted(directory.glob("*.pem")) if directory.is_dir() else ():
        try:
            key_id = Signer.load(pem).key_id
        except KeyFileError as e:
            problems.append(str(e))
            continue
        if pem.stem != key_id:
            problems.append(f"{pem}: holds key {key_id}, not {pem.stem}")
        rotated.append(key_id)
    if problems:
        return [first, Check("rotated keys", False, "; ".join(problems))]
    return [first, Check("rotated keys", True, f"{directory}: {_count(len(rotated), 'key')}")]


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def _redis(config: Config) -> Check:
    url = config.redis.url
    if url is None:
        try:
            binary = find_server_binary(config.redis.server_binary)
        except StoreUnavailable as e:
            return Check("redis", False, str(e))
        return Check("redis", True, f"embedded: {binary}, data in {config.data_dir / 'redis'}")
    scheme = url.split("://", 1)[0]
    return Check("redis", True, f"external ({scheme}), not contacted by --check")
