"""Redis key names, in one place, and the hash slot each belongs to.

Two kinds of slot (docs/operations.md has the full table):

- `{a:<agent_id>}`: one agent's detection state (recent history, rate windows,
  learned baselines, type profiles, outcomes) and its action claims. Sharded by
  agent: every agent's keys live in one cluster slot, and different agents spread
  over the cluster.
- `{audit}`: the audit log and every record whose change must be atomic with an
  audit entry: decided actions, holds and session pauses. One slot, so that each
  commit is one script call on one node, also on Redis Cluster. Alerts live here
  too: an acknowledgement is committed with its audit entry, and a firing checks its
  cooldown, records the alert and queues its deliveries in one script call.
- `{logs}`: the structured log streams, one per category.

Identifiers are validated before they get here (no braces, spaces, control
characters or '|'), so '|' separates two identifiers in one key unambiguously.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeySpace:
    prefix: str

    # --- {a:<agent>}: sharded by agent -------------------------------------------

    def claim(self, agent_id: str, action_id: str) -> str:
        """A call's claim on an action_id while it decides, then a marker that the
        action was decided (the decision itself is `decided`)."""
        return f"{self.prefix}:{{a:{agent_id}}}:action:{action_id}"

    def recent_types(self, agent_id: str, session_id: str) -> str:
        return f"{self.prefix}:{{a:{agent_id}}}:session:{session_id}:types"

    def recent_fingerprints(self, agent_id: str, session_id: str) -> str:
        return f"{self.prefix}:{{a:{agent_id}}}:session:{session_id}:fingerprints"

    def session_window(self, agent_id: str, session_id: str) -> str:
        return f"{self.prefix}:{{a:{agent_id}}}:session:{session_id}:rate"

    def session_mix(self, agent_id: str, session_id: str) -> str:
        return f"{self.prefix}:{{a:{agent_id}}}:session:{session_id}:mix"

    def agent_marks(self, agent_id: str) -> str:
        """The agent's recent actions over all sessions (session + fingerprint)."""
        return f"{self.prefix}:{{a:{agent_id}}}:recent"

    def agent_window(self, agent_id: str) -> str:
        return f"{self.prefix}:{{a:{agent_id}}}:rate"

    def type_window(self, agent_id: str, action_type: str) -> str:
        return f"{self.prefix}:{{a:{agent_id}}}:rate:type:{action_type}"

    def agent_stats(self, agent_id: str) -> str:
        """Learned baselines, the minute being counted, the window's byte total."""
        return f"{self.prefix}:{{a:{agent_id}}}:stats"

    def agent_profile(self, agent_id: str) -> str:
        return f"{self.prefix}:{{a:{agent_id}}}:profile"

    def open_tasks(self, agent_id: str) -> str:
        return f"{self.prefix}:{{a:{agent_id}}}:tasks"

    def task_calls(self, agent_id: str) -> str:
        return f"{self.prefix}:{{a:{agent_id}}}:task_calls"

    def outcomes(self, agent_id: str) -> str:
        return f"{self.prefix}:{{a:{agent_id}}}:outcomes"

    # --- {audit}: committed with the log -----------------------------------------

    def decided(self, agent_id: str, action_id: str) -> str:
        """The decision of an action (request digest + decision), written once."""
        return f"{self.prefix}:{{audit}}:decided:{agent_id}|{action_id}"

    def outcome(self, agent_id: str, action_id: str) -> str:
        """That an outcome was reported for the action (its first and only report)."""
        return f"{self.prefix}:{{audit}}:outcome:{agent_id}|{action_id}"

    def session_pause(self, agent_id: str, session_id: str) -> str:
        return f"{self.prefix}:{{audit}}:pause:{agent_id}|{session_id}"

    @property
    def paused_sessions(self) -> str:
        """Index of paused sessions ("<agent>|<session>" by pause time), for listing."""
        return f"{self.prefix}:{{audit}}:paused"

    def quarantine(self, agent_id: str) -> str:
        return f"{self.prefix}:{{audit}}:quarantine:{agent_id}"

    def escalated(self, hold_id: str) -> str:
        """That a hold pending past its escalation time was reported (once)."""
        return f"{self.prefix}:{{audit}}:escalated:{hold_id}"

    def hold(self, hold_id: str) -> str:
        return f"{self.prefix}:{{audit}}:hold:{hold_id}"

    @property
    def pending_holds(self) -> str:
        return f"{self.prefix}:{{audit}}:holds:pending"

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
    def audit_sealed(self) -> str:
        """Hash of the sealed log: size (entries in the tile store), trimmed (entries
        gone from the list's front), store_id (the tile store sealed into)."""
        return f"{self.prefix}:{{audit}}:sealed"

    @property
    def audit_seal_lease(self) -> str:
        """The replica sealing now (a lease with a TTL)."""
        return f"{self.prefix}:{{audit}}:seal-lease"

    @property
    def audit_barrier(self) -> str:
        """A small write that WAIT for replicas can count (60 s TTL)."""
        return f"{self.prefix}:{{audit}}:barrier"

    @property
    def audit_checkpoint(self) -> str:
        """Hash of the latest published checkpoint: size, note, key_id."""
        return f"{self.prefix}:{{audit}}:checkpoint"

    # --- {audit}: alerts ----------------------------------------------------------

    def alert(self, alert_id: str) -> str:
        """Hash of one alert: json, status (active | acknowledged); TTL: retention."""
        return f"{self.prefix}:{{audit}}:alert:{alert_id}"

    @property
    def active_alerts(self) -> str:
        """Sorted set of unacknowledged alert ids by fired-at ms (bounded)."""
        return f"{self.prefix}:{{audit}}:alerts:active"

    @property
    def recent_alerts(self) -> str:
        """Sorted set of every alert id by fired-at ms, for listing (bounded)."""
        return f"{self.prefix}:{{audit}}:alerts:recent"

    def alert_cooldown(self, rule: str, subject: str) -> str:
        """Set while a rule is cooling down for a subject (TTL: the cooldown)."""
        return f"{self.prefix}:{{audit}}:alerts:cooldown:{rule}|{subject}"

    @property
    def alert_feed(self) -> str:
        """Stream of fired and acknowledged alerts, for `Alerts.Watch` (bounded)."""
        return f"{self.prefix}:{{audit}}:alerts:feed"

    @property
    def alert_deliveries(self) -> str:
        """Sorted set of delivery ids by the ms they are due (or their lease ends)."""
        return f"{self.prefix}:{{audit}}:alerts:deliveries"

    def alert_delivery(self, delivery_id: str) -> str:
        """Hash of one pending delivery: channel, payload, attempts (TTL: retention)."""
        return f"{self.prefix}:{{audit}}:alerts:delivery:{delivery_id}"

    @property
    def dead_deliveries(self) -> str:
        """Stream of deliveries that failed their last attempt (bounded)."""
        return f"{self.prefix}:{{audit}}:alerts:dead"

    # --- {logs}: structured logs --------------------------------------------------

    def log_stream(self, category: str) -> str:
        """Stream of one category's log records, trimmed to its retention and size."""
        return f"{self.prefix}:{{logs}}:{category}"
