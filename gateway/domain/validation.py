"""Validation of an incoming action: sizes, required fields, identifiers, depth.

Pure: raises `InvalidRequest(field, why)` naming the field and the rule broken, so
that nothing about a bad request is counted or recorded.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.domain.actions import ActionRequest
from gateway.errors import InvalidRequest, preview

# Identifiers end up inside Redis key names and audit entries: no braces (cluster
# hash tags), no spaces, no control characters.
IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]*")
ACTION_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")
LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 256 * 1024
    max_id_chars: int = 128
    max_action_type_chars: int = 128
    max_resource_chars: int = 2048
    max_reasoning_chars: int = 8192
    max_parameters_bytes: int = 64 * 1024
    max_parameter_depth: int = 32
    max_labels: int = 32
    max_label_value_chars: int = 256


def require_identifier(field: str, value: str, limit: int) -> None:
    if not value:
        raise InvalidRequest(field, "is required")
    _check_length(field, value, limit)
    if not IDENTIFIER.fullmatch(value):
        raise InvalidRequest(
            field, "must start with a letter or digit and contain only A-Z a-z 0-9 . _ : @ / -"
        )


def validate_request(request: ActionRequest, limits: Limits) -> None:
    require_identifier("action_id", request.action_id, limits.max_id_chars)
    require_identifier("agent_id", request.agent_id, limits.max_id_chars)
    require_identifier("session_id", request.session_id, limits.max_id_chars)
    if not request.action_type:
        raise InvalidRequest("action_type", "is required")
    _check_length("action_type", request.action_type, limits.max_action_type_chars)
    if not ACTION_TYPE.fullmatch(request.action_type):
        raise InvalidRequest(
            "action_type",
            "must start with a letter or digit and contain only A-Z a-z 0-9 . _ : / -",
        )
    _check_text("resource", request.resource, limits.max_resource_chars)
    _check_length("reasoning", request.reasoning, limits.max_reasoning_chars)
    if len(request.labels) > limits.max_labels:
        raise InvalidRequest(
            "labels", f"{len(request.labels)} labels exceed the limit of {limits.max_labels}"
        )
    for key, value in request.labels.items():
        # An overlong key is named by its bounded preview, never echoed whole.
        name = (
            f"labels[{key!r}]" if len(key) <= limits.max_id_chars else f"labels[{preview(key)!r}]"
        )
        if not LABEL_KEY.fullmatch(key) or len(key) > limits.max_id_chars:
            raise InvalidRequest(name, "is not a valid label key")
        _check_text(name, value, limits.max_label_value_chars)
    size = _check_value("parameters", request.parameters, 1, limits)
    if size > limits.max_parameters_bytes:
        raise InvalidRequest(
            "parameters", f"size {size} bytes exceeds the limit of {limits.max_parameters_bytes}"
        )


def _check_length(field: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise InvalidRequest(field, f"length {len(value)} exceeds the limit of {limit}")


def _check_text(field: str, value: str, limit: int) -> None:
    _check_length(field, value, limit)
    if CONTROL.search(value):
        raise InvalidRequest(field, "must not contain control characters")


def _check_value(path: str, value: Any, depth: int, limits: Limits) -> int:
    """Checks depth and finiteness; returns an upper bound of the JSON size in bytes."""
    if depth > limits.max_parameter_depth:
        raise InvalidRequest(
            path, f"depth {depth} exceeds the limit of {limits.max_parameter_depth}"
        )
    if isinstance(value, Mapping):
        total = 2
        for key, item in value.items():
            total += _json_size(str(key)) + 1
            total += _check_value(f"{path}.{key}", item, depth + 1, limits)
            if total > limits.max_parameters_bytes:
                break
        return total
    if isinstance(value, list):
        total = 2
        for index, item in enumerate(value):
            total += 1 + _check_value(f"{path}[{index}]", item, depth + 1, limits)
            if total > limits.max_parameters_bytes:
                break
        return total
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(path, "must be a finite number")
    if isinstance(value, str):
        return _json_size(value)
    return 24


def _json_size(text: str) -> int:
    """Bytes of `text` as a JSON string, quotes and escapes included."""
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8", "surrogatepass"))
