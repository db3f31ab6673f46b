"""TLS for the gRPC server: certificate files that reload without a restart, and the
rule that cleartext is for loopback (the names a client certificate proves are read
in gateway/api/auth.py).

gRPC asks `CertificateFiles.fetch` for the certificates at each new handshake; it
answers with new ones when a file changed (or SIGHUP asked for a reload), so a
renewed certificate is served from the next connection on, and connections already
open are not dropped. A change that does not load (a file half written, a key that
is not the certificate's) keeps the certificates in use and logs why.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PublicKeyTypes,
)

from clients.transport import is_local
from gateway.config import Config, TlsSettings
from gateway.errors import ConfigError

log = logging.getLogger("agentgw.tls")


class CertificateFiles:
    """The server's certificate chain, its key and (mTLS) the client CA, read from
    their files; loaded and checked once at start (a ConfigError if they do not load)."""

    def __init__(self, settings: TlsSettings) -> None:
        if settings.cert_file is None or settings.key_file is None:
            raise ConfigError("tls: no certificate and key configured")
        self.settings = settings
        self._files = [settings.cert_file, settings.key_file]
        if settings.client_ca_file is not None:
            self._files.append(settings.client_ca_file)
        self._lock = threading.Lock()  # gRPC may call fetch from its own threads
        self._forced = False
        self._context: tuple[tuple[tuple[int, int, int], ...], ssl.SSLContext] | None = None
        self.reloads = 0  # certificates loaded after the first (for tests and logs)
        self._stamp = self._stamp_now()
        try:
            self.initial = self._load()
        except (OSError, ValueError) as e:
            raise ConfigError(f"tls: {e}") from None

    def reload(self) -> None:
        """Read the files again at the next handshake, changed or not (SIGHUP)."""
        with self._lock:
            self._forced = True

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """New certificates if a file changed since the last load (or a reload was
        asked for) and they load; None: keep the ones in use."""
        try:
            stamp = self._stamp_now()
        except OSError as e:
            log.error("tls certificates not reloaded", extra={"category": "error", "error": str(e)})
            return None
        with self._lock:
            if stamp == self._stamp and not self._forced:
                return None
            self._forced = False
            self._stamp = stamp
        try:
            loaded = self._load()
        except (OSError, ValueError) as e:
            log.error(
                "tls certificates not reloaded; still serving the previous ones",
                extra={"category": "error", "error": str(e)},
            )
            return None
        self.reloads += 1
        log.info("tls certificates reloaded", extra={"category": "security"})
        return loaded

    def ssl_context(self) -> ssl.SSLContext:
        """A server-side context of the same certificate and key (the metrics
        endpoint's), made again when the files have changed since the last one."""
        stamp = self._stamp_now()
        with self._lock:
            cached = self._context
        if cached is not None and cached[0] == stamp:
            return cached[1]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._files[0], self._files[1])
        with self._lock:
            self._context = (stamp, context)
        return context

    def _stamp_now(self) -> tuple[tuple[int, int, int], ...]:
        stats = [os.stat(path) for path in self._files]
        return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        cert_file, key_file = self._files[0], self._files[1]
        chain = _read(cert_file)
        key = _read(key_file)
        certificates = _certificates(cert_file, chain)
        try:
            private_key = serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{key_file}: not an unencrypted PEM private key ({e})") from None
        if _public_der(private_key.public_key()) != _public_der(certificates[0].public_key()):
            raise ValueError(f"{key_file}: this key is not the key of the certificate {cert_file}")
        roots = None
        if self.settings.client_ca_file is not None:
            roots = _read(self.settings.client_ca_file)
            _certificates(self.settings.client_ca_file, roots)
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=roots)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise OSError(f"{path}: {e.strerror or e}") from None


def _certificates(path: Path, pem: bytes) -> list[x509.Certificate]:
    try:
        found = x509.load_pem_x509_certificates(pem)
    except ValueError:
        found = []
    if not found:
        raise ValueError(f"{path}: no PEM certificate in it")
    return found


def _public_der(key: CertificatePublicKeyTypes | PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def server_credentials(files: CertificateFiles) -> grpc.ServerCredentials:
    return grpc.dynamic_ssl_server_credentials(
        files.initial,
        files.fetch,
        require_client_authentication=files.settings.mutual,
    )


def check_cleartext(config: Config) -> None:
    """Without TLS, only a loopback address unless --insecure: bearer tokens would
    cross the network in the clear."""
    if config.tls.enabled or config.insecure or is_local(config.listen):
        return
    raise ConfigError(
        f"refusing to listen on {config.listen} without TLS (tokens would travel in "
        "cleartext): give --tls-cert and --tls-key, or --insecure to accept that"
    )
