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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(f"{key} {value}\n" for key, value in entries.items())
        write_atomically(self.path, text.encode())
