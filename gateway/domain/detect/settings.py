"""The `detection:` section of the config file, read into `DetectionSettings`.

    detection:
      loop_window: 5              # the session loop detectors (as before)
      stuck_window: 5
      stuck_max_distinct: 2
      fingerprint_chars: 50
      agent_loop_window: 10       # the same input this many times over sessions (0: off)
      task_idle_seconds: 1800
      baseline_ttl_seconds: 2592000
      rates: {actions_per_minute, session_actions_per_minute, request_bytes_per_minute,
              action_types: {<type>: <per minute>}, agents: {<agent>: {...the three}}}
      anomaly: {enabled, min_samples, z_threshold, min_std_fraction,
                priors: {<metric>: {mean, std}}}
      profile: {enabled, threshold, min_session_actions, min_agent_actions, max_types}
      suspicious: {enabled, words: [...], exact: [...], globs: [...]}

Every key is optional; errors name file:line and the key, as the rest of the config.
"""

from __future__ import annotations

from dataclasses import fields, replace
from types import MappingProxyType
from typing import Any

from yaml.nodes import Node

from gateway.domain.detect.anomaly import METRICS, AnomalySettings, Prior
from gateway.domain.detect.engine import DetectionSettings
from gateway.domain.detect.loops import LoopSettings
from gateway.domain.detect.profile import ProfileSettings
from gateway.domain.detect.rates import AgentLimits, RateSettings
from gateway.domain.detect.suspicious import SuspiciousSettings
from gateway.domain.yaml_reader import YamlReader, join

SECTIONS = ("rates", "anomaly", "profile", "suspicious")
LIMIT_KEYS = tuple(f.name for f in fields(AgentLimits))


def read_detection(r: YamlReader, node: Node) -> DetectionSettings:
    loop_keys = tuple(f.name for f in fields(LoopSettings))
    allowed = (*loop_keys, "task_idle_seconds", "baseline_ttl_seconds", *SECTIONS)
    m = r.mapping(node, "detection", allowed)
    loops = LoopSettings(
        **{
            k: r.integer(v, join("detection", k), 0 if k == "agent_loop_window" else 1)
            for k, v in m.items()
            if k in loop_keys
        }
    )
    numbers: dict[str, Any] = {
        key: r.number(m[key], join("detection", key), 1)
        for key in ("task_idle_seconds", "baseline_ttl_seconds")
        if key in m
    }
    settings = replace(DetectionSettings(loops=loops), **numbers)
    if "rates" in m:
        settings = replace(settings, rates=_rates(r, m["rates"]))
    if "anomaly" in m:
        settings = replace(settings, anomaly=_anomaly(r, m["anomaly"]))
    if "profile" in m:
        settings = replace(settings, profile=_profile(r, m["profile"]))
    if "suspicious" in m:
        settings = replace(settings, suspicious=_suspicious(r, m["suspicious"]))
    return settings


def _limits(r: YamlReader, node: Node, path: str, base: AgentLimits) -> AgentLimits:
    m = r.mapping(node, path, LIMIT_KEYS)
    return replace(base, **{k: r.integer(v, join(path, k), 0) for k, v in m.items()})


def _rates(r: YamlReader, node: Node) -> RateSettings:
    path = "detection.rates"
    m = r.mapping(node, path, (*LIMIT_KEYS, "action_types", "agents"))
    defaults = replace(
        AgentLimits(), **{k: r.integer(m[k], join(path, k), 0) for k in LIMIT_KEYS if k in m}
    )
    types: dict[str, int] = {}
    if "action_types" in m:
        for name, value in r.mapping(m["action_types"], join(path, "action_types")).items():
            types[name] = r.integer(value, join(join(path, "action_types"), name), 1)
    agents: dict[str, AgentLimits] = {}
    if "agents" in m:
        for name, value in r.mapping(m["agents"], join(path, "agents")).items():
            agents[name] = _limits(r, value, join(join(path, "agents"), name), defaults)
    return RateSettings(defaults, MappingProxyType(agents), MappingProxyType(types))


def _anomaly(r: YamlReader, node: Node) -> AnomalySettings:
    path = "detection.anomaly"
    m = r.mapping(
        node, path, ("enabled", "min_samples", "z_threshold", "min_std_fraction", "priors")
    )
    settings = AnomalySettings()
    if "enabled" in m:
        settings = replace(settings, enabled=r.boolean(m["enabled"], join(path, "enabled")))
    if "min_samples" in m:
        settings = replace(
            settings, min_samples=r.integer(m["min_samples"], join(path, "min_samples"), 1)
        )
    numbers: dict[str, Any] = {
        key: r.number(m[key], join(path, key), 0.001)
        for key in ("z_threshold", "min_std_fraction")
        if key in m
    }
    settings = replace(settings, **numbers)
    if "priors" in m:
        priors = dict(settings.priors)
        for metric, value in r.mapping(m["priors"], join(path, "priors"), METRICS).items():
            where = join(join(path, "priors"), metric)
            prior = r.mapping(value, where, ("mean", "std"), required=("mean", "std"))
            priors[metric] = Prior(
                r.number(prior["mean"], join(where, "mean"), 0),
                r.number(prior["std"], join(where, "std"), 1e-9),
            )
        settings = replace(settings, priors=MappingProxyType(priors))
    return settings


def _profile(r: YamlReader, node: Node) -> ProfileSettings:
    path = "detection.profile"
    names = ("enabled", "threshold", "min_session_actions", "min_agent_actions", "max_types")
    m = r.mapping(node, path, names)
    changes: dict[str, Any] = {}
    for key, value in m.items():
        where = join(path, key)
        if key == "enabled":
            changes[key] = r.boolean(value, where)
        elif key == "threshold":
            changes[key] = r.number(value, where, 0)
            if changes[key] > 1:
                raise r.fail(value, where, "expected a number from 0 to 1")
        else:
            changes[key] = r.integer(value, where, 1)
    return replace(ProfileSettings(), **changes)


def _suspicious(r: YamlReader, node: Node) -> SuspiciousSettings:
    path = "detection.suspicious"
    m = r.mapping(node, path, ("enabled", "words", "exact", "globs"))
    changes: dict[str, Any] = {}
    for key, value in m.items():
        where = join(path, key)
        if key == "enabled":
            changes[key] = r.boolean(value, where)
        else:
            changes[key] = tuple(
                r.string(item, item_path) for item_path, item in r.sequence(value, where)
            )
    try:
        return replace(SuspiciousSettings(), **changes)
    except ValueError as e:  # an entry that cannot match anything, a bad glob
        raise r.fail(node, path, str(e)) from None
