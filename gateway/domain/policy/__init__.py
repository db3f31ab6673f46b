"""The policy: ordered YAML rules, loaded and validated once, evaluated on every action.

Pure domain code (no grpc, no redis): `loader` turns YAML into the immutable values of
`model`, `evaluator` decides one `ActionRequest` against them, and `reload` keeps the
policy in force current with its file. The format is documented in docs/policy.md.
"""

from gateway.domain.policy.evaluator import PolicyResult, evaluate_rules
from gateway.domain.policy.loader import default_policy, load_policy, load_policy_file
from gateway.domain.policy.model import Policy, Rule
from gateway.domain.policy.reload import PolicyReloader

__all__ = [
    "Policy",
    "PolicyReloader",
    "PolicyResult",
    "Rule",
    "default_policy",
    "evaluate_rules",
    "load_policy",
    "load_policy_file",
]
