"""`agentgw serve`, `agentgw keys rotate` and `agentgw agents quarantine|release`: the
operator's and admin's commands.

`serve` runs the gateway in this process, so it alone imports the server, and only
when it runs (tests/unit/test_architecture.py checks that no other client code does).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from agentgw.v1 import approvals_pb2, audit_pb2
from clients.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Commands,
    add_client_options,
    add_output_options,
    approvals_stub,
    audit_stub,
    is_json,
    message_json,
    report_refusals,
)


def add_serve_command(sub: Commands) -> None:
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, help="YAML config file (env AGENTGW_CONFIG)")
    serve.add_argument("--listen", help="HOST:PORT to listen on (env AGENTGW_LISTEN)")
    serve.add_argument("--data-dir", type=Path, help="state directory (env AGENTGW_DATA_DIR)")
    serve.add_argument(
        "--redis-url", help="use this Redis instead of the embedded one (env AGENTGW_REDIS_URL)"
    )
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="log lines on stderr as JSON (the default) or text for people (config logs.format)",
    )
    serve.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http(s)://HOST:PORT/metrics (env AGENTGW_METRICS_LISTEN)",
    )
    serve.add_argument(
        "--tiles-listen",
        metavar="HOST:PORT",
        help="serve the audit log as tlog-tiles at http(s)://HOST:PORT/ (read-only; "
        "env AGENTGW_TILES_LISTEN, config tiles:)",
    )
    tls = serve.add_argument_group("TLS (config tls:)")
    tls.add_argument(
        "--tls-cert", type=Path, help="the server's PEM certificate chain (env AGENTGW_TLS_CERT)"
    )
    tls.add_argument("--tls-key", type=Path, help="its PEM private key (env AGENTGW_TLS_KEY)")
    tls.add_argument(
        "--tls-client-ca",
        type=Path,
        help="require client certificates signed by this CA: mTLS (env AGENTGW_TLS_CLIENT_CA)",
    )
    tls.add_argument(
        "--insecure",
        action="store_true",
        help="serve cleartext on a non-loopback address (env AGENTGW_INSECURE=1)",
    )
    serve.add_argument(
        "--check",
        action="store_true",
        help="check the config, policy, keys and TLS files, then exit without serving",
    )
    serve.set_defaults(run=run_serve)


def add_key_commands(sub: Commands) -> None:
    signing = sub.add_parser("keys", help="the audit signing key (admins)").add_subparsers(
        metavar="ACTION"
    )
    rotate = add_client_options(
        signing.add_parser("rotate", help="sign the log with a new key from the next entry on")
    )
    rotate.add_argument("--reason", required=True, help="recorded in the rotation entry")
    rotate.add_argument(
        "--key-id",
        default="",
        help="rotate to a key provisioned as <audit.key_dir>/<KEY_ID>.pem (default: a new one)",
    )
    add_output_options(rotate)
    rotate.set_defaults(run=run_keys_rotate)
    # `build_parser` adds the admin's client commands through this one call.


def add_agent_commands(sub: Commands) -> None:
    agents = sub.add_parser("agents", help="quarantine agents (admins)").add_subparsers(
        metavar="ACTION"
    )
    quarantine = add_client_options(
        agents.add_parser(
            "quarantine",
            help="hold (or deny, as configured) every action of an agent until it is released",
        )
    )
    quarantine.add_argument("agent")
    quarantine.add_argument("--reason", required=True, help="recorded in the audit log")
    add_output_options(quarantine)
    quarantine.set_defaults(run=run_agent_quarantine)
    release = add_client_options(agents.add_parser("release", help="end an agent's quarantine"))
    release.add_argument("agent")
    release.add_argument("--reason", required=True, help="recorded in the audit log")
    add_output_options(release)
    release.set_defaults(run=run_agent_release)


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Runs the server on uvloop where it is installed (a faster event loop), else on
    asyncio's own loop; AGENTGW_EVENT_LOOP=asyncio picks asyncio's."""
    import asyncio

    if os.environ.get("AGENTGW_EVENT_LOOP", "") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def run_serve(args: argparse.Namespace) -> int:
    from gateway.config import Overrides, load_config
    from gateway.errors import GatewayError
    from gateway.serve import check, serve

    overrides = Overrides(
        config_file=args.config,
        listen=args.listen,
        data_dir=args.data_dir,
        redis_url=args.redis_url,
        log_format=args.log_format,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        insecure=args.insecure,
        metrics_listen=args.metrics_listen,
        tiles_listen=args.tiles_listen,
    )
    try:
        config, first_run = load_config(overrides, os.environ)
        if args.check:
            checks = check(config, first_run)
            for c in checks:
                print(f"{'ok' if c.ok else 'FAILED':<6} {c.what}: {c.detail}")
            failed = [c for c in checks if not c.ok]
            if failed:
                print(f"agentgw: {failed[0].what}: {failed[0].detail}", file=sys.stderr)
            return EXIT_FAILED if failed else EXIT_OK
        run_event_loop(serve(config, first_run))
    except GatewayError as e:
        print(f"agentgw: {e}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def run_keys_rotate(args: argparse.Namespace) -> int:
    stub, md = audit_stub(args)
    rotation = stub.RotateKey(
        audit_pb2.RotateKeyRequest(reason=args.reason, key_id=args.key_id),
        metadata=md,
        timeout=args.timeout,
    )
    if is_json(args):
        print(message_json(rotation))
        return EXIT_OK
    old, new = rotation.old_key, rotation.new_key
    print(f"rotated at seq {rotation.entry.seq}: key {old.key_id} signed", end=" ")
    print(f"{old.first_seq}..{old.last_seq}")
    print(f"key {new.key_id} signs from seq {new.first_seq} on")
    print(f"note verifier key: {new.note_verifier_key}")
    print(
        "auditors: `agentgw audit verify` learns the new key from the chain; save the key "
        "set again for prove-inclusion/prove-consistency (agentgw audit keys --out keys.json)"
    )
    return EXIT_OK


@report_refusals
def run_agent_quarantine(args: argparse.Namespace) -> int:
    stub, md = approvals_stub(args)
    record = stub.QuarantineAgent(
        approvals_pb2.QuarantineAgentRequest(agent_id=args.agent, reason=args.reason),
        metadata=md,
        timeout=args.timeout,
    )
    if is_json(args):
        print(message_json(record))
        return EXIT_OK
    print(f"quarantined {record.agent_id} (audit seq {record.audit_seq})")
    return EXIT_OK


@report_refusals
def run_agent_release(args: argparse.Namespace) -> int:
    stub, md = approvals_stub(args)
    response = stub.ReleaseAgent(
        approvals_pb2.ReleaseAgentRequest(agent_id=args.agent, reason=args.reason),
        metadata=md,
        timeout=args.timeout,
    )
    if is_json(args):
        document = {
            "agent_id": args.agent,
            "was_quarantined": response.was_quarantined,
            "audit_seq": response.audit_seq,
        }
        print(json.dumps(document))
    elif response.was_quarantined:
        print(f"released {args.agent} (audit seq {response.audit_seq})")
    else:
        print(f"{args.agent} was not quarantined")
    return EXIT_OK
