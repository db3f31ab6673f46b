"""Example TLS files for docker-compose.yml: a private CA, the gateway's certificate
and one client certificate, made on the first `docker compose up`.

    python deploy/example_certs.py DIR [--server-name NAME ...] [--server-ip IP ...]

Writes into DIR: ca.crt (the CA that signed both certificates: clients trust it for
the gateway, the gateway trusts it for client certificates), server.crt and
server.key (names gateway and localhost, address 127.0.0.1 by default), client.crt
and client.key (common name `example-client`, for mTLS). The CA's own key is never
written: to make more certificates, delete the files and run it again. When all five
files are there it changes nothing, so it is safe to run on every start; otherwise it
makes all five anew. Keys are written 0600, each file atomically.

These are examples for a private deployment; in production, certificates come from
your own CA (see deploy/README.md).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FILES = ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")
DEFAULT_SERVER_NAMES = ("gateway", "localhost")
DEFAULT_SERVER_IPS = ("127.0.0.1",)
CLIENT_NAME = "example-client"
CA_DAYS = 3650
LEAF_DAYS = 825


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("directory", type=Path)
    parser.add_argument(
        "--server-name",
        action="append",
        help=f"a DNS name of the gateway (repeatable; default {', '.join(DEFAULT_SERVER_NAMES)})",
    )
    parser.add_argument(
        "--server-ip",
        action="append",
        help=f"an IP address of the gateway (repeatable; default {', '.join(DEFAULT_SERVER_IPS)})",
    )
    args = parser.parse_args(argv)
    directory: Path = args.directory
    if all((directory / name).exists() for name in FILES):
        print(f"{directory}: example certificates already there; nothing changed")
        return 0
    names = args.server_name or list(DEFAULT_SERVER_NAMES)
    try:
        addresses = [ipaddress.ip_address(ip) for ip in args.server_ip or DEFAULT_SERVER_IPS]
    except ValueError as e:
        parser.error(str(e))
    write_example_certificates(directory, names, addresses)
    print(f"{directory}: wrote {', '.join(FILES)} (server names: {', '.join(names)})")
    return 0


def write_example_certificates(
    directory: Path,
    server_names: list[str],
    server_ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agentgw example CA")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), now, CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in server_names]
    alt_names += [x509.IPAddress(ip) for ip in server_ips]
    server_key, server = _leaf(
        ca,
        ca_key,
        server_names[0] if server_names else "agentgw",
        ExtendedKeyUsageOID.SERVER_AUTH,
        now,
        x509.SubjectAlternativeName(alt_names),
    )
    client_key, client = _leaf(
        ca,
        ca_key,
        CLIENT_NAME,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        now,
        x509.SubjectAlternativeName([x509.DNSName(CLIENT_NAME)]),
    )
    directory.mkdir(parents=True, exist_ok=True)
    # ca.crt last: a run that stops halfway leaves an incomplete set, made anew next time.
    _write(directory / "server.key", _key_pem(server_key), 0o600)
    _write(directory / "server.crt", server.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(directory / "client.key", _key_pem(client_key), 0o600)
    _write(directory / "client.crt", client.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(directory / "ca.crt", ca.public_bytes(serialization.Encoding.PEM), 0o644)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # An hour back, so a clock a little behind still accepts a fresh certificate.
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    usage: x509.ObjectIdentifier,
    now: datetime.datetime,
    alt_names: x509.SubjectAlternativeName,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    certificate = (
        _builder(subject, ca.subject, key.public_key(), now, LEAF_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(alt_names, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, certificate


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


if __name__ == "__main__":
    sys.exit(main())
