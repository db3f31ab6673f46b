"""Clients for agentgw: a small library for agents and the `agentgw` CLI.

Nothing here imports the server, Redis or its wiring (except `agentgw serve`, which
runs the server and imports it when it starts); the offline verifier uses only the
pure audit-format package `gateway.domain.audit`.
"""
