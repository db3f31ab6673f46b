"""The benchmark's baseline: a bare grpc.aio server for the `agentgw.v1.Gateway` service.

`Submit` answers ALLOW with the request's action_id and does nothing else: no
authentication, no validation, no Redis, no audit. It measures what gRPC and
protobuf in Python cost on this machine, so the gateway's numbers can be read as
"that, plus the decision". It also serves `grpc.health.v1` so the driver can probe
readiness the same way for both targets. Run as its own process:

    python bench/echo_server.py --listen 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from agentgw.v1 import gateway_pb2, gateway_pb2_grpc


class EchoGateway(gateway_pb2_grpc.GatewayServicer):
    async def Submit(
        self, request: gateway_pb2.ActionRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.Decision:
        return gateway_pb2.Decision(action_id=request.action_id, verdict=gateway_pb2.VERDICT_ALLOW)


async def serve(listen: str) -> None:
    server = grpc.aio.server()
    gateway_pb2_grpc.add_GatewayServicer_to_server(EchoGateway(), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(listen)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    await stopping.wait()
    await server.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    asyncio.run(serve(parser.parse_args().listen))


if __name__ == "__main__":
    main()
