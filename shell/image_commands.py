"""Image commands: add_image, update_image, delete_image, show_image.

Bulk sending is shell.upload's job; this module turns flags into requests and answers into what
a person (or a script, with --json) reads. Every command that fails for some of its files or ids
still finishes the others and then sets a non-zero exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import cmd2
import msgspec
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    Task,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Column, Table
from rich.text import Text

from protocol.catalog import (
    DeleteImage,
    GetImage,
    ImageDetails,
    ImageUpdated,
    UpdateImage,
)
from protocol.errors import ErrorCode, VitrineError
from protocol.limits import MAX_TAGS
from shell import listing
from shell.app import (
    COMMA_SEPARATED,
    IMAGES,
    CommandFailed,
    VitrineShell,
    image_id,
    parser,
    whole_number,
    write_json_lines,
)
from shell.connection import ConnectionLost, InterruptedAfterSending, unexpected_response
from shell.interrupts import HeldInterrupts
from shell.pictures import picture_renderable
from shell.swatches import NOT_COMPUTED, palette_text
from shell.text import is_terminal, plural, printable, sentence
from shell.upload import (
    DEFAULT_WINDOW,
    INTERRUPT_GRACE_S,
    SESSION_ENDED_CODE,
    FileResult,
    Outcome,
    Uploader,
    UploadFields,
    UploadSummary,
    WalkResult,
    shown_path,
    skip_code,
    walk_paths,
)
from util import catalogue_text
from util.filenames import save_name
from util.images import DEFAULT_MAX_BYTES
from util.money import format_cents, price_arg, quantity_arg, stock_change_arg

#: Above this many files, new uploads and files already stored are counted rather than listed
#: (unless --verbose); refusals are always listed.
LIST_EACH_UP_TO = 20
#: Seconds between flushes of per-file lines, so printing never slows a big upload.
PRINT_EVERY_S = 0.25
#: Largest picture show_image draws, in cells.
SHOW_CELLS = (64, 32)


# --- argument types ------------------------------------------------------------------------------


#: Quote marks a tag can start or end with only when the shell's quoting did not group it.
QUOTES = "\"'"


def tag_list_of(flag: str, per: str = "per image") -> Callable[[str], list[str]]:
    """An argparse type for a comma-separated tag flag: "a, B,,c" -> ["a", "b", "c"]: blanks
    dropped, each in the server's one spelling (util.catalogue_text), repeats once. A tag the
    server would refuse is refused here, before a bulk upload sends every file only to have
    each one refused for it. `per` says what the limit of MAX_TAGS applies to."""

    def tag_list(text: str) -> list[str]:
        tags: list[str] = []
        for raw in text.split(","):
            if not raw.strip():
                continue
            if raw.strip()[0] in QUOTES or raw.strip()[-1] in QUOTES:
                # `--tags hat,"straw hat"`: cmd2 groups a quote only at the start of a word,
                # so this arrives as `hat,"straw` and `hat"`; "tags use letters" would not say
                # what to type instead.
                raise argparse.ArgumentTypeError(
                    f"Invalid tag {printable(raw.strip())!r}: a quote in the middle of the list "
                    f"does not group words; quote the whole list instead, as in: {flag} "
                    '"hat,straw hat"'
                )
            try:
                tag = catalogue_text.normalise_tag(raw)
            except catalogue_text.TextRefused as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None
            if tag not in tags:
                tags.append(tag)
        if len(tags) > MAX_TAGS:
            raise argparse.ArgumentTypeError(f"at most {MAX_TAGS} tags {per}, not {len(tags)}")
        return tags

    tag_list.__name__ = "tag_list"  # argparse names a type by it in its own messages
    setattr(tag_list, COMMA_SEPARATED, True)  # for ShellArgumentParser's advice
    return tag_list


def add_tag_list_argument(
    parser: argparse.ArgumentParser, flag: str, help: str, per: str = "per image"
) -> None:
    """A comma-separated tag flag, completed from the tags the server knows."""
    parser.add_argument(
        flag,
        type=tag_list_of(flag, per),
        default=[],
        metavar="a,b",
        completer=listing.complete_tag_list,
        help=help,
    )


def bounded_text(what: str) -> Any:
    """A title or description as the server will keep it: composed (NFC), within its limit
    once composed, and without the control characters the server refuses (checked here, before
    a bulk upload sends every file). Sent composed, since the wire counts what it carries: 300
    code points that compose to 150 characters are a title of 150."""

    def convert(text: str) -> str:
        try:
            return catalogue_text.clean_text(text, what)
        except catalogue_text.TextRefused as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def window_size(text: str) -> int:
    try:
        value = whole_number(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of requests") from None
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError("the window is 1 to 256 requests")
    return value


def _add_catalogue_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--price", type=price_arg, metavar="12.50", help="unit price")
    command.add_argument("--title", type=bounded_text("title"), metavar="T", help="title")
    command.add_argument(
        "--description",
        type=bounded_text("description"),
        metavar="D",
        help="longer text, searchable like the title",
    )


#: Why an answer is missing after Ctrl-C.
INTERRUPTED = "interrupted before the server answered"


def outcome_unknown(number: int, why: str, done: str) -> str:
    """What is said when a request was sent and no answer came: the server acts on what it
    was sent whatever the shell does, so the change may well have been made. Saying "not
    deleted" would be wrong half the time, and a retry then finds the image gone (NOT_FOUND)
    and says "not deleted" again."""
    return (
        f"#{number}: outcome unknown: the request was sent, but {why}; it may have been "
        f"{done}. `show_image {number}` tells."
    )


# --- add_image's output --------------------------------------------------------------------------


#: How many left-alone file names the summary spells out.
IGNORED_SHOWN = 5


#: The outcomes the bar counts as done; a file unanswered or not sent is not.
_DONE = frozenset({Outcome.NEW, Outcome.PRESENT, Outcome.REJECTED})


class _Report:
    """Per-file lines and the progress bar of one add_image run.

    Lines are gathered and printed together every PRINT_EVERY_S, so thousands of outcomes cost
    a few hundred writes, not thousands of redraws of the live progress bar. With --json the
    lines go straight to stdout, which then never carries the bar (_progress_for).

    A reader of stdout that has gone (`| head -1`) stops the sending (`gone`, asked before each
    file). Waiting for a write to fail was too late: the lines of a quarter of a second fit in
    the pipe's buffer, so the write that found the reader gone came a flush later, and 132
    more files had been sent meanwhile. From then on lines are dropped, not written.
    """

    def __init__(
        self,
        shell: VitrineShell,
        progress: Progress | None,
        total: int,
        args: Any,
        interrupts: HeldInterrupts,
    ):
        self.shell = shell
        self.progress = progress
        self.task = (
            progress.add_task("uploading", total=None, files=0, all_files=total)
            if progress
            else None
        )
        self.files = 0
        self.json = bool(args.json)
        #: Whether files stored (new or already present) get a line each: a re-run of an
        #: interrupted upload, as the summary advises, found hundreds already present, and a
        #: line for each buried the few that needed the user.
        self.list_each = bool(args.verbose) or total <= LIST_EACH_UP_TO
        self.pending: list[str] = []
        #: The first line is written at once: a reader that wants only it (`head -1`) has it,
        #: and goes, before a quarter of a second's files are sent for nobody.
        self.flushed = -PRINT_EVERY_S
        self.interrupts = interrupts
        #: The results (by id) given a line: one the first Ctrl-C kept from `__call__` gets
        #: its line from `catch_up`, so every file has one.
        self.taken: set[int] = set()
        #: Whoever read stdout has closed it: nothing more is written there.
        self.output_gone = False

    def gone(self) -> bool:
        """Whether stdout's reader has gone: asked of the pipe itself (no write needed), so
        the run stops before its next file, not at its next flush."""
        if not self.output_gone and self.shell.reader_gone():
            self.output_gone = True
        return self.output_gone

    def stopped_why(self) -> str:
        """How the summary of a stopped run starts."""
        if self.interrupts.terminated is not None:
            return f"Stopped by {signal.Signals(self.interrupts.terminated).name}."
        if self.output_gone:
            return "Stopped: whoever read the output has closed it."
        return "Interrupted."

    def line(self, result: FileResult) -> str | None:
        if self.json:
            value: dict[str, Any] = {"path": result.file.shown, "outcome": result.outcome.value}
            if result.image_id is not None:
                value["id"] = result.image_id
            if result.reason:
                value["reason"] = result.reason
                value["code"] = result.code
            return msgspec.json.encode(value).decode()
        shown = printable(result.file.shown)
        if result.outcome is Outcome.NEW:
            return f"new       #{result.image_id}  {shown}" if self.list_each else None
        if result.outcome is Outcome.PRESENT:
            return (
                f"present   #{result.image_id}  {shown} (already stored)"
                if self.list_each
                else None
            )
        if result.outcome is Outcome.NOT_SENT:
            return None  # counted in the summary: after Ctrl-C there may be thousands
        if result.code == SESSION_ENDED_CODE:
            return None  # the same reason for each file sent meanwhile: the summary says it once
        return f"{result.outcome.value:<9} {shown}: {printable(result.reason)}"

    def __call__(self, result: FileResult) -> None:
        with self.interrupts.whole():
            self.take(result)
            if time.monotonic() - self.flushed >= PRINT_EVERY_S:
                self.flush()

    def take(self, result: FileResult) -> None:
        if id(result) in self.taken:
            return
        self.taken.add(id(result))
        if self.progress is not None and self.task is not None:
            # only files answered (or refused here) are done: after Ctrl-C the bar said
            # "2400/2400 files" of a run that had sent a tenth of them
            if result.outcome in _DONE:
                self.files += 1
            self.progress.update(self.task, advance=result.size, files=self.files)
        text = self.line(result)
        if text is not None:
            self.pending.append(text)

    def catch_up(self, results: Iterable[FileResult]) -> None:
        for result in results:
            self.take(result)

    def interrupted(self, waiting: int) -> None:
        """Ctrl-C: say why the run does not stop at once, and how to make it. The bar goes
        first: its counts stop meaning anything, and the notice would be drawn into it.
        SIGTERM and SIGHUP do not wait (HeldInterrupts.wait): nobody is there to."""
        self.flush()
        self.stop_bar()
        uploads = plural(waiting, "upload")
        why = self.stopped_why().rstrip(".")
        if self.interrupts.terminated is not None:
            message = f"{why}: not waiting for the answers to {uploads} already sent."
        else:
            again = "" if self.output_gone else " again"
            message = (
                f"{why}: waiting up to {INTERRUPT_GRACE_S:g} s for the answers to {uploads} "
                f"already sent (Ctrl-C{again} to stop waiting)."
            )
        with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
            self.shell.perror(message, style=None)

    def stop_bar(self) -> None:
        """Take the bar off the screen (it is transient); what follows is printed plainly."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def flush(self) -> None:
        self.flushed = time.monotonic()
        if not self.pending:
            return
        text = "\n".join(self.pending)
        self.pending = []
        if self.output_gone:
            return
        if self.json:
            try:
                self.shell.stdout.write(text + "\n")
                self.shell.stdout.flush()
            except BrokenPipeError:  # the command raises it once every file is accounted for
                self.output_gone = True
        elif self.progress is not None:
            self.progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            self.shell.poutput(text)


