"""Encrypted, content-addressed blob store for originals and thumbnails.

Threat model: someone who reads the data directory (a backup, a stolen disk) but not the key
file must learn nothing about the images, not even which well-known files are stored. So:

* a blob's name is HMAC-SHA256 of its content under a key-derived subkey: identical uploads
  share one blob (dedup) while the name cannot be matched against a plain SHA-256 list;
* the content is sealed with AES-256-GCM under a second subkey, with a fresh random nonce and
  the blob's name (plus a format header) as associated data, so a blob cannot be moved or
  swapped to answer for another name without detection;
* writes go to a temporary file in the final directory, are fsynced and renamed, and the
  directory is fsynced: after a crash a blob either exists whole or not at all, which lets the
  database commit its row only once the blob is durable.

File layout: ``root/ab/abcdef...`` (two-hex-digit fan-out keeps directories small).
On disk a blob is ``MAGIC || nonce(12) || ciphertext || tag(16)``.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from util.files import TMP_SUFFIX, fsync_directory, write_atomically

log = logging.getLogger(__name__)

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
MAGIC: Final = b"VTB1"  # versioned, so the format can change without guessing
_NAME_RE: Final = re.compile(r"[0-9a-f]{64}")
_FANOUT_RE: Final = re.compile(r"[0-9a-f]{2}")
_NAME_INFO: Final = b"vitrine blobstore v1 name"
_ENC_INFO: Final = b"vitrine blobstore v1 enc"


class BlobError(Exception):
    """Base class for blob store failures."""


class InvalidBlobName(BlobError, ValueError):
    """A name that is not 64 lowercase hex characters (refused before touching the disk)."""


class BlobNotFound(BlobError, LookupError):
    """No blob with that name is stored."""


class BlobCorrupt(BlobError):
    """The stored blob fails authentication: tampered, truncated, moved, or the wrong key."""


class BlobAuthenticationFailed(BlobCorrupt):
    """A whole blob whose tag does not verify: tampered, swapped, or sealed under another key.

    Told apart from a short or headerless file because only this one can mean the wrong key,
    which start-up must refuse before the key seals anything (see `service.data_dir`)."""


class KeyFileError(BlobError):
    """The key file exists but cannot be used."""


def load_or_create_key(path: Path) -> bytes:
    """Return the master key stored at ``path``, creating it (owner-only) on first use.

    Creation is race-safe: the key is written and fsynced under a temporary name, then
    hard-linked into place, which fails if another process won the race; we then read theirs.
    A key file that others can read is tightened to 0600 and logged, because the fix is cheap
    and refusing to start would not undo the exposure.
    """
    path = Path(path)
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)  # mkdir's mode is filtered by the umask
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(KEY_BYTES)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read_key(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_directory(path.parent)
    return key


def _read_key(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    st_mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(st_mode):
        # Opening it as a file would fail naming the descriptor, not the path.
        os.close(fd)
        raise KeyFileError(
            f"the blob key file {path} is a directory; restore the file from a backup "
            "(without it the stored images cannot be read)."
        )
    mode = stat.S_IMODE(st_mode)
    with os.fdopen(fd, "rb") as f:
        key = f.read(KEY_BYTES + 1)
    if len(key) != KEY_BYTES:
        raise KeyFileError(
            f"the blob key file {path} holds {len(key)} bytes instead of {KEY_BYTES}; "
            "restore it from a backup (without it the stored images cannot be read)."
        )
    if mode & 0o077:
        log.warning("blob key file %s had mode %o; restricting it to the owner (0600)", path, mode)
        os.chmod(path, 0o600)
    return key


def sealed_size(plain_bytes: int) -> int:
    """The size of the file `BlobStore.put` writes for `plain_bytes` of content: header, nonce,
    ciphertext, tag."""
    return len(MAGIC) + NONCE_BYTES + plain_bytes + TAG_BYTES


def subkey(master: bytes, info: bytes) -> bytes:
    """An independent key for one purpose (`info`), so that no two uses share key material."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(master)


