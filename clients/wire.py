"""Conversions between protobuf messages and plain or audit values, for the clients
and the server's wire ring alike.

Protobuf and the pure audit format only, so that `clients/` never imports the
server's `gateway/api/`. No rules here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2

from agentgw.v1 import audit_pb2
from gateway.domain.audit.entry import AuditEntry
from gateway.domain.audit.proofs import ConsistencyProof, InclusionProof, proof_hashes
from gateway.domain.audit.query import Report


def value_to_python(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_python(value.struct_value)
    if kind == "list_value":
        return [value_to_python(v) for v in value.list_value.values]
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def struct_to_python(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain Python values (numbers become floats)."""
    return {k: value_to_python(v) for k, v in struct.fields.items()}


def python_to_struct(obj: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(obj)
    return struct


def entry_from_proto(msg: audit_pb2.AuditEntry) -> AuditEntry:
    return AuditEntry(
        seq=msg.seq,
        timestamp=msg.timestamp,
        event_type=msg.event_type,
        actor=msg.actor,
        actor_type=msg.actor_type,
        action_id=msg.action_id,
        action_type=msg.action_type,
        resource=msg.resource,
        details=struct_to_python(msg.details),
        outcome=msg.outcome,
        prev_hash=msg.prev_hash,
        key_id=msg.key_id,
        entry_hash=msg.entry_hash,
        signature=msg.signature,
    )


def report_from_proto(msg: audit_pb2.ReportResponse) -> Report:
    return Report(
        total=msg.total,
        by_actor_type=dict(msg.by_actor_type),
        by_event_type=dict(msg.by_event_type),
        by_outcome=dict(msg.by_outcome),
        by_finding_type=dict(msg.by_finding_type),
        security_event_count=msg.security_event_count,
        failure_count=msg.failure_count,
        security_events=tuple(entry_from_proto(e) for e in msg.security_events),
        failures=tuple(entry_from_proto(e) for e in msg.failures),
        first_seq=msg.first_seq,
        last_seq=msg.last_seq,
    )


def inclusion_proof_from_proto(msg: audit_pb2.InclusionProof) -> InclusionProof:
    """An inclusion proof as received; ProofFailed if a hash is not hex."""
    root, leaf = proof_hashes([msg.root_hash, msg.leaf_hash])
    return InclusionProof(msg.seq, msg.tree_size, proof_hashes(msg.hashes), root, leaf)


def consistency_proof_from_proto(msg: audit_pb2.ConsistencyProof) -> ConsistencyProof:
    """A consistency proof as received; ProofFailed if a hash is not hex."""
    old_root, new_root = proof_hashes([msg.old_root, msg.new_root])
    return ConsistencyProof(
        msg.old_size, msg.new_size, proof_hashes(msg.hashes), old_root, new_root
    )
