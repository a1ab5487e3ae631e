"""The server's TLS identity: its certificate and key, given or self-made in the data
directory, and the fingerprint clients pin.

A new self-signed pair is made only once the data directory has passed its refusals
(`identity_after_refusals`): a refused start must not leave an identity behind that the next
start would serve in silence, locking out every client that pinned the lost one."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from pathlib import Path

from protocol import tls
from service.context import ServerConfig
from service.data_dir import has_users, prepare_data_dir
from util.config import Setting

log = logging.getLogger("vitrine.server")

#: The server's TLS context and its certificate's fingerprint.
Identity = tuple[ssl.SSLContext, str]

#: Where --tls-cert and --tls-key came from, as the sentences name them unless told otherwise.
TLS_FLAGS = (Setting("--tls-cert"), Setting("--tls-key"))


def identity_after_refusals(
    config: ServerConfig,
    tls_files: tuple[Path, Path] | None,
    settings: tuple[Setting, Setting] = TLS_FLAGS,
) -> Callable[[], Identity]:
    """The TLS identity, for `serve` to take once the data directory passed its refusals.

    Existing files (--tls-cert/--tls-key, or the self-made pair, or half of it) are checked
    now, which changes nothing, so a bad one is refused before the database is opened. Only
    making a new self-signed pair waits: a start refused for its data directory must not leave
    a new identity behind, or the next start finds both files, says nothing, and every client
    that pinned the lost identity is locked out. `settings` say where the given files came
    from (a VITRINE_* variable is named instead of its flag)."""
    data_dir = config.data_dir
    if tls_files is None and not any(
        (data_dir / name).exists() for name in (tls.CERT_FILE, tls.KEY_FILE)
    ):
        return lambda: tls_identity(config, None)
    ready = tls_identity(config, tls_files, settings)
    return lambda: ready


def tls_identity(
    config: ServerConfig,
    tls_files: tuple[Path, Path] | None,
    settings: tuple[Setting, Setting] = TLS_FLAGS,
) -> Identity:
    """The server's TLS context and its certificate's fingerprint, from `tls_files` (cert,
    key) or else the self-made pair in the data directory, made if both files are missing.
    Raises tls.TlsIdentityError with one sentence naming the file and what to do. The pair is
    one argument so that half of it cannot be passed; the command line refuses half of it.
    The sentence names each given file as `settings` gave it: `VITRINE_TLS_CERT=/x`, so that
    a bad variable is not blamed on a flag nobody typed."""
    names = None
    if tls_files is None:
        data_dir = config.data_dir
        made = not (data_dir / tls.CERT_FILE).exists() and not (data_dir / tls.KEY_FILE).exists()
        if made:  # only then: `--check` runs this on copies it may not change (read-only ones)
            prepare_data_dir(data_dir)
        cert, key = tls.ensure_self_signed(data_dir)
        advice = (
            f"restore {tls.CERT_FILE} and {tls.KEY_FILE} from a backup, or remove both to make "
            "a new identity that every client must trust again."
        )
    else:
        (cert, key), made = tls_files, False
        cert_setting, key_setting = settings
        names = (cert_setting.shown(cert), key_setting.shown(key))
        advice = f"check {cert_setting.name} and {key_setting.name}."
    try:
        context = tls.server_context(cert, key, names)
    except tls.TlsIdentityError as exc:
        raise tls.TlsIdentityError(f"{exc}; {advice}") from None
    # No TLS 1.3 session tickets: nothing uses resumption, and tickets arrive just after the
    # handshake, exactly when the client's reader thread and its first write share the socket.
    context.num_tickets = 0
    fingerprint = tls.certificate_fingerprint(cert)
    if made and has_users(config.data_dir):
        log.warning(
            "made a new TLS identity (%s) for a data directory that already has users: every "
            "client that pinned the old one refuses this server until told to trust the new "
            "one; if %s and %s were lost, stop and restore them from a backup instead",
            fingerprint,
            tls.CERT_FILE,
            tls.KEY_FILE,
        )
    return context, fingerprint
