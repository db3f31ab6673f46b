"""How clients reach the gateway: a plaintext channel (loopback), or TLS with the CA
that signed the gateway's certificate and, for mTLS, the client's own certificate
and key.

    tls = Tls(ca_file=Path("ca.pem"), cert_file=Path("agent.pem"), key_file=Path("agent.key"))
    with AgentClient("gateway.example:50051", "", agent_id="agent-1", tls=tls) as agent:
        ...

A principal known by its client certificate needs no token (pass ""); with both, they
must name the same principal.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc


class TlsFileError(ValueError):
    """A TLS file of the client could not be read, or the pair is incomplete."""


@dataclass(frozen=True)
class Tls:
    ca_file: Path | None = None  # None: the system's trusted roots
    cert_file: Path | None = None  # the client certificate (mTLS), with key_file
    key_file: Path | None = None
    # The name the gateway's certificate is checked against, when it is not the
    # host of the address (e.g. an IP address the certificate does not list).
    server_name: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert_file is None) != (self.key_file is None):
            raise TlsFileError("a client certificate needs its key, and a key its certificate")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file),
            private_key=_read(self.key_file),
            certificate_chain=_read(self.cert_file),
        )

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def _read(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as e:
        raise TlsFileError(f"{path}: {e.strerror or e}") from None


def open_channel(target: str, tls: Tls | None = None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, tls.credentials(), options=tls.options())


def open_aio_channel(target: str, tls: Tls | None = None) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(target)
    return grpc.aio.secure_channel(target, tls.credentials(), options=tls.options())


def is_local(target: str) -> bool:
    """Whether a gRPC target (HOST:PORT, [IPv6]:PORT, unix:PATH) or a URL's host:port
    stays on this host: loopback or a Unix socket, where cleartext crosses no network.
    The gateway's rule for what it serves in cleartext too (gateway/api/tls.py)."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    host = target.rpartition(":")[0] if target.count(":") == 1 or "]" in target else target
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
