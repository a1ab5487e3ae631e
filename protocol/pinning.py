"""OpenSSH-style pinning of server certificates in a `known_servers` file.

One line per server: `host:port SHA256:<base64>`. An unknown server is shown and asked about
(or accepted by an explicit flag); a changed fingerprint is always refused, because that is
exactly what an attacker in the middle looks like.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from util.files import write_atomically


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


@dataclass
class KnownServers:
    path: Path

    def _entries(self) -> dict[str, str]:
        entries: dict[str, str] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return entries
        except (OSError, UnicodeDecodeError) as exc:
            # Pins that cannot be read cannot vouch for any server: refuse, and say what to fix.
            raise PinningError(
                f"Cannot read the known servers file {self.path}: {_reason(exc)}. "
                "Fix or remove it (every server is then asked about again)."
            ) from None
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 2 and not line.lstrip().startswith("#"):
                entries[fields[0]] = fields[1]
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
        entries = self._entries()
        entries[server] = fingerprint
        text = "".join(f"{key} {value}\n" for key, value in entries.items())
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # pins and history
            write_atomically(self.path, text.encode())
        except OSError as exc:
            raise PinningError(
                f"Cannot save the pin for {server} in {self.path}: {_reason(exc)}."
            ) from None


def _reason(exc: OSError | UnicodeDecodeError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"byte {exc.start} is not UTF-8"
    return exc.strerror or str(exc)
