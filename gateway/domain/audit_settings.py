"""The `audit:` section of the config: origin, keys, checkpoints, verification, and
`audit.tiles` (sealing the log into the tile store; docs/operations.md, "The audit
log on disk"). Read here so that config.py stays the wiring of sections."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from yaml.nodes import Node

from gateway.domain.yaml_reader import YamlReader


@dataclass(frozen=True)
class TileSettings:
    """`audit.tiles`: where the sealed log lives and how far sealing may fall behind."""

    dir: Path | None = None  # default: <data_dir>/tiles; replicas must share one
    # Sealed entries kept in Redis too (read from Redis rather than from the store).
    margin_entries: int = 0
    # Health turns NOT_SERVING for the Audit service beyond this many unsealed entries.
    not_serving_after_entries: int = 65_536
    # Appends are refused (fail closed) beyond this many unsealed entries.
    max_unsealed_entries: int = 1_000_000
    seal_interval_seconds: float = 1.0  # how often each replica looks for a full tile


@dataclass(frozen=True)
class AuditSettings:
    origin: str = "agentgw.local/audit"
    signing_key_file: Path | None = None  # default: <data_dir>/audit-signing-key.pem
    key_dir: Path | None = None  # rotated keys; default: <data_dir>/audit-keys
    checkpoint_interval_seconds: float = 30.0
    # Verify the stored log in place this often (Audit.VerifyLog); 0: only on demand.
    verify_interval_seconds: float = 0.0
    tiles: TileSettings = field(default_factory=TileSettings)


def _path(r: YamlReader, node: Node, key: str, base_dir: Path) -> Path:
    p = Path(r.string(node, key)).expanduser()
    return p if p.is_absolute() else base_dir / p


def read_audit_settings(r: YamlReader, node: Node, base_dir: Path) -> AuditSettings:
    m = r.mapping(
        node,
        "audit",
        (
            "checkpoint_interval_seconds",
            "key_dir",
            "origin",
            "signing_key_file",
            "tiles",
            "verify_interval_seconds",
        ),
    )
    audit = AuditSettings()
    if "origin" in m:
        origin = r.string(m["origin"], "audit.origin")
        if any(c.isspace() for c in origin) or "+" in origin:
            raise r.fail(m["origin"], "audit.origin", "must not contain spaces or '+'")
        audit = replace(audit, origin=origin)
    if "signing_key_file" in m:
        signing_key_file = _path(r, m["signing_key_file"], "audit.signing_key_file", base_dir)
        audit = replace(audit, signing_key_file=signing_key_file)
    if "key_dir" in m:
        audit = replace(audit, key_dir=_path(r, m["key_dir"], "audit.key_dir", base_dir))
    if "checkpoint_interval_seconds" in m:
        interval = r.number(
            m["checkpoint_interval_seconds"], "audit.checkpoint_interval_seconds", 1
        )
        audit = replace(audit, checkpoint_interval_seconds=interval)
    if "verify_interval_seconds" in m:
        every = r.number(m["verify_interval_seconds"], "audit.verify_interval_seconds", 0)
        if 0 < every < 60:
            raise r.fail(
                m["verify_interval_seconds"], "audit.verify_interval_seconds", "0 (off) or >= 60"
            )
        audit = replace(audit, verify_interval_seconds=every)
    if "tiles" in m:
        audit = replace(audit, tiles=_tiles(r, m["tiles"], base_dir))
    return audit


def _tiles(r: YamlReader, node: Node, base_dir: Path) -> TileSettings:
    keys = (
        "dir",
        "margin_entries",
        "max_unsealed_entries",
        "not_serving_after_entries",
        "seal_interval_seconds",
    )
    m = r.mapping(node, "audit.tiles", keys)
    tiles = TileSettings()
    if "dir" in m:
        tiles = replace(tiles, dir=_path(r, m["dir"], "audit.tiles.dir", base_dir))
    counts = {
        key: r.integer(m[key], f"audit.tiles.{key}", 0)
        for key in ("margin_entries", "max_unsealed_entries", "not_serving_after_entries")
        if key in m
    }
    tiles = replace(
        tiles,
        margin_entries=counts.get("margin_entries", tiles.margin_entries),
        max_unsealed_entries=counts.get("max_unsealed_entries", tiles.max_unsealed_entries),
        not_serving_after_entries=counts.get(
            "not_serving_after_entries", tiles.not_serving_after_entries
        ),
    )
    if "seal_interval_seconds" in m:
        every = r.number(m["seal_interval_seconds"], "audit.tiles.seal_interval_seconds", 0.05)
        tiles = replace(tiles, seal_interval_seconds=every)
    if tiles.max_unsealed_entries and tiles.max_unsealed_entries < 2 * 256:
        raise r.fail(
            m["max_unsealed_entries"],
            "audit.tiles.max_unsealed_entries",
            "0 (no limit) or at least 512: sealing needs 256 entries to seal",
        )
    return tiles
