"""TLS 1.3 contexts and the server's self-made identity.

A fresh server has no certificate a client could verify against a CA, so it makes its own and
clients pin its fingerprint the way OpenSSH pins host keys (see `protocol.pinning`). Production
deployments can pass a real certificate instead and clients verify it with `--ca-file`, which
makes that CA the trust anchor: a renewed certificate that verifies is accepted, not refused.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from util.files import write_atomically

CERT_FILE = "server-cert.pem"
KEY_FILE = "server-key.pem"


class TlsIdentityError(Exception):
    """A certificate or key that cannot serve. The message names the file and the fault; the
    caller, who knows where the pair came from, adds what to do about it."""


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
    """Return (cert, key) in `directory`, creating a P-256 key and a 10-year certificate once.

    Only when both are missing: clients pinned the pair's fingerprint, so half a pair kept is a
    restore that missed a file, and quietly making a new identity would lock every client out.
    Raises TlsIdentityError (with what to do) when exactly one is there."""
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    if cert_path.exists() or key_path.exists():
        missing, kept = (key_path, cert_path) if cert_path.exists() else (cert_path, key_path)
        raise TlsIdentityError(
            f"{missing} is missing but {kept} is there: restore {missing.name} from a backup; "
            f"removing {kept.name} too makes a new identity that every client must trust again."
        )
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


def server_context(
    cert_path: Path, key_path: Path, names: tuple[str, str] | None = None
) -> ssl.SSLContext:
    """Raises TlsIdentityError naming the file at fault: OpenSSL's own errors ("PEM lib",
    "KEY_VALUES_MISMATCH") name neither file nor fault. `names` are the files as the messages
    name them (`VITRINE_TLS_CERT=/x`: the caller knows where each path came from); the paths
    themselves by default."""
    cert_name, key_name = names or (str(cert_path), str(key_path))
    check_pair(cert_path, key_path, (cert_name, key_name))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        context.load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, OSError) as exc:  # whatever the checks above did not foresee
        raise TlsIdentityError(
            f"cannot use the certificate {cert_name} with the key {key_name}: "
            f"{getattr(exc, 'reason', None) or exc}"
        ) from None
    return context


def check_pair(cert_path: Path, key_path: Path, names: tuple[str, str] | None = None) -> None:
    """Both files readable PEM, unencrypted key, and the key the certificate's own. `names`
    as for `server_context`."""
    cert_name, key_name = names or (str(cert_path), str(key_path))
    cert_data = _read(cert_path, "certificate", cert_name)
    key_data = _read(key_path, "private key", key_name)
    try:
        cert = x509.load_pem_x509_certificate(cert_data)
    except ValueError:
        raise TlsIdentityError(
            f"the TLS certificate {cert_name} is not a PEM certificate (damaged or truncated?)"
        ) from None
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise TlsIdentityError(
            f"the TLS private key {key_name} is encrypted; Vitrine needs it unencrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsIdentityError(
            f"the TLS private key {key_name} is not a PEM private key (damaged or truncated?)"
        ) from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise TlsIdentityError(
            f"the TLS private key {key_name} does not belong to the certificate {cert_name}"
        )


def _read(path: Path, what: str, name: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsIdentityError(f"cannot read the TLS {what} {name}: {exc.strerror}") from None


def client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """TLS 1.3 only. Without a CA file the chain is not checked here: the pin is checked instead.

    With one, chain and host name are checked here and that CA becomes the trust anchor: the
    pin then only follows the certificate (`KnownServers.follow`), so both checks are set
    explicitly rather than left to the defaults they rely on."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if ca_file is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = True
        context.load_verify_locations(cafile=str(ca_file))
    return context
