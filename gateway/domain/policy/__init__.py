"""The policy: ordered YAML rules, loaded and validated once, evaluated on every action.

Pure domain code (no grpc, no redis): `loader` turns YAML into the immutable values of
`model`, and `evaluator` decides one `ActionRequest` against them. Keeping the policy
in force current with its file is `gateway/services/policy_reload.py`. The format is
documented in docs/policy.md.
"""

from gateway.domain.policy.evaluator import PolicyResult, evaluate_rules
from gateway.domain.policy.loader import default_policy, load_policy, load_policy_file
from gateway.domain.policy.model import Policy, Rule

__all__ = [
    "Policy",
    "PolicyResult",
    "Rule",
    "default_policy",
    "evaluate_rules",
    "load_policy",
    "load_policy_file",
]
