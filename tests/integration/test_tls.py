"""TLS and mTLS on the real gRPC server, with certificates the tests make: a TLS
client is served and a plaintext one is not; under mTLS a client without a
certificate, or with one from another CA, is refused; a certificate mapped to a
principal stands for its token (and must agree with a token sent beside it);
renewed certificate files are served from the next handshake without a restart;
cleartext is refused on a non-loopback address unless asked for."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from agentgw.v1 import gateway_pb2, gateway_pb2_grpc
from clients.agent import AgentClient, bearer
from clients.transport import Tls, open_channel
from gateway.app import App
from gateway.config import Config, TlsSettings
from gateway.domain.principals import Principal, Role
from gateway.errors import ConfigError
from tests.certificates import Authority, Issued
from tests.harness import RunningGateway, test_principals, token_for, wait_for

CERT_AGENT = "agent-cert"  # a principal known by its client certificate only


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority(tmp_path / "pki")


@pytest.fixture
def server_cert(ca: Authority) -> Issued:
    return ca.issue("gateway", server=True)


def submit(channel: grpc.Channel, agent: str, metadata: tuple[tuple[str, str], ...]) -> str:
    stub = gateway_pb2_grpc.GatewayStub(channel)
    request = gateway_pb2.ActionRequest(
        action_id=f"tls-{agent}-{id(channel)}", agent_id=agent, session_id="s", action_type="search"
    )
    decision = stub.Submit(request, metadata=metadata, timeout=10)
    return gateway_pb2.Verdict.Name(decision.verdict)


def served_serial(port: int, ca: Authority, client: Issued | None = None) -> int:
    """The serial number of the certificate the server presents to a new connection."""
    context = ssl.create_default_context(cafile=str(ca.ca_file))
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(client.cert_file, client.key_file)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_a_tls_client_is_served_and_a_plaintext_one_is_not(
    make_gateway: Callable[..., RunningGateway], ca: Authority, server_cert: Issued
) -> None:
    gw = make_gateway(tls=TlsSettings(server_cert.cert_file, server_cert.key_file))
    with open_channel(gw.target, Tls(ca_file=ca.ca_file)) as channel:
        assert submit(channel, "agent-1", bearer(token_for("agent-1"))) == "VERDICT_ALLOW"
    with grpc.insecure_channel(gw.target) as plain, pytest.raises(grpc.RpcError) as refused:
        submit(plain, "agent-1", bearer(token_for("agent-1")))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # A client that does not trust the issuing CA does not get through either.
    stranger = Authority(ca.directory / "other", "another CA")
    with (
        open_channel(gw.target, Tls(ca_file=stranger.ca_file)) as doubting,
        pytest.raises(grpc.RpcError) as untrusted,
    ):
        submit(doubting, "agent-1", bearer(token_for("agent-1")))
    assert untrusted.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture
def mutual(
    make_gateway: Callable[..., RunningGateway], ca: Authority, server_cert: Issued
) -> RunningGateway:
    principals = (
        *test_principals(),
        Principal(CERT_AGENT, Role.AGENT, "", client_certificate=CERT_AGENT),
    )
    tls = TlsSettings(server_cert.cert_file, server_cert.key_file, ca.ca_file)
    return make_gateway(tls=tls, principals=principals)


def test_mtls_refuses_clients_without_a_certificate_of_its_ca(
    mutual: RunningGateway, ca: Authority
) -> None:
    token = bearer(token_for("agent-1"))
    with (
        open_channel(mutual.target, Tls(ca_file=ca.ca_file)) as no_cert,
        pytest.raises(grpc.RpcError) as refused,
    ):
        submit(no_cert, "agent-1", token)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    rogue_ca = Authority(ca.directory / "rogue", "rogue CA")
    rogue = rogue_ca.issue(CERT_AGENT)
    with (
        open_channel(mutual.target, Tls(ca.ca_file, rogue.cert_file, rogue.key_file)) as forged,
        pytest.raises(grpc.RpcError) as refused_again,
    ):
        submit(forged, CERT_AGENT, ())
    assert refused_again.value.code() == grpc.StatusCode.UNAVAILABLE
    # With a certificate of the CA and a token, the token's principal is served.
    plain = ca.issue("some-client")
    with open_channel(mutual.target, Tls(ca.ca_file, plain.cert_file, plain.key_file)) as ok:
        assert submit(ok, "agent-1", token) == "VERDICT_ALLOW"


def test_a_client_certificate_stands_for_the_principal_it_names(
    mutual: RunningGateway, ca: Authority
) -> None:
    issued = ca.issue(CERT_AGENT)
    tls = Tls(ca.ca_file, issued.cert_file, issued.key_file)
    with open_channel(mutual.target, tls) as channel:
        assert submit(channel, CERT_AGENT, ()) == "VERDICT_ALLOW"
        # Agents act only as themselves: the certificate's principal, not another agent.
        with pytest.raises(grpc.RpcError) as other_agent:
            submit(channel, "agent-1", ())
        assert other_agent.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # A token beside it must name the same principal.
        with pytest.raises(grpc.RpcError) as disagreeing:
            submit(channel, "agent-1", bearer(token_for("agent-1")))
        assert disagreeing.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "different principals" in (disagreeing.value.details() or "")
    # A subject alternative name maps as the common name does; the SDK takes it too.
    by_san = ca.issue("unrelated-cn", dns=(CERT_AGENT,))
    with AgentClient(
        mutual.target, "", CERT_AGENT, tls=Tls(ca.ca_file, by_san.cert_file, by_san.key_file)
    ) as agent:
        assert agent.submit("search", session_id="san").verdict == gateway_pb2.VERDICT_ALLOW


def test_renewed_certificates_are_served_from_the_next_handshake(
    make_gateway: Callable[..., RunningGateway], ca: Authority, server_cert: Issued
) -> None:
    gw = make_gateway(tls=TlsSettings(server_cert.cert_file, server_cert.key_file))
    port = int(gw.target.rpartition(":")[2])
    with open_channel(gw.target, Tls(ca_file=ca.ca_file)) as kept:
        assert submit(kept, "agent-1", bearer(token_for("agent-1"))) == "VERDICT_ALLOW"
        assert served_serial(port, ca) == server_cert.serial
        # Renewal writes new files in place (as certbot or cert-manager do).
        renewed = ca.issue("gateway", server=True)
        assert renewed.cert_file == server_cert.cert_file and renewed.serial != server_cert.serial
        wait_for(lambda: served_serial(port, ca) == renewed.serial, what="the renewed cert")
        # The connection opened before the renewal still works.
        assert submit(kept, "agent-1", bearer(token_for("agent-1"))) == "VERDICT_ALLOW"
    # A broken file (half written) keeps the certificate in use.
    server_cert.cert_file.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
    assert served_serial(port, ca) == renewed.serial
    assert gw.app.certificates is not None
    reloads = gw.app.certificates.reloads
    # SIGHUP (App.reload) reads the files again even when they look unchanged.
    again = ca.issue("gateway", server=True)
    gw.app.reload()
    assert served_serial(port, ca) == again.serial
    assert gw.app.certificates.reloads == reloads + 1


def test_cleartext_is_refused_on_a_non_loopback_address_unless_asked_for(
    gateway_config: Config, tmp_path: Path
) -> None:
    app = App(replace(gateway_config, listen="0.0.0.0:0"))

    async def start() -> None:
        try:
            await app.start()
        finally:
            await app.stop(grace=0)

    with pytest.raises(ConfigError) as refused:
        asyncio.run(start())
    assert "without TLS" in str(refused.value) and "--insecure" in str(refused.value)
    assert app.embedded is None  # refused before anything was started


def test_insecure_serves_cleartext_on_any_address(
    make_gateway: Callable[..., RunningGateway],
) -> None:
    gw = make_gateway(listen="0.0.0.0:0", insecure=True)
    port = gw.target.rpartition(":")[2]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert submit(channel, "agent-1", bearer(token_for("agent-1"))) == "VERDICT_ALLOW"


def test_the_cli_speaks_tls(
    make_gateway: Callable[..., RunningGateway], ca: Authority, server_cert: Issued
) -> None:
    gw = make_gateway(tls=TlsSettings(server_cert.cert_file, server_cert.key_file))
    command = [sys.executable, "-m", "clients.cli", "submit", "search", "--server", gw.target]
    command += ["--token", token_for("agent-1"), "--agent", "agent-1", "--session", "cli"]
    plain = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0
    secure = subprocess.run(
        [*command, "--tls-ca", str(ca.ca_file)], capture_output=True, text=True, timeout=60
    )
    assert secure.returncode == 0, secure.stderr
    assert "allow" in secure.stdout.lower()