#: What a run that did not send everything advises (the server reports stored files as present):
#: a clause, to follow "Then " (after the server's "log in again"); `sentence` begins a
#: sentence with it.
RUN_AGAIN = (
    "run the same command again to send the rest: files already stored come back as present, "
    "not twice."
)


#: The widest the bar itself is drawn, and the narrowest worth drawing, in cells.
BAR_WIDTH = (40, 8)


class _UploadProgress(Progress):
    """add_image's bar, on one line at any width. Rich wraps a row too wide for the terminal
    onto a second line ("148.3…" cut off), which the live display then redraws badly; columns
    are left out instead, the least telling first, and the bar itself shrinks."""

    #: Left out in this order while the line is too wide; the count of files always stays.
    DROPPED_FIRST = ("speed", "description", "remaining", "bar", "bytes")

    def __init__(self, console: Console, *, on_stderr: bool) -> None:
        #: Rich's own `console` is there only once Progress.__init__ is done, which draws.
        self.screen = console

        def cell() -> Column:
            return Column(no_wrap=True)

        self.bar = BarColumn(bar_width=BAR_WIDTH[0])
        self.named: dict[str, Any] = {
            "description": TextColumn("[bold]{task.description}", table_column=cell()),
            "bar": self.bar,
            "files": TextColumn(
                "{task.fields[files]}/{task.fields[all_files]} files", table_column=cell()
            ),
            "bytes": DownloadColumn(table_column=cell()),
            "speed": TransferSpeedColumn(table_column=cell()),
            "remaining": TimeRemainingColumn(table_column=cell()),
        }
        # Nothing prints to sys.stdout meanwhile (the shell writes to its own stdout); what goes
        # to sys.stderr is drawn above a bar on stderr, and left where it goes otherwise.
        super().__init__(
            *self.named.values(),
            console=console,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=on_stderr,
        )

    def make_tasks_table(self, tasks: Iterable[Task]) -> Table:
        tasks = [task for task in tasks if task.visible]
        widths = {
            name: max((_cells(column(task)) for task in tasks), default=0)
            for name, column in self.named.items()
            if name != "bar"
        }
        widths["bar"] = BAR_WIDTH[1]
        kept = list(self.named)

        def needed() -> int:
            return sum(widths[name] for name in kept) + len(kept) - 1

        room = self.screen.width
        for name in self.DROPPED_FIRST:
            if needed() <= room:
                break
            kept.remove(name)
        if "bar" in kept:
            self.bar.bar_width = min(BAR_WIDTH[0], BAR_WIDTH[1] + room - needed())
        every = self.columns
        self.columns = tuple(self.named[name] for name in kept)
        try:
            return super().make_tasks_table(tasks)
        finally:
            self.columns = every