class BlobStore:
    """Content-addressed, encrypted, crash-safe storage of byte strings.

    Thread-safe for concurrent ``put``/``get``/``exists`` (every write goes through a unique
    temporary file and an atomic rename). ``sweep`` is for start-up, before any ``put`` runs:
    it cannot tell an in-flight write from a crash leftover. Deduplication means one blob may
    back several rows; deciding when a blob is unreferenced is the caller's job.
    """

    def __init__(self, root: Path, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"the blob store key must be {KEY_BYTES} bytes, got {len(key)}")
        self.root = Path(root)
        if not self.root.exists():
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
        self._name_key = subkey(key, _NAME_INFO)
        self._aead = AESGCM(subkey(key, _ENC_INFO))

    # --- naming -------------------------------------------------------------------------------

    def name_for(self, data: bytes) -> str:
        """The name ``data`` has (or would have) in this store; depends on the key."""
        return hmac.new(self._name_key, data, sha256).hexdigest()

    def path_for(self, name: str) -> Path:
        """Where a blob lives; validates the name so no caller can build a path from junk."""
        _check_name(name)
        return self.root / name[:2] / name

    # --- operations ---------------------------------------------------------------------------

    def put(self, data: bytes, name: str | None = None, *, named: bool = False) -> str:
        """Store ``data`` durably and return its name; a no-op if it is already stored intact.

        ``name``, when given, is ``name_for(data)`` as the caller already computed it: an upload
        names its blobs before writing them, and a 25 MB original costs milliseconds to hash.

        A file already under that name is read and authenticated first, because trusting its
        mere existence made a damaged blob (truncated, bit-rotted) permanent: every later upload
        of the good bytes shared it and read back an error. A damaged one is replaced with the
        same atomic write as a new blob, so a reader sees the old file or the new, and two
        uploads repairing it at once each rename a whole file. Dedup hits are rare enough that
        the read costs nothing that matters. Only a file that fails authentication (or is too
        short to) is replaced: one that authenticates with other bytes is another content's
        blob under a wrong ``name``, and put raises ValueError rather than overwrite it.

        ``named`` says that a row already names this blob (an upload sharing or repairing a
        stored image's blobs). A missing file then is a loss being repaired, which the operator
        is told of like a damaged one; on disk it looks the same as a blob never written, so
        only the caller can tell the two apart."""
        if name is None:
            name = self.name_for(data)
        path = self.root / name[:2] / name
        damage = self._damage(path, name, data)
        if damage is None:
            return name
        if damage:
            log.warning(
                "blob %s was damaged (%s); replacing it with the uploaded copy", name, damage
            )
        elif named:
            log.warning("blob %s was missing; replacing it with the uploaded copy", name)
        directory = path.parent
        if not directory.exists():
            directory.mkdir(mode=0o700, exist_ok=True)
            fsync_directory(self.root)
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = MAGIC + nonce + self._aead.encrypt(nonce, data, _aad(name))
        write_atomically(path, sealed)
        return name

    def get(self, name: str) -> bytes:
        """Return the plaintext of blob ``name``, authenticated against its name."""
        path = self.path_for(name)
        try:
            sealed = path.read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"blob {name} is not stored") from None
        header = len(MAGIC) + NONCE_BYTES
        if len(sealed) < header + TAG_BYTES or not sealed.startswith(MAGIC):
            raise BlobCorrupt(f"blob {name} is damaged (bad header or too short)")
        nonce = sealed[len(MAGIC) : header]
        try:
            data = self._aead.decrypt(nonce, sealed[header:], _aad(name))
        except InvalidTag:
            raise BlobAuthenticationFailed(
                f"blob {name} failed authentication (tampered, swapped, or a different key)"
            ) from None
        # No re-hash of the plaintext: GCM with the name as associated data already proves this
        # content was sealed under this name by a holder of the key, and re-hashing every
        # thumbnail of every listing cost more CPU than decrypting it.
        return data

    def exists(self, name: str) -> bool:
        return self.path_for(name).exists()

    def sized_for(self, name: str, plain_bytes: int) -> bool:
        """Whether blob ``name`` is there with the size ``put`` seals ``plain_bytes`` to: a
        truncated file shows without reading it (rot of the right size does not: ``intact``)."""
        try:
            return self.path_for(name).stat().st_size == sealed_size(plain_bytes)
        except FileNotFoundError:
            return False

    def intact(self, name: str) -> bool:
        """Whether blob ``name`` is there and authenticates: what an upload about to share it
        needs to know, since a row naming a damaged blob can never show its picture."""
        try:
            self.get(name)
        except (BlobNotFound, BlobCorrupt):
            return False
        return True

    def _damage(self, path: Path, name: str, data: bytes) -> str | None:
        """None when ``path`` holds ``data`` sealed under ``name``; otherwise "" when there is
        no file, else what is wrong with it (for the log).

        Only a file that does not authenticate is damaged. A wrong size is no proof: a blob
        that authenticates under ``name`` yet holds other bytes means the caller passed a wrong
        ``name``, and that blob may back other rows, so it is never overwritten (ValueError)."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return ""
        expected = sealed_size(len(data))
        sized = "" if size == expected else f"; {size} bytes instead of {expected}"
        try:
            stored = self.get(name)
        except BlobNotFound:  # removed since the stat: written afresh, nothing was damaged
            return ""
        except BlobAuthenticationFailed:
            return "failed authentication" + sized
        except BlobCorrupt:
            return "bad header or too short" + sized
        if not hmac.compare_digest(stored, data):
            raise ValueError(
                f"blob {name} is stored intact with other content: the name given to put is "
                "not name_for(data) (a caller's bug); the stored blob is left as it is"
            )
        return None

    def delete(self, name: str) -> bool:
        """Remove blob ``name``; return False if it was not there (deletes are idempotent)."""
        path = self.path_for(name)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        fsync_directory(path.parent)
        return True

    def iter_names(self) -> Iterator[str]:
        """Every stored blob name (temporary files and foreign files are skipped)."""
        for _dir, name in self._scan():
            if not name.endswith(TMP_SUFFIX):
                yield name

    def temporary_files(self) -> Iterator[tuple[Path, int]]:
        """(path, size) of each temporary file left by a write that never finished (a crash,
        a kill -9): what `sweep` removes besides unreferenced blobs, for `--check` to show."""
        for directory, entry in self._scan():
            if entry.endswith(TMP_SUFFIX):
                path = directory / entry
                with contextlib.suppress(FileNotFoundError):
                    yield path, path.stat().st_size

    def sweep(self, referenced: set[str]) -> int:
        """Delete blobs not in ``referenced`` and leftover temporary files; return the number
        of blobs deleted, the temporary files being logged here on their own line.

        Run at start-up only (see the class docstring): after a crash there can be a blob whose
        row never committed, and temporary files from writes that never finished. They are
        counted apart because they are different news: an unreferenced blob is an image's data
        (a restore from an older database deletes newer images' blobs here), a temporary file
        never was one.
        """
        removed = temporaries = temporary_bytes = 0
        touched: set[Path] = set()
        for directory, entry in self._scan():
            temporary = entry.endswith(TMP_SUFFIX)
            if not (temporary or entry not in referenced):
                continue
            path = directory / entry
            with contextlib.suppress(FileNotFoundError):
                size = path.stat().st_size if temporary else 0
                path.unlink()
                touched.add(directory)
                if temporary:
                    temporaries += 1
                    temporary_bytes += size
                else:
                    removed += 1
        for directory in touched:
            fsync_directory(directory)
        if temporaries:
            log.info(
                "start-up: removed %d temporary files (%d bytes) left by blob writes that never "
                "finished",
                temporaries,
                temporary_bytes,
            )
        return removed

    def _scan(self) -> Iterator[tuple[Path, str]]:
        """Yield (directory, entry) for blob files and our temporary files, nothing else."""
        try:
            fanouts = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for fan in fanouts:
            if not (_FANOUT_RE.fullmatch(fan.name) and fan.is_dir(follow_symlinks=False)):
                continue
            directory = self.root / fan.name
            for entry in sorted(os.scandir(directory), key=lambda e: e.name):
                if not entry.is_file(follow_symlinks=False):
                    continue
                if (_NAME_RE.fullmatch(entry.name) and entry.name.startswith(fan.name)) or (
                    entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX)
                ):
                    yield directory, entry.name


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidBlobName(f"not a blob name: {name!r:.80}")


def _aad(name: str) -> bytes:
    return MAGIC + name.encode("ascii")
