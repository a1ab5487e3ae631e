"""Session 19 trust fixes: `logout` is for good even when the server cannot be reached, a
`--ca-file` CA is the trust anchor (renewals are not a changed identity), the known_servers
file keeps what its user wrote in it and survives clients pinning at once, and a config
directory that is a file is named as the fault."""

from __future__ import annotations

import datetime as dt
import ipaddress
import multiprocessing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pexpect
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from protocol import tls
from protocol.errors import ErrorCode, VitrineError
from protocol.messages import CreateUser, UserInfo, WhoAmI
from protocol.pinning import KnownServers
from shell.connection import ServerConnection, TrustPolicy
from shell.session import ClientSession, ServerLogoutFailed
from tests.servers import ServerProcess
from tests.test_pinning_and_client import bare_client, logged_in_shell

PASSWORD = "correct horse battery"


# --- 1. logout is for good ---------------------------------------------------------------------


def logged_in_session(server: ServerProcess, config_dir: Path, name: str) -> ClientSession:
    trust = TrustPolicy(KnownServers(config_dir / "known_servers"), trust_new=True)
    connection = ServerConnection(server.host, server.port, trust)
    connection.connect()
    connection.call(CreateUser(id=0, name=name, password=PASSWORD))
    session = ClientSession(connection, notify=lambda _: None)
    session.login(name, PASSWORD)
    return session


def test_logout_while_the_server_is_down_ends_the_session_for_good(
    server: ServerProcess, config_dir: Path
) -> None:
    notices: list[str] = []
    session = logged_in_session(server, config_dir, "carol")
    session.notify = notices.append
    server.stop()
    with pytest.raises(ServerLogoutFailed) as failed:
        session.logout()
    assert "Cannot reach a Vitrine server" in str(failed.value)
    assert "Logged out carol in this shell only" in str(failed.value)
    assert "7 days after the login" in str(failed.value)
    assert session.user is None
    server.restart()
    with pytest.raises(VitrineError) as refused:
        session.call(WhoAmI(id=0), UserInfo)
    assert refused.value.code is ErrorCode.UNAUTHENTICATED
    assert not any("resumed" in notice for notice in notices), notices
    session.connection.close()
    server.stop()
    with pytest.raises(ConnectionError) as plain:  # no session held: a plain failure
        session.logout()
    assert not isinstance(plain.value, ServerLogoutFailed)


def test_logout_that_meets_a_changed_server_identity_still_forgets_the_session(
    server: ServerProcess, config_dir: Path
) -> None:
    session = logged_in_session(server, config_dir, "dave")
    server.stop()
    for name in (tls.CERT_FILE, tls.KEY_FILE):  # a new identity on the same address
        (server.data_dir / name).unlink()
    server.restart()
    with pytest.raises(ServerLogoutFailed) as failed:
        session.logout()
    assert "IDENTITY HAS CHANGED" in str(failed.value) and session.user is None
    assert "Logged out dave in this shell only" in str(failed.value)


def test_logout_in_the_shell_while_the_server_is_down(
    server: ServerProcess, config_dir: Path
) -> None:
    """The QA reproduction: the prompt must not stay `carol@`, nor the session come back."""
    child = logged_in_shell(server, config_dir, "carol")
    server.stop()
    child.sendline("logout")
    child.expect("Logged out carol in this shell only")
    child.expect("> ")
    assert "carol@" not in child.before
    server.restart()
    child.sendline("whoami")
    child.expect("log in first")
    assert "resumed" not in child.before
    child.sendline("quit")
    child.expect(pexpect.EOF)
    child.close()


