"""Bulk upload: which files a list of PATHs means, and sending them through one connection.

Walking: a PATH is a file, a directory (walked recursively, sorted, hidden entries skipped) or a
glob (`*.jpg`, `shop/**/*.png`). Anything that names nothing, or names something that is not a
regular file (a FIFO would block the reader forever), or is a folder that cannot be read,
becomes a per-path problem instead of stopping the run (or being passed over in silence).
The same file reached twice (two PATHs, a symlink) is sent once.

Sending: one connection carries many requests at once (ServerConnection.submit pipelines them),
so throughput comes from keeping a window of requests in flight rather than from more sockets.
A background thread reads files and runs the cheap local precheck (util.images.precheck), so
disk reads overlap with TLS writes and with the server's decoding and model work. The window is
bounded both in requests and in bytes, so memory stays flat whatever the folder holds. Every
file ends with exactly one `FileResult`: new, already present, or rejected with a reason; one bad
file never stops the others, and a lost connection turns the unsent rest into rejections that
say re-running the command finishes the job (the server reports stored files as present).
A refusal for a session that has ended (a password change or logout on another connection:
UNAUTHENTICATED) is different: the server would refuse every file after it too, so nothing more
is sent, the answers already due are awaited, and the rest are *not sent*.

Ctrl-C stops sending but still accounts for every file: the answers to requests already on the
wire are awaited for a few seconds (the server stores those files whatever the client does, so
the user must hear which), a second Ctrl-C stops that wait, and the files never sent are
counted. Re-running the command then sends the rest, and reports the stored ones as present.
Given `interrupts` (checkout's holder of Ctrl-C), the first Ctrl-C is the only one that stops
anything: from then on presses are held, so a second one ends the wait for answers and nothing
else, and the accounting (and what the caller prints of it) is never cut short. The caller may
stop the sending the same way by other means: SIGTERM and SIGHUP (HeldInterrupts.stopping), or
`stop_if` saying so before a file is sent (add_image: whoever read its output has gone).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import functools
import glob
import os
import queue
import stat
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from PIL import Image

from protocol.base import Request, Response
from protocol.catalog import Uploaded, UploadImage
from protocol.errors import ErrorCode, VitrineError
from protocol.limits import MAX_FILENAME_CHARS, MAX_TITLE_CHARS
from shell.connection import ConnectionLost, InterruptedAfterSending
from shell.interrupts import HeldInterrupts
from shell.text import escape_undecodable, plural
from util.filenames import display_name
from util.images import ACCEPTED_FORMATS, DEFAULT_MAX_BYTES, ImageRejected, precheck

#: Requests in flight by default; the server's `max_in_flight` caps it.
DEFAULT_WINDOW = 32
#: Bytes of file content in flight at most (plus one file, so a single big file always goes).
DEFAULT_BYTE_WINDOW = 128 * 1024 * 1024
#: Files read ahead of the sender by the background reader.
READ_AHEAD = 16
#: After Ctrl-C, how long to wait for the answers to uploads already sent.
INTERRUPT_GRACE_S = 5.0
#: The `code` of a file refused, or not sent, because the session had ended: the server's
#: error code lowered, as for any refusal without a finer reason.
SESSION_ENDED_CODE = ErrorCode.UNAUTHENTICATED.value.lower()


# --- walking -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    """A file to send: where it is, and how to name it to the person who asked."""

    path: Path
    shown: str
    #: Size when walked, for the progress bar's total (the reader measures again).
    size: int = 0


@dataclass
class WalkResult:
    files: list[Candidate] = field(default_factory=list)
    #: (PATH as given, why nothing was taken from it).
    problems: list[tuple[str, str]] = field(default_factory=list)
    #: Files inside walked directories whose names say they are not images (looks_like_an_image).
    ignored: list[str] = field(default_factory=list)


#: Pillow formats whose files are JPEGs (start with a JPEG's bytes and decode as one), so the
#: server takes them though Pillow names them apart: MPO, a JPEG followed by more pictures.
PILLOW_JPEG_VARIANTS = frozenset({"MPO"})


@functools.cache
def image_suffixes() -> frozenset[str]:
    """Names a directory walk takes: the suffixes of the formats the server accepts, and of
    other image formats people keep beside their photos, so those are tried and refused with
    the reason rather than passed over in silence. (Cached: it loads every Pillow plugin.)

    Pillow files `.mpo` (the multi-picture JPEG some cameras save) under a format of its own,
    MPO, but the file is a JPEG and the server stores it as one (PILLOW_JPEG_VARIANTS); a
    folder walk once passed such photos over. `.jxl` is among the others (photos): Pillow has no
    plugin for it, and the client's check names it (`JXL images are not accepted`)."""
    registered = Image.registered_extensions()
    taken = ACCEPTED_FORMATS | PILLOW_JPEG_VARIANTS
    accepted = {ext for ext, fmt in registered.items() if fmt in taken}
    photos = {".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".dng"}
    graphics = {".svg", ".psd", ".ico"}
    return frozenset(accepted | photos | graphics)


def looks_like_an_image(name: str) -> bool:
    """Whether a directory walk takes this file: an image suffix, or none at all (a camera or
    a download may leave a photo without one). A readme or a PDF beside the photos is left
    alone instead of making the run fail."""
    suffix = os.path.splitext(name)[1].lower()
    return not suffix or suffix in image_suffixes()


def shown_path(path: str) -> str:
    """Undecodable bytes in a name (kept as lone surrogates) can be neither printed nor encoded,
    so each is shown as `\\x..`, as the shell shows them in a refused command line. With U+FFFD
    for all of them, `x\\xff.png` and `x\\xfe.png` were both `x\ufffd.png`, and a script could
    not tell which file got which id."""
    return escape_undecodable(path)


def stored_name(name: str) -> str:
    """A name for the server to keep: undecodable bytes as `%..` (upper case, as in a URI).

    Not `\\x..`: the server keeps only what follows a name's last `\\` (a Windows client's
    folders), so `x\\xff.png` would be stored as `xff.png`. Not U+FFFD either: two such files
    would be stored under one name.
    """
    text = os.fsencode(name).decode("utf-8", errors="surrogateescape")
    return "".join(f"%{ord(ch) - 0xDC00:02X}" if _escaped_byte(ch) else ch for ch in text)


def _escaped_byte(ch: str) -> bool:
    return "\udc80" <= ch <= "\udcff"


def _regular(path: str) -> os.stat_result | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info if stat.S_ISREG(info.st_mode) else None


def _walk_directory(top: str, unreadable: Callable[[str, OSError], None]) -> Iterator[str]:
    """Every non-hidden entry under `top` that is not a directory we walk into, in a stable
    order: files, and also links to directories, which are not followed (a link loop would
    walk for ever) but named, so that the caller can say it left them alone. A folder that
    cannot be listed (no permission) is handed to `unreadable`, `top` itself too: os.walk
    passes over it in silence otherwise."""

    def failed(exc: OSError) -> None:
        unreadable(exc.filename if exc.filename is not None else top, exc)

    for root, dirs, files in os.walk(top, onerror=failed, followlinks=False):
        linked = {d for d in dirs if os.path.islink(os.path.join(root, d))}
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in linked)
        for name in sorted([*files, *linked]):
            if not name.startswith("."):
                yield os.path.join(root, name)


