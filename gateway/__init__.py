"""agentgw: a gRPC policy-enforcement gateway for AI agents.

Kept import-free on purpose: the offline verifier in `clients/` imports
`gateway.domain.audit` and must not pull in the server, Redis or gRPC.
"""