def _cells(renderable: Any) -> int:
    return renderable.cell_len if isinstance(renderable, Text) else len(str(renderable))


def _same_stream(one: Any, other: Any) -> bool:
    """Whether two streams write to the same place (one terminal, `2>&1`): only then does a
    line on stderr that says "see above" point at the lines on stdout."""
    try:
        first, second = os.fstat(one.fileno()), os.fstat(other.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def _is_regular_file(stream: IO[str]) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):
        return False


def _progress_for(shell: VitrineShell, as_json: bool) -> Progress | None:
    """A live bar on a terminal only: piped output gets the lines and the summary, no redraws.

    With --json, stdout holds the JSON lines and nothing else, so the bar goes to stderr, and
    only when the lines go to a file (`client.py … "add_image big/ --json" > out.jsonl`): on
    the terminal, or through a pipe to it (`| jq`), they would be drawn into the bar."""
    if as_json:
        if not (is_terminal(sys.stderr) and _is_regular_file(shell.stdout)):
            return None
        return _UploadProgress(Console(file=sys.stderr), on_stderr=True)
    if not is_terminal(shell.stdout):
        return None
    return _UploadProgress(Console(file=shell.stdout), on_stderr=False)


# --- the commands --------------------------------------------------------------------------------


class ImageCommands(cmd2.CommandSet[VitrineShell]):
    DEFAULT_CATEGORY = IMAGES

    add_parser = parser(
        "Upload photos. Each PATH is a file, a directory (walked recursively; hidden files are "
        "skipped) or a glob such as 'shop/*.jpg'. Every file gets its own outcome (new id, "
        "already present, or rejected with the reason); the exit status is non-zero if any "
        "file was rejected. Without --title, each image is titled after its file name."
    )
    add_parser.add_argument(
        "paths", nargs="+", metavar="PATH", completer=cmd2.Cmd.path_complete, help="what to send"
    )
    add_tag_list_argument(add_parser, "--tags", "comma-separated tags for every file")
    _add_catalogue_flags(add_parser)
    add_parser.add_argument("--quantity", type=quantity_arg, metavar="N", help="units in stock")
    add_parser.add_argument("--private", action="store_true", help="only you will see them")
    add_parser.add_argument(
        "--verbose", action="store_true", help="list every file, not only the notable ones"
    )
    add_parser.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per file per line: path, outcome, id or reason",
    )
    add_parser.add_argument(
        "--window",
        type=window_size,
        default=DEFAULT_WINDOW,
        metavar="N",
        help=f"uploads in flight at once (default {DEFAULT_WINDOW}, capped by the server)",
    )

    @cmd2.with_argparser(add_parser)
    def do_add_image(self, args: argparse.Namespace) -> None:
        shell = self._cmd
        walked = walk_paths(args.paths)
        for given, reason in walked.problems:
            shell.perror(f"skipped {printable(given)}: {reason}")
            if args.json:  # scripts see every path they gave on stdout, as one line each
                skipped = {
                    "path": shown_path(given),
                    "outcome": "skipped",
                    "reason": reason,
                    "code": skip_code(reason),
                }
                write_json_lines(shell, [skipped])
        if args.json:
            not_an_image = "not an image file name"
            write_json_lines(
                shell,
                (
                    {
                        "path": path,
                        "outcome": "ignored",
                        "reason": not_an_image,
                        "code": "not_an_image_name",
                    }
                    for path in walked.ignored
                ),
            )
        if not walked.files:
            raise CommandFailed("No files to upload.")
        shell.session.ensure_connected()
        limits = shell.session.connection.limits
        window = min(args.window, limits.max_in_flight) if limits else args.window
        max_bytes = limits.max_image_bytes if limits else DEFAULT_MAX_BYTES
        fields = UploadFields(
            title=args.title,
            description=args.description or "",
            tags=tuple(args.tags),
            price_cents=args.price or 0,
            quantity=args.quantity or 0,
            private=args.private,
        )
        total_bytes = sum(file.size for file in walked.files)
        progress = _progress_for(shell, args.json)
        interrupts = HeldInterrupts()
        report = _Report(shell, progress, len(walked.files), args, interrupts)
        if progress is not None and report.task is not None:
            progress.update(report.task, total=total_bytes)
        uploader = Uploader(
            shell.session.submit,
            window=window,
            max_image_bytes=max_bytes,
            on_result=report,
            on_interrupt=report.interrupted,
            interrupts=interrupts,
            stop_if=report.gone,
        )
        try:
            # The Uploader holds Ctrl-C from the first press (or the last answer) on, until the
            # end of this block: the summary always ends the run. SIGTERM and SIGHUP stop it as
            # Ctrl-C does, and end the shell (`end`) once the summary is out.
            with interrupts.stopping(), interrupts:
                try:
                    if progress is not None:
                        progress.start()
                    summary = uploader.run(walked.files, fields)
                    report.catch_up(summary.results)
                finally:
                    report.flush()
                    report.stop_bar()
                try:
                    self._summarise(summary, report, walked, fields, args)
                except OSError:
                    if interrupts.terminated is None:  # else SIGHUP: the terminal may be gone
                        raise
        finally:
            interrupts.end()
        if report.output_gone:
            # After the summary (on stderr): the shell stops as on any broken pipe (exit 141).
            raise BrokenPipeError(32, "whoever read the output has closed it")

    def _summarise(
        self,
        summary: UploadSummary,
        report: _Report,
        walked: WalkResult,
        fields: UploadFields,
        args: argparse.Namespace,
    ) -> None:
        shell = self._cmd
        line = summary.line()
        stored = summary.count(Outcome.NEW) + summary.count(Outcome.PRESENT)
        if not report.list_each and not args.json and stored and summary.session_ended is None:
            # (after a session end the files not stored are counted below, and --verbose
            # lists only the stored ones: the advice would promise what it does not show)
            line += " Add --verbose to list every file."
        present = summary.count(Outcome.PRESENT)
        if present and fields != UploadFields():
            # a re-run with new flags does not change what is stored; say so, or it reads as done
            they = "it keeps" if present == 1 else "they keep"
            line += (
                f" {plural(present, 'file')} already present: {they} the title, description, "
                "tags, price, stock and visibility stored before; update_image ID changes them."
            )
        if walked.ignored:
            shown = walked.ignored[:IGNORED_SHOWN]
            names = ", ".join(printable(os.path.basename(path)) for path in shown)
            more = ", …" if len(walked.ignored) > len(shown) else ""
            line += (
                f" Left alone {plural(len(walked.ignored), 'file')} in the folders whose names "
                f"are not images ({names}{more}); name one to try it."
            )
        if summary.interrupted:
            line = f"{report.stopped_why()} {line}"
            if summary.count(Outcome.UNANSWERED) or summary.count(Outcome.NOT_SENT):
                line += f" {sentence(RUN_AGAIN)}"
        if args.json or report.gone():
            shell.perror(line, style=None)
        else:
            shell.poutput(line)
        if summary.session_ended is not None:
            self._session_ended(summary, walked)
            return
        if summary.interrupted:
            shell.exit_code = 1  # the line above is the whole report; fail() would repeat it
            return
        rejected, skipped = summary.count(Outcome.REJECTED), len(walked.problems)
        # the connection was lost meanwhile: sent without an answer, or not sent at all
        unanswered = summary.count(Outcome.UNANSWERED)
        not_sent = summary.count(Outcome.NOT_SENT)
        if rejected or skipped or unanswered or not_sent:
            parts = [plural(rejected, "file") + " rejected"] if rejected else []
            parts += [plural(unanswered, "file") + " unanswered"] if unanswered else []
            parts += [plural(not_sent, "file") + " not sent"] if not_sent else []
            parts += [plural(skipped, "path") + " skipped"] if skipped else []
            listed = bool(rejected or unanswered or (args.json and not_sent))
            message = f"Not everything was uploaded: {' and '.join(parts)}; {self._see(listed)}."
            if summary.connection_lost is not None:
                message += (
                    f" The connection to {shell.session.server} was lost "
                    f"({summary.connection_lost.rstrip('.')}). {sentence(RUN_AGAIN)}"
                )
            shell.fail(message)

    def _see(self, on_stdout: bool) -> str:
        """Where the lines behind the closing failure are: skipped paths are named on stderr,
        the files on stdout, and "see above" on stderr points at stdout only when both go to
        the same place (a terminal, `2>&1`), not with `>out 2>err` or stdout piped."""
        if not on_stdout or _same_stream(self._cmd.stdout, sys.stderr):
            return "see above"
        return "see stdout"

    def _session_ended(self, summary: UploadSummary, walked: WalkResult) -> None:
        """The server refused a file because the session had ended (a password change or a
        logout on another connection): the run stopped sending there. Said once, and the shell
        shows itself logged out at once, as after any other command refused so."""
        shell = self._cmd
        shell.session.recheck_login()  # postcmd then shows the logged-out shell
        refused = sum(1 for r in summary.results if r.code == SESSION_ENDED_CODE and r.answered)
        not_sent = summary.count(Outcome.NOT_SENT)
        others = summary.count(Outcome.REJECTED) - refused + summary.count(Outcome.UNANSWERED)
        parts = [f"{plural(refused, 'file')} refused for it"] if refused else []
        parts += [f"{plural(not_sent, 'file')} not sent"] if not_sent else []
        counts = f" {' and '.join(parts)}." if parts else ""
        also = ""
        if others or walked.problems:
            also = f" Other files were not uploaded either; {self._see(bool(others))}."
        # the server's reason already says to log in again: said once, as delete_image does
        reason = printable(summary.session_ended or "").rstrip(".")
        shell.fail(
            f"The session ended, so the upload stopped: {reason}.{counts} Then {RUN_AGAIN}{also}"
        )

    update_parser = parser(
        "Change an image you own (admins: any public image, but not who sees it). Only the "
        "flags given are changed."
    )
    update_parser.add_argument(
        "image_id",
        type=image_id,
        metavar="ID",
        choices_provider=listing.complete_recent_ids,
        help="the image",
    )
    _add_catalogue_flags(update_parser)
    update_parser.add_argument(
        "--quantity",
        type=stock_change_arg,
        metavar="N|+N|-N",
        help="N sets the stock; +N adds and -N takes N from the stock as it is then, "
        "keeping sales made meanwhile",
    )
    add_tag_list_argument(update_parser, "--add-tags", "tags to add")
    add_tag_list_argument(update_parser, "--remove-tags", "tags to take off")
    visibility = update_parser.add_mutually_exclusive_group()
    visibility.add_argument(
        "--public", dest="private", action="store_false", default=None, help="everyone sees it"
    )
    visibility.add_argument(
        "--private", dest="private", action="store_true", help="only you see it"
    )
    update_parser.add_argument(
        "--json", action="store_true", help="print the updated image as one JSON line"
    )

    @cmd2.with_argparser(update_parser)
    def do_update_image(self, args: argparse.Namespace) -> None:
        shell = self._cmd
        changes: dict[str, Any] = {
            "title": args.title,
            "description": args.description,
            "price_cents": args.price,
            "private": args.private,
        }
        if args.quantity is not None:
            key = "add_quantity" if args.quantity.relative else "quantity"
            changes[key] = args.quantity.amount
        changes = {key: value for key, value in changes.items() if value is not None}
        if args.add_tags:
            changes["add_tags"] = args.add_tags
        if args.remove_tags:
            changes["remove_tags"] = args.remove_tags
        if not changes:
            raise CommandFailed(
                "Nothing to change: give --price, --quantity, --title, --description, "
                "--add-tags, --remove-tags, --public or --private."
            )
        answer = self._updated(UpdateImage(id=0, image_id=args.image_id, **changes))
        listing.memory(shell).remember([answer.image])
        shell.confirm(f"Updated #{answer.image.id}.")
        if args.json:
            write_json_lines(shell, [listing.image_json(answer.image)])
            return
        listing.print_listing(shell, [answer.image], "none")

    def _updated(self, request: UpdateImage) -> ImageUpdated:
        """The server's answer to an update. Once the request is on its way the server applies
        it whatever the shell does, so a lost connection or a Ctrl-C from then on leaves the
        outcome unknown, which is not the same as refused: the user is sent to show_image."""
        session = self._cmd.session
        session.ensure_connected()  # Ctrl-C in here: nothing was sent, "Interrupted." is true
        number = request.image_id
        try:
            future = session.submit(request)
        except InterruptedAfterSending:
            raise CommandFailed(outcome_unknown(number, INTERRUPTED, "updated")) from None
        try:
            response = future.result()
        except ConnectionLost as exc:
            why = f"the connection was lost ({str(exc).rstrip('.')})"
            raise CommandFailed(outcome_unknown(number, why, "updated")) from None
        except KeyboardInterrupt:
            raise CommandFailed(outcome_unknown(number, INTERRUPTED, "updated")) from None
        if not isinstance(response, ImageUpdated):
            raise unexpected_response(ImageUpdated, response)
        return response

    delete_parser = parser(
        "Delete images you own (admins: any public image too). They disappear from every listing."
    )
    delete_parser.add_argument(
        "image_ids",
        type=image_id,
        nargs="+",
        metavar="ID",
        choices_provider=listing.complete_recent_ids,
        help="the images",
    )

    @cmd2.with_argparser(delete_parser)
    def do_delete_image(self, args: argparse.Namespace) -> None:
        shell = self._cmd
        shell.session.ensure_connected()
        ids = list(dict.fromkeys(args.image_ids))
        requests = [DeleteImage(id=0, image_id=number) for number in ids]
        interrupted = False
        try:
            futures = shell.session.submit_all(requests)
        except InterruptedAfterSending as sent:  # on the wire: the server deletes them anyway
            futures, interrupted = sent.futures, True
        refused = unknown = 0
        #: Refused because the session had ended: said once, not once an id.
        ended: list[int] = []
        ended_why = ""
        for number, future in zip(ids, futures, strict=True):
            why = ""
            if interrupted and not future.done():
                why = INTERRUPTED
            else:
                try:
                    future.result()
                except VitrineError as exc:
                    if exc.code is ErrorCode.UNAUTHENTICATED:
                        ended.append(number)
                        ended_why = ended_why or exc.message
                        continue
                    refused += 1
                    shell.perror(f"#{number} not deleted ({exc.code.value}): {exc.message}")
                    continue
                except ConnectionLost as exc:
                    why = f"the connection was lost ({str(exc).rstrip('.')})"
                except KeyboardInterrupt:
                    # Answers already in still count; the others are unknown, not failed.
                    interrupted, why = True, INTERRUPTED
            if why:
                unknown += 1
                shell.perror(outcome_unknown(number, why, "deleted"))
                continue
            listing.memory(shell).forget(number)
            shell.confirm(f"Deleted #{number}.")
        parts = [f"{refused} of {len(ids)} not deleted"] if refused else []
        if unknown:
            parts.append(f"{unknown} of {len(ids)} with the outcome unknown (see above)")
        if parts:
            shell.fail(" and ".join(parts) + ".")
        if ended:
            shell.session.recheck_login()  # postcmd then shows the logged-out shell
            numbers = " ".join(str(number) for number in ended)
            shell.fail(
                f"The session ended, so {len(ended)} of {len(ids)} not deleted "
                f"({', '.join(f'#{number}' for number in ended)}): "
                # the server's reason already says to log in again: said once
                f"{printable(ended_why).rstrip('.')}. Then `delete_image {numbers}` deletes them."
            )

    show_parser = parser("Show everything about one image, with a larger picture.")
    show_parser.add_argument(
        "image_id",
        type=image_id,
        metavar="ID",
        choices_provider=listing.complete_recent_ids,
        help="the image",
    )
    show_parser.add_argument(
        "--save",
        metavar="PATH",
        completer=cmd2.Cmd.path_complete,
        help="write the original file to PATH (a directory keeps the original's name)",
    )
    show_parser.add_argument(
        "--force", action="store_true", help="with --save: overwrite an existing file"
    )
    show_parser.add_argument(
        "--no-images", dest="images", action="store_false", help="leave the picture out"
    )
    show_parser.add_argument("--json", action="store_true", help="the details as one JSON object")

    @cmd2.with_argparser(show_parser)
    def do_show_image(self, args: argparse.Namespace) -> None:
        shell = self._cmd
        mode = listing.graphics_mode(shell) if args.images and not args.json else "none"
        target = self._save_target(args) if args.save is not None else None
        if target is not None and target.is_dir() and not args.force:
            # the file's name is the image's: learn it without the original, so a file that
            # exists already is refused before any download
            details = shell.session.call(
                GetImage(id=0, image_id=args.image_id, with_original=False), ImageDetails
            )
            self._refuse_existing(target / save_name(details.image.filename), args.force)
        want_original = target is not None or mode != "none"
        answer = shell.session.call(
            GetImage(id=0, image_id=args.image_id, with_original=want_original), ImageDetails
        )
        image = answer.image
        listing.memory(shell).remember([image])
        saved = self._save(answer, target, args.force) if target is not None else None
        if args.json:
            value = listing.image_json(image)
            value.update(
                description=image.description,
                filename=image.filename,
                width=image.width,
                height=image.height,
                created_at=image.created_at,
                format=answer.format,
                bytes=answer.byte_size,
            )
            write_json_lines(shell, [value])
        else:
            picture, facts = self._details(answer, mode)
            if picture is not None:
                # A half-block picture ends without a newline; printed alone, it gets one.
                shell.poutput(picture, soft_wrap=False)
            shell.poutput(facts, soft_wrap=False)
        if saved is not None:
            message = f"Saved the original of #{image.id} to {printable(str(saved))}."
            if args.json:
                shell.perror(message, style=None)
            else:
                shell.poutput(message)

    # --- show_image helpers ----------------------------------------------------------------------

    @staticmethod
    def _save_target(args: argparse.Namespace) -> Path:
        """The file to write, or the directory to write it into (under the original's name).

        Checked before asking the server, so a refused --save costs no download. Like cp, a
        path ending in a slash must be a directory that exists: `--save new/` never quietly
        becomes a file called `new` (`listing.check_new_file`).
        """
        target = Path(os.path.expanduser(args.save))
        if target.is_dir():
            return target
        listing.check_new_file(args.save, args.force)
        return target

    @staticmethod
    def _refuse_existing(path: Path, force: bool) -> None:
        if path.exists() and not force:
            raise CommandFailed(
                f"{printable(str(path))} exists already; add --force to overwrite it."
            )

    def _save(self, answer: ImageDetails, target: Path, force: bool) -> Path:
        """Write the original to `target` (a file, or a directory to hold it) and return the
        file written."""
        if answer.original is None:
            raise CommandFailed("The server sent no original to save.")
        if target.is_dir():
            target = target / save_name(answer.image.filename)
            # checked before the download already; again in case it appeared meanwhile
            self._refuse_existing(target, force)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            with open(temporary, "xb") as handle:
                handle.write(answer.original)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except OSError as exc:
            raise CommandFailed(f"Cannot write {target}: {exc.strerror}.") from None
        finally:
            temporary.unlink(missing_ok=True)
        return target

    @staticmethod
    def _details(answer: ImageDetails, mode: listing.GraphicsMode) -> tuple[Any, Table]:
        """(the picture or None, the table of facts)."""
        image = answer.image
        facts = Table.grid(padding=(0, 2))
        facts.add_column(style="bold", no_wrap=True)
        facts.add_column(overflow="fold")
        visibility = Text(image.visibility, style="yellow" if image.visibility == "private" else "")
        rows: list[tuple[str, Any]] = [
            ("id", str(image.id)),
            ("title", Text(printable(image.title))),
            ("description", Text(printable(image.description))),
            ("tags", Text(", ".join(printable(t) for t in image.tags), style="cyan")),
            ("price", format_cents(image.price_cents)),
            ("quantity", str(image.quantity)),
            ("owner", Text(printable(image.owner))),
            ("visibility", visibility),
            ("file", Text(printable(image.filename))),
            ("size", f"{image.width} x {image.height} {answer.format}".rstrip()),
            ("added", time.strftime("%Y-%m-%d %H:%M", time.localtime(image.created_at))),
            (
                "colours",
                Text(NOT_COMPUTED, style="dim")
                if image.colours_pending
                else palette_text(image.palette),
            ),
        ]
        if answer.byte_size:
            rows.insert(10, ("bytes", f"{answer.byte_size:,}"))
        for name, value in rows:
            facts.add_row(name, value)
        picture_bytes = answer.original or image.thumbnail
        if mode == "none" or not picture_bytes:
            return None, facts
        columns, lines = listing.terminal_size()
        # The picture, its facts and the next prompt on one screen: a picture sized by the
        # width alone scrolled its top away on an 80 x 24 terminal (32 rows of picture).
        room = lines - len(rows) - 2
        width = max(8, min(SHOW_CELLS[0], columns - 2))
        aspect = image.height / image.width if image.width and image.height else 1.0
        height = max(4, min(SHOW_CELLS[1], room, round(width * aspect / 2)))
        width = max(8, min(width, round(height * 2 / aspect)))  # no letterbox beside it
        return picture_renderable(picture_bytes, mode, width, height), facts