def _expand_glob(pattern: str, unreadable: Callable[[str, OSError], None]) -> list[str]:
    """What a glob names, sorted, as `glob.glob(pattern, recursive=True)` would say it, except
    that `**` does not follow links to directories: glob's does, so two links to a parent made
    `shop/**/*.jpg` walk for ever (each doubles the work). Hidden names are left out, as glob's
    wildcards and the directory walk leave them out, unless the pattern names them (`.h*`).
    Matched here rather than by glob or Path.glob, which both pass over a folder they cannot
    list without a word: such a folder goes to `unreadable`."""
    parts = Path(pattern).parts
    fixed = next((n for n, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    base = str(Path(*parts[:fixed])) if fixed else "."
    wildcards = parts[fixed:]
    hidden = any(part.startswith(".") for part in wildcards)
    found: set[str] = set()

    def entries(folder: str) -> list[tuple[str, os.DirEntry[str]]]:
        """(path, entry) of each name in `folder`; a path under "." is given without "./"."""
        try:
            with os.scandir(folder) as listing:
                return [
                    (entry.name if folder == "." else entry.path, entry)
                    for entry in listing
                    if hidden or not entry.name.startswith(".")
                ]
        except OSError as exc:
            unreadable(folder, exc)
            return []

    def match(folder: str, rest: tuple[str, ...]) -> None:
        if not rest:
            found.add(folder)
            return
        part, after = rest[0], rest[1:]
        if part == "**":  # zero or more folders, never through a link
            match(folder, after)
            for path, entry in entries(folder):
                if entry.is_dir(follow_symlinks=False):
                    match(path, rest)
        elif glob.has_magic(part):
            for path, entry in entries(folder):
                if fnmatch.fnmatchcase(entry.name, part) and (not after or entry.is_dir()):
                    match(path, after)
        else:
            path = part if folder == "." else os.path.join(folder, part)
            if os.path.isdir(path) if after else os.path.lexists(path):
                match(path, after)

    if os.path.isdir(base):
        match(base, wildcards)
    # `**` alone names folders only, as glob's does
    if wildcards and wildcards[-1] == "**":
        found = {path for path in found if os.path.isdir(path)}
    return sorted(found)


def skip_code(reason: str) -> str:
    """The stable word `add_image --json` gives scripts beside a skipped PATH's reason."""
    if reason.startswith("the directory holds no"):
        return "nothing_to_upload"
    if reason.startswith(UNREADABLE_FOLDER):
        return "unreadable_folder"
    if reason.startswith(UNREACHABLE):
        return "unreadable"
    return {
        "matches no file": "no_match",
        "no such file or directory": "not_found",
        "not a regular file": "not_a_file",
        "a broken link": "broken_link",
        LINK_LOOP: "link_loop",
        LINKED_FOLDER: "linked_folder",
    }[reason]


#: Why a link to a folder met while walking a directory is left alone.
LINKED_FOLDER = "a link to a folder, not followed; name it to upload what it holds"
#: A link that leads, through other links or not, back to itself.
LINK_LOOP = "a link loop (the link leads back to itself)"
#: The start of why a folder's files were not taken: it cannot be listed ("(permission denied)").
UNREADABLE_FOLDER = "a folder that cannot be read"
#: The start of why an entry of a folder that can be listed but not entered was left alone.
UNREACHABLE = "cannot be read"


def _unreadable_reason(start: str, exc: OSError) -> str:
    return f"{start} ({(exc.strerror or 'error').lower()})"


def walk_paths(paths: Iterable[str]) -> WalkResult:
    """Expand PATHs (files, directories, globs) into the files to upload, in order, once each.

    A file named outright is always taken; one found by walking a directory or expanding a
    glob only when its name looks like an image (looks_like_an_image), the others are listed
    as ignored, each once too."""
    result = WalkResult()
    seen: set[tuple[int, int]] = set()
    said: set[tuple[str, str]] = set()

    def problem(path: str, reason: str) -> None:
        """Once each: `shop/**` walks every folder under shop, and so meets each entry again
        from every folder above it."""
        if (path, reason) not in said:
            said.add((path, reason))
            result.problems.append((path, reason))

    def found(path: str, named: bool) -> str | None:
        """Take or ignore a file; None if `path` is no regular file, else what became of it."""
        info = _regular(path)
        if info is None:
            return None
        key = (info.st_dev, info.st_ino)
        taken = named or looks_like_an_image(os.path.basename(path))
        if key not in seen:
            seen.add(key)
            if taken:
                result.files.append(Candidate(Path(path), shown_path(path), info.st_size))
            else:
                result.ignored.append(shown_path(path))
        return "taken" if taken else "ignored"

    def unreadable_under(given: str) -> tuple[list[str], Callable[[str, OSError], None]]:
        """The folders met that could not be read while expanding `given`, and what reports
        each: as `given` itself when it names the folder outright."""
        unlisted: list[str] = []

        def unreadable(folder: str, exc: OSError) -> None:
            unlisted.append(folder)
            shown = given if folder == os.path.expanduser(given) else shown_path(folder)
            problem(shown, _unreadable_reason(UNREADABLE_FOLDER, exc))

        return unlisted, unreadable

    for given in paths:
        expanded = os.path.expanduser(given)
        unlisted, unreadable = unreadable_under(given)
        if os.path.lexists(expanded):
            targets = [expanded]
        elif glob.has_magic(expanded):
            targets = _expand_glob(expanded, unreadable)
            if not targets:
                if not unlisted:  # else the folders that could not be read are the answer
                    problem(given, "matches no file")
                continue
        else:
            problem(given, "no such file or directory")
            continue
        for target in targets:
            named = target == expanded
            if not named and os.path.islink(target) and os.path.isdir(target):
                problem(shown_path(target), LINKED_FOLDER)  # `**/*` matched the link itself
            elif os.path.isdir(target):
                outcomes = set()
                before = len(unlisted)
                for path in _walk_directory(target, unreadable):
                    outcome = found(path, named=False)
                    outcomes.add(outcome)
                    if outcome is None:  # a link to a folder, a broken link, a FIFO...
                        problem(shown_path(path), _not_taken(path))
                if named and "taken" not in outcomes and len(unlisted) == before:
                    none = "image files" if "ignored" in outcomes else "files"
                    problem(given, f"the directory holds no {none}")
            elif found(target, named) is None and named:
                problem(given, _not_taken(target))
    return result


def _not_taken(path: str) -> str:
    """Why a path that is not a regular file was left alone. A link loop and a file in a folder
    that can be listed but not entered looked like broken links ("does not exist")."""
    if os.path.islink(path) and os.path.isdir(path):
        return LINKED_FOLDER
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return LINK_LOOP
        if exc.errno in (errno.EACCES, errno.EPERM):
            return _unreadable_reason(UNREACHABLE, exc)
        return "a broken link"
    return "not a regular file"


# --- outcomes ------------------------------------------------------------------------------------


class Outcome(StrEnum):
    NEW = "new"
    PRESENT = "present"
    REJECTED = "rejected"
    #: Sent, but the run was interrupted before the answer came: it may be stored.
    UNANSWERED = "unanswered"
    #: Not sent, because the run was interrupted (or the connection lost) first.
    NOT_SENT = "not_sent"


@dataclass(frozen=True, slots=True)
class FileResult:
    file: Candidate
    outcome: Outcome
    size: int = 0
    image_id: int | None = None
    #: Why it was rejected, worded for a person ("The JPEG file is truncated ...").
    reason: str = ""
    #: The same as a stable word for scripts: the image check's reason ("truncated",
    #: "too_many_pixels"), else the server's error code, "unreadable" or "connection_lost".
    code: str = ""
    #: The server answered for it (stored, present or refused), as opposed to a file refused
    #: here, never sent, or sent without an answer: what the summary's rate counts.
    answered: bool = False


def lost_file(file: Candidate, reason: str) -> FileResult:
    """A file not sent because the connection was lost first: a re-run sends it."""
    return FileResult(file, Outcome.NOT_SENT, reason=reason, code="connection_lost")


UNANSWERED_REASON = (
    "sent, but interrupted before the server answered: it may be stored; run the command "
    "again to find out (files already stored come back as present)"
)
NOT_SENT_REASON = "not sent: the run was interrupted"
SESSION_ENDED_REASON = "not sent: the session ended; log in again, then run the command again"


@dataclass(frozen=True, slots=True)
class UploadFields:
    """What every file of one add_image run gets, besides its own bytes and name."""

    title: str | None = None
    description: str = ""
    tags: tuple[str, ...] = ()
    price_cents: int = 0
    quantity: int = 0
    private: bool = False


@dataclass
class UploadSummary:
    results: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0
    #: Stopped by Ctrl-C (or SIGTERM, SIGHUP, `stop_if`): some may be unanswered or not sent.
    interrupted: bool = False
    #: Why the server refused a file for a session that had ended (its message), if it did:
    #: the run stopped sending there, and the caller says so once instead of once a file.
    session_ended: str | None = None
    #: Why the connection was lost during the run (ConnectionLost's words), if it was: the
    #: cause of every file unanswered or not sent for it, said once in the closing line.
    connection_lost: str | None = None

    def count(self, outcome: Outcome) -> int:
        return sum(1 for result in self.results if result.outcome is outcome)

    @property
    def bytes_sent(self) -> int:
        """Only files sent carry a size, rejected by the server ones too: they crossed the
        wire (a run of 400 files all refused for a bad tag said 0.0 MB)."""
        return sum(r.size for r in self.results)

    @property
    def answered(self) -> int:
        return sum(1 for result in self.results if result.answered)

    def line(self) -> str:
        """The closing sentence of a run: counts, volume and rate.

        The rate is of files the server answered: after Ctrl-C, counting the thousand never
        sent too said 720 files/s of a run answered at 55. When some files got no answer the
        rate says so (`files/s answered`), since `files` then means more than those."""
        files = len(self.results)
        seconds = max(self.seconds, 1e-9)
        answered = self.answered
        rate = f"{answered / seconds:.1f} files/s" + (" answered" if answered < files else "")
        megabytes = self.bytes_sent / 1e6
        stopped = ""
        if self.interrupted or self.count(Outcome.UNANSWERED) or self.count(Outcome.NOT_SENT):
            stopped = (
                f", {self.count(Outcome.UNANSWERED)} unanswered, "
                f"{self.count(Outcome.NOT_SENT)} not sent"
            )
        return (
            f"{plural(files, 'file')}: {self.count(Outcome.NEW)} new, "
            f"{self.count(Outcome.PRESENT)} already present, "
            f"{self.count(Outcome.REJECTED)} rejected{stopped} "
            f"({megabytes:.1f} MB in {self.seconds:.1f} s: {rate}, "
            f"{megabytes / seconds:.1f} MB/s)."
        )


def _wire_name(name: str, limit: int) -> str:
    """A str the wire can carry (`stored_name`), cut to the limit.

    Names from os.listdir keep undecodable bytes as lone surrogates, which no UTF-8 encoder
    accepts; the server cleans the name for display anyway (util.filenames). A name of 255
    bytes, all undecodable, is 765 characters escaped, so the cut is for the limit's sake.
    """
    return stored_name(name)[:limit]


def build_request(file: Candidate, data: bytes, fields: UploadFields) -> UploadImage:
    name = _wire_name(file.path.name, MAX_FILENAME_CHARS)
    # The default title is the stem of the name sent, made printable (the server refuses control
    # characters in titles, and a name may hold any byte but '/'): what the server itself makes
    # a blank title from.
    title = fields.title if fields.title is not None else display_name(stored_name(file.path.stem))
    return UploadImage(
        id=0,
        filename=name,
        data=data,
        # composed first: a cut between a letter and its accent would leave the accent alone
        title=unicodedata.normalize("NFC", title)[:MAX_TITLE_CHARS],
        description=fields.description,
        tags=list(fields.tags),
        price_cents=fields.price_cents,
        quantity=fields.quantity,
        private=fields.private,
    )


# --- sending -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Read:
    file: Candidate
    data: bytes


_DONE = object()


class SendingStopped(Exception):
    """`stop_if` said to send no more: the run ends as after a first Ctrl-C."""


class Uploader:
    """Send files over one pipelined connection with a bounded window; see the module docstring.

    `submit` sends one request and returns its future (ClientSession.submit). `on_result` is
    called in the calling thread, once per file, in completion order, so it may print and
    update a progress bar without locks.
    """

    def __init__(
        self,
        submit: Callable[[Request], Future[Response]],
        *,
        window: int = DEFAULT_WINDOW,
        byte_window: int = DEFAULT_BYTE_WINDOW,
        max_image_bytes: int = DEFAULT_MAX_BYTES,
        on_result: Callable[[FileResult], None] = lambda _: None,
        on_interrupt: Callable[[int], None] = lambda _: None,
        interrupt_grace: float = INTERRUPT_GRACE_S,
        interrupts: HeldInterrupts | None = None,
        stop_if: Callable[[], bool] = lambda: False,
    ) -> None:
        if window < 1:
            raise ValueError(f"the window must be at least 1 request, got {window}")
        self.submit = submit
        self.window = window
        self.byte_window = byte_window
        self.max_image_bytes = max_image_bytes
        self.on_result = on_result
        #: Told, on Ctrl-C, how many answers are still awaited (for at most interrupt_grace s).
        self.on_interrupt = on_interrupt
        self.interrupt_grace = interrupt_grace
        #: Held from the first Ctrl-C (or the last answer) on; the caller lets go once it has
        #: said what became of every file.
        self.interrupts = interrupts
        #: Asked before each file is sent; True stops the run as a first Ctrl-C does.
        self.stop_if = stop_if
        self._stop = threading.Event()

    # The reader runs in its own thread so file I/O overlaps sending and the server's work.
    def _read_all(self, files: list[Candidate], out: queue.Queue[object]) -> None:
        try:
            for file in files:
                if self._stop.is_set():
                    return
                item = self._read_one(file)
                while not self._stop.is_set():
                    try:
                        out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        finally:
            with contextlib.suppress(queue.Full):
                out.put(_DONE, timeout=1.0)

    def _read_one(self, file: Candidate) -> _Read | FileResult:
        try:
            with open(file.path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                head = handle.read(1024)
                precheck(head, size, max_bytes=self.max_image_bytes)
                data = head + handle.read()
        except ImageRejected as exc:
            return FileResult(file, Outcome.REJECTED, reason=exc.message, code=exc.reason)
        except OSError as exc:
            reason = f"cannot read it: {exc.strerror}"
            return FileResult(file, Outcome.REJECTED, reason=reason, code="unreadable")
        return _Read(file, data)

    def run(self, files: list[Candidate], fields: UploadFields) -> UploadSummary:
        run = _Run(self, files)
        reads: queue.Queue[object] = queue.Queue(maxsize=READ_AHEAD)
        reader = threading.Thread(
            target=self._read_all, args=(files, reads), name="vitrine-upload-reader", daemon=True
        )
        self._stop.clear()
        reader.start()
        try:
            run.send_all(reads, fields)
            self._hold()  # every answer is in: a Ctrl-C now would only lose the report
        except (KeyboardInterrupt, SendingStopped) as interrupt:
            self._hold()
            self._stop.set()
            run.after_interrupt(interrupt)
        finally:
            self._hold()
            self._stop.set()
            with contextlib.suppress(queue.Empty):
                while True:
                    reads.get_nowait()
            reader.join(timeout=5.0)
            run.summary.seconds = time.perf_counter() - run.started
        return run.summary

    def _hold(self) -> None:
        """Hold Ctrl-C from here on. A press that comes before the holder's handler is in place
        (two presses 20 ms apart) raises here: the first one already stopped the run, so it is
        dropped and the holding tried again. Once the handler is set no press raises."""
        if self.interrupts is None:
            return
        while True:
            try:
                self.interrupts.hold()
                return
            except KeyboardInterrupt:
                continue


def _result_of(file: Candidate, size: int, future: Future[Response]) -> FileResult:
    try:
        response = future.result()
    except VitrineError as exc:
        # The server's sentence for people; the stable word for scripts goes in `code`, in the
        # lower case of every other code (`truncated`, `connection_lost`), even when the
        # server gave no finer reason than its error code (`UNAUTHENTICATED` → `unauthenticated`).
        code = exc.details[0] if exc.details else exc.code.value.lower()
        return FileResult(
            file, Outcome.REJECTED, size, reason=exc.message, code=code, answered=True
        )
    except ConnectionLost as exc:
        # Sent: the server stores what it began even when its client is gone, so this file
        # may well be stored; a re-run says which (as after a Ctrl-C).
        reason = (
            f"sent, but the connection was lost before the server answered ({exc}): it may be "
            "stored; run the command again to find out (files already stored come back as "
            "present)"
        )
        return FileResult(file, Outcome.UNANSWERED, size, reason=reason, code="connection_lost")
    if not isinstance(response, Uploaded):
        reason = f"unexpected answer {type(response).__name__}"
        return FileResult(
            file, Outcome.REJECTED, size, reason=reason, code="unexpected_answer", answered=True
        )
    outcome = Outcome.NEW if response.created else Outcome.PRESENT
    return FileResult(file, outcome, size, image_id=response.image_id, answered=True)


class _Run:
    """One `Uploader.run`: what is on the wire, and the one outcome each file gets."""

    def __init__(self, uploader: Uploader, files: list[Candidate]) -> None:
        self.uploader = uploader
        self.files = files
        self.summary = UploadSummary()
        self.started = time.perf_counter()
        self.done: queue.SimpleQueue[Future[Response]] = queue.SimpleQueue()
        #: On the wire, waiting for the answer: each future's file and size.
        self.in_flight: dict[Future[Response], tuple[Candidate, int]] = {}
        self.bytes_in_flight = 0
        #: The file (and size) whose request is being handed to the connection, and its future
        #: once `submit` returns: from the start of the hand-over the request may reach the
        #: server, even if Ctrl-C stops the call.
        self.sending: tuple[Candidate, int] | None = None
        self.future: Future[Response] | None = None

    def record(self, result: FileResult) -> None:
        self.summary.results.append(result)
        self.uploader.on_result(result)

    def settle(self, future: Future[Response]) -> None:
        file, size = self.in_flight[future]
        self.note_cause(future.exception())  # done: this does not wait
        self.record(_result_of(file, size, future))
        del self.in_flight[future]  # after recording: a Ctrl-C in between still finds the file
        self.bytes_in_flight -= size

    def note_cause(self, exc: BaseException | None) -> None:
        """Keep the first session end and the first lost connection, for the closing line."""
        summary = self.summary
        if isinstance(exc, VitrineError) and exc.code is ErrorCode.UNAUTHENTICATED:
            summary.session_ended = summary.session_ended or exc.message
        elif isinstance(exc, ConnectionLost):
            summary.connection_lost = summary.connection_lost or str(exc)

    def send_all(self, reads: queue.Queue[object], fields: UploadFields) -> None:
        uploader, in_flight = self.uploader, self.in_flight
        lost: str | None = None
        while self.summary.session_ended is None:
            item = reads.get()
            if item is _DONE:
                break
            if isinstance(item, FileResult):
                self.record(item)
                continue
            assert isinstance(item, _Read)
            if lost is not None:
                self.record(lost_file(item.file, lost))
                continue
            size = len(item.data)
            while len(in_flight) >= uploader.window or (
                in_flight and self.bytes_in_flight + size > uploader.byte_window
            ):
                self.settle(self.done.get())
            if self.summary.session_ended is not None:
                break  # the server refuses every request of the connection from now on
            if uploader.stop_if():
                raise SendingStopped
            self.sending, self.future = (item.file, size), None
            try:
                self.future = uploader.submit(build_request(item.file, item.data, fields))
            except ConnectionLost as exc:
                self.sending = None
                self.note_cause(exc)
                lost = f"not sent: the connection was lost ({exc}); run the command again"
                self.record(lost_file(item.file, lost))
                continue
            in_flight[self.future] = self.sending
            self.sending = None
            self.bytes_in_flight += size
            self.future.add_done_callback(self.done.put)
            while True:  # report what finished meanwhile, without waiting
                try:
                    self.settle(self.done.get_nowait())
                except queue.Empty:
                    break
        while in_flight:
            self.settle(self.done.get())
        if self.summary.session_ended is not None:
            # The reader is stopped by Uploader.run's finally. It may have read up to READ_AHEAD
            # files (and one more in hand) past the last one sent: those are reported not sent.
            self.not_sent_rest()

    def not_sent_rest(self) -> None:
        """After the session ended: every file not yet reported was never sent, those read
        and waiting in the queue and those refused here (a re-run says so again) too."""
        reported = {id(result.file) for result in self.summary.results}
        for file in self.files:
            if id(file) not in reported:
                self.record(
                    FileResult(
                        file, Outcome.NOT_SENT, reason=SESSION_ENDED_REASON, code=SESSION_ENDED_CODE
                    )
                )

    def after_interrupt(self, interrupt: BaseException) -> None:
        """Ctrl-C (or SendingStopped): wait a little for the answers already due, then give
        every file not yet reported its outcome, in the order given: unanswered if its request
        may have reached the server (it may be stored), not sent if it never left."""
        self.summary.interrupted = True
        in_flight = self.in_flight
        if isinstance(interrupt, InterruptedAfterSending) and self.future is None:
            # Caught inside `submit` after the request was queued: its future comes with the
            # interrupt, and its answer can still be awaited.
            (self.future,) = interrupt.futures
        if self.sending is not None and self.future is not None:  # sent, not yet in in_flight
            in_flight[self.future] = self.sending
            self.sending = None
        reported = {id(result.file) for result in self.summary.results}
        for future in [f for f, (file, _) in in_flight.items() if id(file) in reported]:
            del in_flight[future]  # Ctrl-C came inside `settle`, after its outcome was recorded
        if in_flight:
            self.uploader.on_interrupt(len(in_flight))
        deadline = time.monotonic() + self.uploader.interrupt_grace
        held = self.uploader.interrupts
        if held is not None:
            self._await_held(held, deadline)
        else:
            with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C stops the wait
                while in_flight and (remaining := deadline - time.monotonic()) > 0:
                    finished, _ = wait(in_flight, timeout=remaining, return_when=FIRST_COMPLETED)
                    for future in finished:
                        self.settle(future)
        reported = {id(result.file) for result in self.summary.results}
        maybe_sent = {id(file): size for file, size in in_flight.values()}
        if self.sending is not None:
            maybe_sent.setdefault(id(self.sending[0]), self.sending[1])
        for file in self.files:
            if id(file) in reported:
                continue
            if id(file) in maybe_sent:
                self.record(
                    FileResult(
                        file,
                        Outcome.UNANSWERED,
                        maybe_sent[id(file)],
                        reason=UNANSWERED_REASON,
                        code="interrupted",
                    )
                )
            else:
                self.record(
                    FileResult(file, Outcome.NOT_SENT, reason=NOT_SENT_REASON, code="interrupted")
                )

    def _await_held(self, held: HeldInterrupts, deadline: float) -> None:
        """The answers already due, until `deadline` or a press (or SIGTERM) the holder counted:
        the oldest request first, and whatever else finished meanwhile as it comes."""
        in_flight = self.in_flight
        while in_flight:
            for future in [f for f in in_flight if f.done()]:
                self.settle(future)
            if not in_flight or (remaining := deadline - time.monotonic()) <= 0:
                return
            if not held.wait(next(iter(in_flight)), remaining):
                for future in [f for f in in_flight if f.done()]:
                    self.settle(future)
                return