# --- 2. --ca-file: the CA is the trust anchor --------------------------------------------------


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def make_ca(directory: Path, label: str) -> tuple[Path, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"Test CA {label}"))
        .issuer_name(_name(f"Test CA {label}"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    path = directory / f"ca-{label}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key


def make_leaf(
    directory: Path,
    label: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_label: str,
    key: ec.EllipticCurvePrivateKey,
    names: Sequence[x509.GeneralName] = (
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ),
) -> tuple[Path, Path]:
    """A server certificate for `names` (127.0.0.1 and localhost) signed by the CA, and its
    key, as an operator or Let's Encrypt would hand them over (--tls-cert, --tls-key)."""
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("vitrine.test"))
        .issuer_name(_name(f"Test CA {ca_label}"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=20))
        .add_extension(
            x509.SubjectAlternativeName(list(names)),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{label}.pem", directory / f"{label}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_a_ca_file_is_the_trust_anchor_and_renewals_are_accepted(
    tmp_path: Path, config_dir: Path
) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca, ca_key = make_ca(pki, "real")
    _, rogue_key = make_ca(pki, "rogue")
    key = ec.generate_private_key(ec.SECP256R1())
    first = make_leaf(pki, "first", ca_key, "real", key)
    renewed = make_leaf(pki, "renewed", ca_key, "real", key)  # same key, as certbot renews
    rekeyed = make_leaf(pki, "rekeyed", ca_key, "real", ec.generate_private_key(ec.SECP256R1()))
    forged = make_leaf(pki, "forged", rogue_key, "real", key)  # right names, wrong CA
    # Right CA, someone else's name: the host-name check is all that stops it now.
    elsewhere = make_leaf(pki, "elsewhere", ca_key, "real", key, (x509.DNSName("shop.example"),))

    def serve(cert_key: tuple[Path, Path], port: int = 0) -> ServerProcess:
        flags = ["--tls-cert", str(cert_key[0]), "--tls-key", str(cert_key[1])]
        return ServerProcess(tmp_path / "server", extra_args=flags, port=port).start()

    pins = config_dir / "known_servers"
    server = serve(first)
    port = server.port
    try:
        # First contact: verified by the CA the user named, so nobody is asked, nothing to pass.
        result = bare_client(server.address, config_dir, "--ca-file", str(ca), "help")
        assert result.returncode == 0, result.stderr
        assert "not known yet" not in result.stderr and "changed" not in result.stderr
        old = server.fingerprint
        assert pins.read_text() == f"{server.address} {old}\n"
    finally:
        server.stop()
    for cert_key in (renewed, rekeyed):
        server = serve(cert_key, port)
        try:
            result = bare_client(server.address, config_dir, "--ca-file", str(ca), "help")
            assert result.returncode == 0, result.stderr
            assert "IDENTITY HAS CHANGED" not in result.stderr
            notice = [line for line in result.stderr.splitlines() if "changed from" in line]
            assert len(notice) == 1 and old in notice[0] and server.fingerprint in notice[0]
            assert pins.read_text() == f"{server.address} {server.fingerprint}\n"
            # The same certificate again: nothing to say.
            again = bare_client(server.address, config_dir, "--ca-file", str(ca), "help")
            assert again.returncode == 0 and "changed from" not in again.stderr, again.stderr
            old = server.fingerprint
        finally:
            server.stop()
    server = serve(elsewhere, port)
    try:
        result = bare_client(server.address, config_dir, "--ca-file", str(ca), "help")
        assert result.returncode == 2 and "certificate verify failed" in result.stderr
        assert "mismatch" in result.stderr or "match" in result.stderr, result.stderr
        assert pins.read_text() == f"{server.address} {old}\n"
    finally:
        server.stop()
    server = serve(forged, port)
    try:
        result = bare_client(server.address, config_dir, "--ca-file", str(ca), "help")
        assert result.returncode == 2 and "certificate verify failed" in result.stderr
        assert pins.read_text() == f"{server.address} {old}\n"
        # Without --ca-file the pin rules: a changed certificate is refused, no flag skips it.
        for flags in ([], ["--trust-new-server"]):
            result = bare_client(server.address, config_dir, *flags, "help")
            assert result.returncode == 2 and "IDENTITY HAS CHANGED" in result.stderr
    finally:
        server.stop()


# --- 3. the known_servers file -----------------------------------------------------------------


def test_lines_the_client_does_not_understand_are_kept(tmp_path: Path) -> None:
    pins = tmp_path / "known_servers"
    mine = (
        "# my servers\nother:1 SHA256:abc extra\nlonely-word\n\n  # indented note\nold:2 SHA256:x"
    )
    pins.write_text(mine)
    KnownServers(pins).add("new:3", "SHA256:new")
    assert pins.read_text() == mine + "\nnew:3 SHA256:new\n"
    KnownServers(pins).add("other:1", "SHA256:def")  # re-pinned in its place
    assert pins.read_text() == mine.replace("SHA256:abc extra", "SHA256:def") + (
        "\nnew:3 SHA256:new\n"
    )


def test_a_byte_order_mark_does_not_hide_the_first_pin(
    shared_server: ServerProcess, config_dir: Path
) -> None:
    pins = config_dir / "known_servers"
    pins.write_text(f"{shared_server.address} SHA256:somethingelse\n", encoding="utf-8-sig")
    assert KnownServers(pins).lookup(shared_server.address) == "SHA256:somethingelse"
    # A changed key must read as CHANGED, not as unknown (which --trust-new-server would pin).
    result = bare_client(shared_server.address, config_dir, "--trust-new-server", "quit")
    assert result.returncode == 2 and "IDENTITY HAS CHANGED" in result.stderr, result.stderr
    assert "SHA256:somethingelse" in pins.read_text(encoding="utf-8-sig")


def _pin_many(path: str, worker: int, start: Any) -> None:
    start.wait()
    known = KnownServers(Path(path))
    for round_ in range(10):
        known.add(f"host{worker}-{round_}:1", f"SHA256:{worker}x{round_}")


def test_clients_pinning_at_the_same_moment_keep_every_pin(tmp_path: Path) -> None:
    pins = tmp_path / "known_servers"
    context = multiprocessing.get_context("fork")
    start = context.Event()
    workers = [
        context.Process(target=_pin_many, args=(str(pins), worker, start)) for worker in range(6)
    ]
    for process in workers:
        process.start()
    start.set()
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    text = pins.read_text()
    missing = [
        f"host{worker}-{round_}:1"
        for worker in range(6)
        for round_ in range(10)
        if f"host{worker}-{round_}:1 SHA256:{worker}x{round_}\n" not in text
    ]
    assert not missing, missing


# --- 4. a config directory that is a file ------------------------------------------------------


def test_a_config_dir_that_is_a_file_is_named(shared_server: ServerProcess, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "config"
    not_a_dir.write_text("oops")
    result = bare_client(shared_server.address, not_a_dir, "--trust-new-server", "quit")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"The config directory {not_a_dir} is not a directory" in result.stderr
    assert "Cannot read the known servers file" not in result.stderr
