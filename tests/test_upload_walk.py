"""Which files a list of PATHs means, and the pipelined sender's bookkeeping.

The sender is driven here by a scripted `submit` that answers from worker threads in a shuffled
order, which is what the real connection's reader thread does; the end-to-end tests cover the
real wire.
"""

from __future__ import annotations

import io
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import pytest
from PIL import Image

from protocol.base import Request, Response
from protocol.catalog import Uploaded, UploadImage
from protocol.errors import ErrorCode, VitrineError
from shell.connection import ConnectionLost, InterruptedAfterSending
from shell.upload import (
    LINKED_FOLDER,
    FileResult,
    Outcome,
    Uploader,
    UploadFields,
    build_request,
    skip_code,
    walk_paths,
)


def _jpeg(colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    (root / "dresses" / "summer").mkdir(parents=True)
    (root / "hats").mkdir()
    (root / ".cache").mkdir()
    for relative in ("a.jpg", "dresses/b.jpg", "dresses/summer/c.png", "hats/d.jpg"):
        (root / relative).write_bytes(_jpeg())
    (root / ".hidden.jpg").write_bytes(_jpeg())
    (root / ".cache" / "e.jpg").write_bytes(_jpeg())
    return root


def _names(paths: list[Path]) -> list[str]:
    return [path.name for path in paths]


def test_directory_is_walked_recursively_in_order_without_hidden_entries(shop: Path) -> None:
    walked = walk_paths([str(shop)])
    assert walked.problems == []
    assert [f.path.relative_to(shop).as_posix() for f in walked.files] == [
        "a.jpg",
        "dresses/b.jpg",
        "dresses/summer/c.png",
        "hats/d.jpg",
    ]
    assert all(f.size == f.path.stat().st_size for f in walked.files)


def test_files_globs_and_recursive_globs(shop: Path) -> None:
    assert _names([f.path for f in walk_paths([str(shop / "*.jpg")]).files]) == ["a.jpg"]
    deep = walk_paths([str(shop / "**" / "*.jpg")]).files
    assert sorted(_names([f.path for f in deep])) == ["a.jpg", "b.jpg", "d.jpg"]
    single = walk_paths([str(shop / "hats" / "d.jpg")]).files
    assert _names([f.path for f in single]) == ["d.jpg"]


def test_an_explicitly_named_hidden_file_is_taken(shop: Path) -> None:
    assert _names([f.path for f in walk_paths([str(shop / ".hidden.jpg")]).files]) == [
        ".hidden.jpg"
    ]


def test_each_file_once_even_when_reached_twice(shop: Path) -> None:
    (shop / "link.jpg").symlink_to(shop / "a.jpg")
    walked = walk_paths([str(shop / "a.jpg"), str(shop), str(shop / "*.jpg")])
    assert sorted(_names([f.path for f in walked.files])) == [
        "a.jpg",
        "b.jpg",
        "c.png",
        "d.jpg",
    ]


def test_problems_are_reported_per_path_and_do_not_stop_the_rest(
    shop: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    walked = walk_paths(
        [
            str(tmp_path / "missing.jpg"),
            str(tmp_path / "nothing-*.jpg"),
            str(tmp_path / "empty"),
            str(tmp_path / "pipe.jpg"),
            str(tmp_path / "dangling.jpg"),
            str(shop / "a.jpg"),
        ]
    )
    assert _names([f.path for f in walked.files]) == ["a.jpg"]
    reasons = dict(walked.problems)
    assert reasons[str(tmp_path / "missing.jpg")] == "no such file or directory"
    assert reasons[str(tmp_path / "nothing-*.jpg")] == "matches no file"
    assert reasons[str(tmp_path / "empty")] == "the directory holds no files"
    assert reasons[str(tmp_path / "pipe.jpg")] == "not a regular file"
    assert reasons[str(tmp_path / "dangling.jpg")] == "a broken link"
    codes = {given: skip_code(reason) for given, reason in walked.problems}
    assert list(codes.values()) == [
        "not_found", "no_match", "nothing_to_upload", "not_a_file", "broken_link"
    ]  # fmt: skip


def test_directory_link_loops_are_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "loop"
    root.mkdir()
    (root / "x.jpg").write_bytes(_jpeg())
    (root / "again").symlink_to(root)
    walked = walk_paths([str(root)])
    assert _names([f.path for f in walked.files]) == ["x.jpg"]
    assert walked.problems == [(str(root / "again"), LINKED_FOLDER)]


def test_a_recursive_glob_does_not_follow_links_to_folders(tmp_path: Path) -> None:
    """glob's own `**` follows them: two links to a parent doubled its work at every level and
    `add_image 'L/**/*.jpg'` never returned."""
    root = tmp_path / "L"
    (root / "a").mkdir(parents=True)
    (root / "x.jpg").write_bytes(_jpeg())
    (root / "a" / "y.jpg").write_bytes(_jpeg((0, 0, 200)))
    (root / "a" / "l1").symlink_to("..")
    (root / "a" / "l2").symlink_to("..")
    (root / ".cache").mkdir()
    (root / ".cache" / "z.jpg").write_bytes(_jpeg())
    walked: list[list[str]] = []
    worker = threading.Thread(
        target=lambda: walked.append(
            _names([f.path for f in walk_paths([f"{root}/**/*.jpg"]).files])
        ),
        daemon=True,
    )
    worker.start()
    worker.join(20)
    assert walked == [["y.jpg", "x.jpg"]]  # in path order; hidden folders left out, as glob does


def test_links_to_folders_and_broken_links_inside_a_folder_are_said(
    shop: Path, tmp_path: Path
) -> None:
    """They were left out without a word: "41 files: 41 new" of a folder that also linked to
    40 skirts."""
    elsewhere = tmp_path / "skirts"
    elsewhere.mkdir()
    (elsewhere / "s.jpg").write_bytes(_jpeg((10, 200, 10)))
    (shop / "skirts").symlink_to(elsewhere)
    (shop / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    walked = walk_paths([str(shop)])
    assert "s.jpg" not in _names([f.path for f in walked.files])
    assert dict(walked.problems) == {
        str(shop / "gone.jpg"): "a broken link",
        str(shop / "skirts"): LINKED_FOLDER,
    }
    assert [skip_code(reason) for _, reason in walked.problems] == ["broken_link", "linked_folder"]
    named = walk_paths([str(shop / "skirts")])  # named, it is walked
    assert _names([f.path for f in named.files]) == ["s.jpg"]


def test_odd_names_become_wire_safe_text(tmp_path: Path) -> None:
    odd = os.fsdecode(b"bad-\xff-\x1b[31m-name.jpg")
    (tmp_path / odd).write_bytes(_jpeg())
    walked = walk_paths([str(tmp_path)])
    request = build_request(walked.files[0], b"data", UploadFields())
    assert "%FF" in request.filename  # each undecodable byte as %NN: two such names differ
    request.filename.encode("utf-8")  # no lone surrogates left
    assert "\x1b" not in request.title and request.title.startswith("bad-")
    assert "\\xff" in walked.files[0].shown


def test_request_carries_the_fields_and_titles_after_the_file(tmp_path: Path) -> None:
    path = tmp_path / "red dress.jpg"
    path.write_bytes(_jpeg())
    file = walk_paths([str(path)]).files[0]
    fields = UploadFields(tags=("red", "dress"), price_cents=1250, quantity=3, private=True)
    request = build_request(file, b"bytes", fields)
    assert (request.filename, request.title) == ("red dress.jpg", "red dress")
    assert request.data == b"bytes"
    assert (request.tags, request.price_cents, request.quantity, request.private) == (
        ["red", "dress"],
        1250,
        3,
        True,
    )
    titled = build_request(file, b"bytes", UploadFields(title="Summer"))
    assert titled.title == "Summer"


# --- the sender ----------------------------------------------------------------------------------


class ScriptedServer:
    """Answers uploads from other threads, out of order, and records how many were in flight."""

    def __init__(self, *, lose_after: int | None = None) -> None:
        #: Set to stop answering, as a server that hangs would.
        self.silent = False
        self.in_flight = 0
        self.peak = 0
        self.sent: list[UploadImage] = []
        self.seen: dict[bytes, int] = {}
        self.lose_after = lose_after
        self.lock = threading.Lock()
        self.rng = random.Random(7)

    def submit(self, request: Request) -> Future[Response]:
        assert isinstance(request, UploadImage)
        with self.lock:
            if self.lose_after is not None and len(self.sent) >= self.lose_after:
                raise ConnectionLost("the server closed the connection")
            self.sent.append(request)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        future: Future[Response] = Future()
        delay = self.rng.uniform(0, 0.01)
        threading.Timer(delay, self._answer, args=(request, future)).start()
        return future

    def _answer(self, request: UploadImage, future: Future[Response]) -> None:
        with self.lock:
            if self.silent:
                return
            self.in_flight -= 1
            if request.filename.startswith("refused"):
                error = VitrineError(ErrorCode.UNSUPPORTED_IMAGE, "The JPEG is truncated.")
                future.set_exception(error)
                return
            known = self.seen.get(request.data)
            created = known is None
            if known is None:
                known = self.seen[request.data] = len(self.seen) + 1
            future.set_result(Uploaded(id=1, image_id=known, created=created))


def _folder(tmp_path: Path, count: int) -> Path:
    folder = tmp_path / "many"
    folder.mkdir()
    for index in range(count):
        colour = (index * 7 % 256, index * 13 % 256, index * 29 % 256)
        (folder / f"img-{index:03d}.jpg").write_bytes(_jpeg(colour))
    return folder


def test_window_bounds_requests_in_flight_and_every_file_gets_one_outcome(tmp_path: Path) -> None:
    folder = _folder(tmp_path, 60)
    (folder / "refused.jpg").write_bytes(_jpeg())
    (folder / "text.jpg").write_bytes(b"just some notes, not a photo")
    (folder / "zero.jpg").write_bytes(b"")
    files = walk_paths([str(folder)]).files
    server = ScriptedServer()
    seen: list[str] = []
    uploader = Uploader(server.submit, window=5, on_result=lambda r: seen.append(r.file.shown))
    summary = uploader.run(files, UploadFields())
    assert sorted(seen) == sorted(f.shown for f in files)
    assert server.peak <= 5
    assert server.peak > 1  # it did pipeline
    by_name = {r.file.path.name: r for r in summary.results}
    assert by_name["refused.jpg"].outcome is Outcome.REJECTED
    assert by_name["refused.jpg"].reason == "The JPEG is truncated."
    assert by_name["refused.jpg"].code == "unsupported_image"  # lower case like every code
    assert by_name["text.jpg"].outcome is Outcome.REJECTED
    assert "not an image" in by_name["text.jpg"].reason
    assert by_name["zero.jpg"].outcome is Outcome.REJECTED
    assert "empty" in by_name["zero.jpg"].reason
    # Files refused locally never reach the server.
    assert {r.filename for r in server.sent} >= {"img-000.jpg", "refused.jpg"}
    assert not {"text.jpg", "zero.jpg"} & {r.filename for r in server.sent}
    assert summary.count(Outcome.NEW) == 60
    assert summary.line().startswith("63 files: 60 new, 0 already present, 3 rejected")


def test_a_single_file_is_counted_in_the_singular(tmp_path: Path) -> None:
    files = walk_paths([str(_folder(tmp_path, 1))]).files
    summary = Uploader(ScriptedServer().submit, window=4).run(files, UploadFields())
    assert summary.line().startswith("1 file: 1 new, ")


def test_the_same_run_again_reports_everything_present(tmp_path: Path) -> None:
    files = walk_paths([str(_folder(tmp_path, 20))]).files
    server = ScriptedServer()
    first = Uploader(server.submit, window=4).run(files, UploadFields())
    again = Uploader(server.submit, window=4).run(files, UploadFields())
    ids = {r.file.shown: r.image_id for r in first.results}
    assert first.count(Outcome.NEW) == 20
    assert again.count(Outcome.PRESENT) == 20
    assert {r.file.shown: r.image_id for r in again.results} == ids


def test_byte_window_limits_memory_but_lets_a_big_file_through(tmp_path: Path) -> None:
    files = walk_paths([str(_folder(tmp_path, 10))]).files
    server = ScriptedServer()
    summary = Uploader(server.submit, window=32, byte_window=1).run(files, UploadFields())
    assert server.peak == 1
    assert summary.count(Outcome.NEW) == 10


def test_files_sent_before_the_connection_was_lost_are_unanswered_not_rejected(
    tmp_path: Path,
) -> None:
    """The server stores what it began even when its client is gone: a file whose answer the
    lost connection took may be stored, and a re-run tells (as after a Ctrl-C)."""
    files = walk_paths([str(_folder(tmp_path, 6))]).files

    def answered_then_lost(request: Request) -> Future[Response]:
        future: Future[Response] = Future()
        if request.filename.startswith(("img-000", "img-001")):
            future.set_result(Uploaded(id=1, image_id=len(request.filename), created=True))
        else:
            future.set_exception(ConnectionLost("the server closed the connection"))
        return future

    summary = Uploader(answered_then_lost, window=3).run(files, UploadFields())
    assert [r.outcome for r in summary.results].count(Outcome.NEW) == 2
    unanswered = [r for r in summary.results if r.outcome is Outcome.UNANSWERED]
    assert len(unanswered) == 4 and all(r.code == "connection_lost" for r in unanswered)
    assert all("it may be stored" in r.reason for r in unanswered)
    assert "4 unanswered" in summary.line()


def test_a_lost_connection_leaves_the_rest_not_sent_with_advice(tmp_path: Path) -> None:
    files = walk_paths([str(_folder(tmp_path, 12))]).files
    server = ScriptedServer(lose_after=5)
    summary = Uploader(server.submit, window=3).run(files, UploadFields())
    assert len(summary.results) == 12
    assert summary.count(Outcome.NEW) == 5 and summary.count(Outcome.REJECTED) == 0
    lost = [r for r in summary.results if r.outcome is Outcome.NOT_SENT]
    assert len(lost) == 7 and all(r.code == "connection_lost" for r in lost)
    assert all("run the command again" in r.reason for r in lost)
    assert "7 not sent" in summary.line()


class CtrlCAfter:
    """An `on_result` that raises KeyboardInterrupt once `n` files have their outcome: Ctrl-C
    as cmd2 delivers it, in the sending thread, at one of the places it can land."""

    def __init__(self, n: int, then: Callable[[], None] = lambda: None) -> None:
        self.n, self.then, self.seen = n, then, 0

    def __call__(self, result: FileResult) -> None:
        self.seen += 1
        if self.seen == self.n:
            self.then()
            raise KeyboardInterrupt


def test_ctrl_c_waits_for_the_answers_already_due_and_counts_the_rest_not_sent(
    tmp_path: Path,
) -> None:
    """Files already on the wire are stored by the server whatever the client does: the user
    must hear which, so Ctrl-C stops sending but still waits for their answers."""
    files = walk_paths([str(_folder(tmp_path, 40))]).files
    server = ScriptedServer()
    told: list[int] = []
    uploader = Uploader(server.submit, window=4, on_result=CtrlCAfter(6), on_interrupt=told.append)
    summary = uploader.run(files, UploadFields())
    assert summary.interrupted
    assert [r.file for r in summary.results if r.outcome is Outcome.NOT_SENT] == [
        f for f in files if f.path.name not in {r.filename for r in server.sent}
    ]
    # every file sent was answered within the grace, and reported once, as stored
    assert summary.count(Outcome.NEW) == len(server.sent) >= 6
    assert summary.count(Outcome.UNANSWERED) == 0
    assert sorted(r.file.shown for r in summary.results) == sorted(f.shown for f in files)
    assert len(told) == 1 and 1 <= told[0] <= 4
    assert summary.count(Outcome.NOT_SENT) > 0
    assert ", 0 unanswered, " in summary.line()


def test_ctrl_c_with_a_silent_server_reports_what_was_sent_as_unanswered(tmp_path: Path) -> None:
    files = walk_paths([str(_folder(tmp_path, 30))]).files
    server = ScriptedServer()
    ctrl_c = CtrlCAfter(5, then=lambda: setattr(server, "silent", True))
    started = time.monotonic()
    uploader = Uploader(server.submit, window=4, on_result=ctrl_c, interrupt_grace=0.3)
    summary = uploader.run(files, UploadFields())
    assert time.monotonic() - started < 5  # gave up waiting after the grace
    unanswered = {r.file.path.name for r in summary.results if r.outcome is Outcome.UNANSWERED}
    answered = {r.file.path.name for r in summary.results if r.outcome is Outcome.NEW}
    assert answered | unanswered == {r.filename for r in server.sent}
    assert unanswered and not answered & unanswered
    assert all(
        "may be stored" in r.reason for r in summary.results if r.outcome.value == "unanswered"
    )
    assert summary.count(Outcome.NOT_SENT) == 30 - len(server.sent)
    assert len(summary.results) == 30


def test_ctrl_c_after_a_request_was_queued_still_waits_for_its_answer(tmp_path: Path) -> None:
    """The connection hands over the future of a request whose frame it had queued when Ctrl-C
    came (InterruptedAfterSending): that file is stored, and must be reported so."""
    files = walk_paths([str(_folder(tmp_path, 10))]).files
    server = ScriptedServer()

    def interrupted_on_the_fourth(request: Request) -> Future[Response]:
        future = server.submit(request)
        if len(server.sent) == 4:
            raise InterruptedAfterSending([future])
        return future

    summary = Uploader(interrupted_on_the_fourth, window=2).run(files, UploadFields())
    outcomes = [r.outcome for r in sorted(summary.results, key=lambda r: r.file.shown)]
    assert outcomes == [Outcome.NEW] * 4 + [Outcome.NOT_SENT] * 6


def test_unreadable_file_is_rejected_alone(tmp_path: Path) -> None:
    """A file gone between the walk and the read (or unreadable) fails alone, with the reason."""
    folder = _folder(tmp_path, 3)
    files = walk_paths([str(folder)]).files
    (folder / "img-001.jpg").unlink()
    summary = Uploader(ScriptedServer().submit).run(files, UploadFields())
    outcomes = {r.file.path.name: r.outcome for r in summary.results}
    assert outcomes == {
        "img-000.jpg": Outcome.NEW,
        "img-001.jpg": Outcome.REJECTED,
        "img-002.jpg": Outcome.NEW,
    }
    gone = next(r for r in summary.results if r.outcome is Outcome.REJECTED)
    assert "cannot read it" in gone.reason


def test_reader_thread_stops_when_the_sender_fails(tmp_path: Path) -> None:
    files = walk_paths([str(_folder(tmp_path, 40))]).files

    def broken(request: Request) -> Future[Response]:
        raise RuntimeError("bug in the sender")

    before = threading.active_count()
    with pytest.raises(RuntimeError):
        Uploader(broken, window=2).run(files, UploadFields())
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before


def test_a_directory_walk_leaves_files_not_named_as_images_alone(tmp_path: Path) -> None:
    """A readme beside the photos used to be sent, refused, and fail the whole run."""
    root = tmp_path / "folder"
    root.mkdir()
    for name in ("photo.JPG", "NOSUFFIX", "scan.TIF", "notes.jpg"):
        (root / name).write_bytes(_jpeg())
    (root / "readme.txt").write_text("prices are per item")
    (root / "catalogue.PDF").write_bytes(b"%PDF-1.4")
    walked = walk_paths([str(root)])
    # an unsupported image format is still tried, so its refusal says why
    assert _names([f.path for f in walked.files]) == [
        "NOSUFFIX",
        "notes.jpg",
        "photo.JPG",
        "scan.TIF",
    ]
    assert _names([Path(p) for p in walked.ignored]) == ["catalogue.PDF", "readme.txt"]
    assert walked.problems == []
    # named outright, any file is tried
    assert _names([f.path for f in walk_paths([str(root / "readme.txt")]).files]) == ["readme.txt"]


def test_a_directory_of_only_other_files_says_it_holds_no_image_files(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "readme.txt").write_text("nothing to see")
    walked = walk_paths([str(root)])
    assert walked.files == []
    assert walked.problems == [(str(root), "the directory holds no image files")]


def test_globs_and_repeated_directories_ignore_each_other_file_once(tmp_path: Path) -> None:
    """`shop/**` matched readme.txt itself and sent it; `shop shop/sub` listed sub's readme
    twice and said sub held no files although its photo had been taken already."""
    root = tmp_path / "shop"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(_jpeg())
    (root / "sub" / "b.jpg").write_bytes(_jpeg())
    (root / "readme.txt").write_text("hello")
    (root / "sub" / "notes.txt").write_text("hello")
    for given in ([str(root / "**")], [str(root), str(root / "sub")]):
        walked = walk_paths(given)
        assert sorted(_names([f.path for f in walked.files])) == ["a.jpg", "b.jpg"], given
        assert sorted(_names([Path(p) for p in walked.ignored])) == ["notes.txt", "readme.txt"]
        assert walked.problems == [], given


def test_globs_report_each_problem_once_never_walk_a_link_and_find_hidden_names_asked_for(
    shop: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "far.jpg").write_bytes(_jpeg())
    (shop / "dresses" / "summer" / "up").symlink_to(elsewhere)
    (shop / "dresses" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    # `shop/**` names every folder under shop: each entry is met again from every folder above
    every_folder = walk_paths([f"{shop}/**"])
    assert sorted(every_folder.problems) == sorted(
        [
            (str(shop / "dresses" / "gone.jpg"), "a broken link"),
            (str(shop / "dresses" / "summer" / "up"), LINKED_FOLDER),
        ]
    )
    # `**/*` matches the link itself: reported, not walked into
    everything = walk_paths([f"{shop}/**/*"])
    assert "far.jpg" not in _names([f.path for f in everything.files])
    assert (str(shop / "dresses" / "summer" / "up"), LINKED_FOLDER) in everything.problems
    # a pattern that asks for hidden names gets them
    hidden = walk_paths([f"{shop}/.h*"])
    assert _names([f.path for f in hidden.files]) == [".hidden.jpg"]
