"""OpenSSH-style pinning of server certificates in a `known_servers` file.

One line per server: `host:port SHA256:<base64>`. An unknown server is shown and asked about
(or accepted by an explicit flag); a changed fingerprint is always refused, because that is
exactly what an attacker in the middle looks like. The one exception is a server whose
certificate verified against the CA the user named with `--ca-file`: that CA, not the pin, is
then the trust anchor, and the pin just follows the certificate (`follow`).

The file is the user's as much as the client's: lines the client does not understand
(comments, notes, other tools' entries) are kept as they are when it adds a pin.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from util.config import Setting
from util.files import side_file_lock, write_atomically

#: Editors on some systems start a UTF-8 file with a byte-order mark; it is not part of a pin.
_BOM = "\ufeff"


class PinningError(Exception):
    """The server's identity cannot be trusted; the connection must not be used."""


class FingerprintChanged(PinningError):
    def __init__(self, server: str, stored: str, presented: str, path: Path) -> None:
        super().__init__(
            "@@@ WARNING: THE SERVER'S IDENTITY HAS CHANGED! @@@\n"
            f"The certificate fingerprint of {server} is now {presented},\n"
            f"but {path} pins it to {stored}.\n"
            "Someone could be intercepting your connection, or the server's key was replaced.\n"
            f"If you know the change is legitimate, remove the line for {server} from {path}."
        )
        self.server = server
        self.stored = stored
        self.presented = presented


#: The side file `KnownServers` locks while it rewrites the pins.
LOCK_NAME = "known_servers.lock"


@dataclass
class KnownServers:
    path: Path
    #: Where the config directory (the file's folder) came from, for the sentence that blames
    #: it: `VITRINE_CONFIG_DIR` when the variable gave it, not a flag nobody typed.
    config_dir: Setting = field(default_factory=lambda: Setting("--config-dir"))

    def _read(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8").removeprefix(_BOM)
        except FileNotFoundError:
            return ""
        except (OSError, UnicodeDecodeError) as exc:
            # Pins that cannot be read cannot vouch for any server: refuse, and say what to fix.
            if isinstance(exc, NotADirectoryError):
                raise _not_a_directory(self.path, self.config_dir) from None
            raise PinningError(
                f"Cannot read the known servers file {self.path}: {_reason(exc)}. "
                "Fix or remove it (every server is then asked about again)."
            ) from None

    def _entries(self) -> dict[str, str]:
        entries: dict[str, str] = {}
        for line in self._read().splitlines():
            if (pin := _pin(line)) is not None:
                entries[pin[0]] = pin[1]
        return entries

    def lookup(self, server: str) -> str | None:
        return self._entries().get(server)

    def check(self, server: str, presented: str) -> bool:
        """True if pinned and matching, False if unknown; raises if pinned to something else."""
        stored = self.lookup(server)
        if stored is None:
            return False
        if stored != presented:
            raise FingerprintChanged(server, stored, presented, self.path)
        return True

    def add(self, server: str, fingerprint: str) -> None:
        """Pin `server` to `fingerprint`, replacing its old pin and keeping every other line.

        Read, change and rewrite happen under a lock: two clients pinning at once would
        otherwise each rewrite the file they read, and the later rename drops the other pin."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # pins and history
            with side_file_lock(self.path.with_name(LOCK_NAME)):
                write_atomically(self.path, _repinned(self._read(), server, fingerprint).encode())
        except OSError as exc:
            if isinstance(exc, NotADirectoryError | FileExistsError):
                raise _not_a_directory(self.path, self.config_dir) from None
            raise PinningError(
                f"Cannot save the pin for {server} in {self.path}: {_reason(exc)}."
            ) from None

    def follow(
        self,
        server: str,
        presented: str,
        notice: Callable[[str], None] = lambda text: print(text, file=sys.stderr),
    ) -> None:
        """Pin whatever certificate `server` now presents, saying so when it replaces another.

        Only for a certificate that verified, chain and host name, against the CA the user
        named (`--ca-file`): that CA is the trust anchor, so a renewal (every 60-90 days with
        Let's Encrypt) must not lock every client out as a changed key would. The notice
        still leaves a trace of the change, for a user who did not expect one."""
        stored = self.lookup(server)
        if stored == presented:
            return
        self.add(server, presented)
        if stored is not None:
            notice(
                f"vitrine: the certificate of {server} changed from {stored} to {presented}; "
                "it verifies against --ca-file, so it is accepted and pinned."
            )


def _repinned(text: str, server: str, fingerprint: str) -> str:
    """`text` with `server`'s pin line (the first, in its place; any later ones dropped, as
    they would contradict it) set to `fingerprint`, or the pin added at the end."""
    lines: list[str] = []
    pinned = False
    for line in text.splitlines(keepends=True):
        if (pin := _pin(line)) is None or pin[0] != server:
            lines.append(line)
        elif not pinned:
            lines.append(f"{server} {fingerprint}\n")
            pinned = True
    if not pinned:
        if lines and not lines[-1].endswith(("\n", "\r")):
            lines[-1] += "\n"
        lines.append(f"{server} {fingerprint}\n")
    return "".join(lines)


def _pin(line: str) -> tuple[str, str] | None:
    """(server, fingerprint) of a pin line; None for a comment or a line not understood."""
    fields = line.split()
    if len(fields) < 2 or fields[0].startswith("#"):
        return None
    return fields[0], fields[1]


def _not_a_directory(path: Path, config_dir: Setting) -> PinningError:
    """The fault is the config directory (`--config-dir` naming a file), not the pins in it."""
    return PinningError(
        f"The config directory {path.parent} is not a directory (is {config_dir.name} a file?). "
        "Pass a directory, or remove the file in its place."
    )


def _reason(exc: OSError | UnicodeDecodeError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"byte {exc.start} is not UTF-8"
    return exc.strerror or str(exc)
