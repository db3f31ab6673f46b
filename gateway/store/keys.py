"""Redis key names, in one place.

An agent's keys share the hash tag {a:<agent_id>} so they live in one cluster slot;
holds and the audit log have their own tags. Identifiers are validated before they
get here (no braces, spaces or control characters).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeySpace:
    prefix: str

    def action(self, agent_id: str, action_id: str) -> str:
        return f"{self.prefix}:{{a:{agent_id}}}:action:{action_id}"

    def session_pause(self, agent_id: str, session_id: str) -> str:
        return f"{self.prefix}:{{a:{agent_id}}}:session:{session_id}:pause"

    def recent_types(self, agent_id: str, session_id: str) -> str:
        return f"{self.prefix}:{{a:{agent_id}}}:session:{session_id}:types"

    def recent_fingerprints(self, agent_id: str, session_id: str) -> str:
        return f"{self.prefix}:{{a:{agent_id}}}:session:{session_id}:fingerprints"

    def hold(self, hold_id: str) -> str:
        return f"{self.prefix}:{{holds}}:hold:{hold_id}"

    @property
    def pending_holds(self) -> str:
        return f"{self.prefix}:{{holds}}:pending"

    @property
    def hold_resolved_channel(self) -> str:
        return f"{self.prefix}:holds:resolved"

    @property
    def audit_head(self) -> str:
        return f"{self.prefix}:{{audit}}:head"

    @property
    def audit_entries(self) -> str:
        return f"{self.prefix}:{{audit}}:entries"

    @property
    def audit_tree(self) -> str:
        """Hash of the Merkle tree's perfect-subtree roots: "<level>:<index>" -> hex."""
        return f"{self.prefix}:{{audit}}:tree"

    @property
    def audit_keys(self) -> str:
        """Hash of the audit key history: "<key_id>" -> JSON, "<key_id>:last_seq" -> seq."""
        return f"{self.prefix}:{{audit}}:keys"

    @property
    def audit_barrier(self) -> str:
        """A small write that WAIT for replicas can count (60 s TTL)."""
        return f"{self.prefix}:{{audit}}:barrier"

    @property
    def audit_checkpoint(self) -> str:
        """Hash of the latest published checkpoint: size, note, key_id."""
        return f"{self.prefix}:{{audit}}:checkpoint"
