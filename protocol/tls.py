"""TLS 1.3 contexts and the server's self-made identity.

A fresh server has no certificate a client could verify against a CA, so it makes its own and
clients pin its fingerprint the way OpenSSH pins host keys (see `protocol.pinning`). Production
deployments can pass a real certificate instead and clients verify it with `--ca-file`.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from util.files import write_atomically

CERT_FILE = "server-cert.pem"
KEY_FILE = "server-key.pem"


def fingerprint(der_certificate: bytes) -> str:
    """OpenSSH-style `SHA256:<base64>` of the DER certificate, the form users compare by eye."""
    digest = hashlib.sha256(der_certificate).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def certificate_fingerprint(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return fingerprint(cert.public_bytes(serialization.Encoding.DER))


def ensure_self_signed(
    directory: Path, hostnames: tuple[str, ...] = ("localhost",)
) -> tuple[Path, Path]:
    """Return (cert, key) in `directory`, creating a P-256 key and a 10-year certificate once."""
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Vitrine server")])
    now = dt.datetime.now(dt.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in hostnames]
    alt_names += [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    write_atomically(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert_path, key_path)
    return context


def client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """TLS 1.3 only. Without a CA file the chain is not checked here: the pin is checked instead."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if ca_file is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cafile=str(ca_file))
    return context
