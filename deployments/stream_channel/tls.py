"""TLS for the stream channel: each router replica's own certificate, pinned by engines.

A router replica makes a key pair and a self-signed certificate when it starts, in memory
and in a private temporary folder that only this process's user can read (``ssl`` loads a
certificate chain from files). Its SHA-256 fingerprint travels to the engines with each
request, through Serve (the Ray cluster's own authenticated channel), inside the reply
address. An engine accepts the connection only if the router's certificate has that
fingerprint: pinning one certificate, so no certificate authority is involved and nothing
needs a host name. TLS 1.3 only.

Why TLS (Python's ``ssl``, OpenSSL) and the ``cryptography`` package for the certificate:
the chunks cross the cluster network, so they need encryption and integrity from a
well-kept implementation; both are already installed with Ray. ZeroMQ's CURVE was measured
beside it (benchmarks/bench_transport.py, docs/measurements.md).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import shutil
import socket
import ssl
import tempfile
from typing import Any

KEEPALIVE_IDLE_S = 10
"""Seconds of silence before TCP probes a stream connection."""
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_PROBES = 3
USER_TIMEOUT_S = 20
"""Written data unacknowledged this long fails the connection (TCP_USER_TIMEOUT): an
engine writing to a router whose node vanished stops within this, not after minutes
of retransmissions."""


class RouterCertificate:
    """One router replica's TLS key and certificate, and the server context that uses them."""

    def __init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "glm-serve stream channel")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=3650))
                .sign(key, hashes.SHA256()))
        der = cert.public_bytes(serialization.Encoding.DER)
        self.fingerprint = hashlib.sha256(der).hexdigest()
        folder = tempfile.mkdtemp(prefix="glm-stream-tls-")  # mode 0700
        try:
            cert_path, key_path = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
            with open(cert_path, "wb") as f:
                f.write(cert.public_bytes(serialization.Encoding.PEM))
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_3
            context.load_cert_chain(cert_path, key_path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # loaded: the key need not stay on disk
        self.server_context = context


def client_context() -> ssl.SSLContext:
    """An engine's context: TLS 1.3, and no CA or host name check, because the router's
    certificate is checked by its fingerprint instead (:func:`matches`)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def matches(ssl_object: Any, fingerprint: str) -> bool:
    """Whether the peer of ``ssl_object`` presented the certificate with ``fingerprint``."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return False
    return hmac.compare_digest(hashlib.sha256(der).hexdigest(), fingerprint)


def keep_alive(sock: Any) -> None:
    """TCP keepalive and a user timeout on a stream connection's socket (Linux options;
    elsewhere only keepalive)."""
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                          ("TCP_KEEPCNT", KEEPALIVE_PROBES), ("TCP_USER_TIMEOUT", USER_TIMEOUT_S * 1000)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
