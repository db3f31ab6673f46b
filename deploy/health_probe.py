"""The gateway's health probe, run inside its container: docker-compose.yml's
healthcheck and the Kubernetes startup, liveness and readiness probes. It speaks TLS,
which kubelet's own gRPC probe cannot.

    python /app/deploy/health_probe.py --ca ca.crt --server-name gateway --ready

It calls grpc.health.v1.Health/Check (no token needed) on 127.0.0.1:50051 for the
whole server (`--service` names one, e.g. agentgw.v1.Gateway). With --ready it
passes only on SERVING, i.e. the gateway reaches Redis: take the replica out of
the load balancer otherwise. Without --ready any answer passes, NOT_SERVING too: the
process is alive and answers, and restarting it would not bring Redis back (a
liveness probe that failed on NOT_SERVING would restart every replica during a
Redis outage). Exit 0 when it passes, 1 with the reason on stderr when not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.transport import Tls, TlsFileError, open_channel

DEFAULT_ADDRESS = "127.0.0.1:50051"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help="HOST:PORT of the gateway")
    parser.add_argument("--ca", type=Path, required=True, help="the CA of the gateway's cert")
    parser.add_argument(
        "--server-name", default="", help="a name in the gateway's certificate (default: host)"
    )
    parser.add_argument("--cert", type=Path, help="client certificate, when the gateway has mTLS")
    parser.add_argument("--key", type=Path, help="its private key")
    parser.add_argument("--service", default="", help="the health service name (default: all)")
    parser.add_argument("--ready", action="store_true", help="pass only on SERVING")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tls = Tls(ca_file=args.ca, cert_file=args.cert, key_file=args.key, server_name=args.server_name)
    try:
        with open_channel(args.address, tls) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
    except TlsFileError as e:
        print(f"health probe: {e}", file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(f"health probe: {args.address}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    if args.ready and answer.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"health probe: {args.address}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
