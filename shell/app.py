"""The cmd2 application: categories, what is offered when, and how failures are reported.

Every command that fails (a server error, a lost connection, bad arguments, an unknown command)
prints one clear sentence and sets a non-zero exit status, so scripts that pass commands as
arguments can rely on `$?`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import getpass
import itertools
import os
import re
import select
import stat
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import cmd2
import msgspec
from cmd2.exceptions import Cmd2ArgparseError, Cmd2ShlexError
from cmd2.parsing import StatementParser
from cmd2.styles import Cmd2Style
from prompt_toolkit import PromptSession
from prompt_toolkit.application import create_app_session
from prompt_toolkit.output.vt100 import Vt100_Output
from rich.console import Console

from protocol.base import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, normalise_password
from protocol.errors import ErrorCode, VitrineError
from protocol.pinning import PinningError
from shell.cart_store import DATA_DIR_FLAG
from shell.connection import ConnectionLost
from shell.session import ClientSession
from shell.text import dumb_terminal, escape_undecodable, is_terminal, printable
from util.config import Setting
from util.files import file_kind

ACCOUNT = "Account"
IMAGES = "Images"
BROWSE = "Browse"
CART = "Cart"
#: Categories that make sense only for a logged-in user.
MEMBER_CATEGORIES = (IMAGES, BROWSE, CART)
#: Account commands that need a login (create_user and login are always there).
MEMBER_ACCOUNT_COMMANDS = ("logout", "whoami", "change_password")
#: cmd2 built-ins a shop shell has no use for.
REMOVED_BUILTINS = ("alias", "edit", "macro", "run_pyscript", "shell", "shortcuts")
#: Built-ins offered after login only.
MEMBER_BUILTINS = ("history", "run_script", "set")
#: The help heading of the cmd2 built-ins kept (help, quit and the above); cmd2 calls them
#: "Cmd2 Commands", which means nothing to a shop. Its documented way to rename them is to
#: set the attribute on cmd2.Cmd itself: built-ins take the category of the class that
#: defines them.
SHELL = "Shell"
cmd2.Cmd.DEFAULT_CATEGORY = SHELL

#: Errors whose `details` hold a stable reason code (`truncated`) that the message already says
#: in words: for scripts (`add_image --json` gives it as `code`), not for a person.
_DETAILS_FOR_SCRIPTS = frozenset({ErrorCode.UNSUPPORTED_IMAGE, ErrorCode.TOO_LARGE})
LOGGED_OUT_MESSAGE = "{} needs a logged-in user: log in first (login NAME), or create_user NAME."


class CommandFailed(Exception):
    """Raised by commands for a failure already worded for the user."""


class VitrineShell(cmd2.Cmd):
    def __init__(
        self,
        session: ClientSession,
        *,
        data_dir: Path,
        config_dir: Path,
        data_dir_setting: Setting = DATA_DIR_FLAG,
        command_sets: Iterable[cmd2.CommandSet[Any]] = (),
        **kwargs: Any,
    ) -> None:
        history = config_dir / "history"
        unsaved = _private_history(history)
        if unsaved is not None:
            # Pins shipped read-only in a container, or a full disk, must not stop the shell:
            # the history is a convenience. One line now rather than a traceback at start.
            print(f"vitrine: history will not be saved: {unsaved}", file=sys.stderr)
        super().__init__(
            command_sets=list(command_sets),
            # an earlier history that can still be read is offered (`history -a`, the up arrow)
            persistent_history_file=str(history) if _readable_file(history) else "",
            auto_suggest=False,
            # Titles, searches and descriptions hold `>`, `|` and `;` as text. cmd2 would write
            # `update_image 80 --title Sizes>important.txt` over a local file, run what follows
            # a `|` in bash, and end a command at `;` (dropping `--json` after it).
            allow_redirection=False,
            terminators=[],
            **kwargs,
        )
        if unsaved is not None:
            self.persistent_history_file = ""  # cmd2 saves at exit only when this is set
        self.session = session
        self.data_dir = data_dir
        #: Where data_dir came from, for a sentence about a folder that cannot be used.
        self.data_dir_setting = data_dir_setting
        self.config_dir = config_dir
        self.console = Console(file=self.stdout, soft_wrap=False)
        self.default_error = "{} is not a Vitrine command; type help to see the commands."
        self.help_error = self.default_error
        for name in REMOVED_BUILTINS:
            self.disable_command(name, f"{name} is not available in Vitrine.")
            self.hidden_commands.append(name)
        self._offer_no_editor()
        self._member_ui: bool | None = None
        self._user: str | None = None
        #: Goes up whenever the logged-in user changes (a logout too), so what was remembered
        #: for one user (the latest listing, recent ids) is not offered to the next.
        self.login_epoch = 0
        #: Scripts stop at their first failed command, as `sh -e` does: a `checkout --yes`
        #: after a mistyped `update_cart` must not buy the cart as it was. shell.cli sets it.
        self.stop_on_failure = False
        #: The command that stopped a script, for shell.cli to name.
        self.failed_command: str | None = None
        #: Whoever read stdout has closed it (`| head -1`): nothing more runs, and shell.cli
        #: exits with SIGPIPE's status, as a Unix tool killed by it would.
        self.output_closed = False
        #: A SIGINT came while a script was read from stdin that is not a terminal: nothing more
        #: runs, and shell.cli exits with 130 (128 + SIGINT), as a shell script would.
        self.interrupted = False
        #: The command that was running then ("" between commands), for shell.cli to name.
        self.interrupted_during: str | None = None
        #: Between commands given as arguments: the last one that ran, for shell.cli to name.
        self.interrupted_after = ""
        self.sync_login_state()

    # --- what is offered when --------------------------------------------------------------------

    def sync_login_state(self) -> None:
        if self.session.user != self._user:
            self._user = self.session.user
            self.login_epoch += 1
            if self.session.user is not None:
                self.prompt = f"vitrine {self.session.user}@{self.session.server}> "
        logged_in = self.session.user is not None
        if logged_in == self._member_ui:
            return
        self._member_ui = logged_in
        commands = MEMBER_ACCOUNT_COMMANDS + MEMBER_BUILTINS
        if logged_in:
            for category in MEMBER_CATEGORIES:
                self.enable_category(category)
            for name in commands:
                self.enable_command(name)
            self.prompt = f"vitrine {self.session.user}@{self.session.server}> "
        else:
            message = LOGGED_OUT_MESSAGE.format(cmd2.COMMAND_NAME)
            for category in MEMBER_CATEGORIES:
                self.disable_category(category, message)
            for name in commands:
                if self.get_command_func(name) is not None:
                    self.disable_command(name, message)
            self.prompt = f"vitrine {self.session.server}> "

    def _create_main_session(self, **kwargs: Any) -> PromptSession[str]:
        """At a dumb terminal, prompt_toolkit reads lines with its plain prompt (text only), but
        creating the session still showed the cursor with an escape sequence, which such a
        terminal prints as text at the start of every session."""
        if not (dumb_terminal() and is_terminal(self.stdin) and is_terminal(self.stdout)):
            return super()._create_main_session(**kwargs)
        try:
            output = _TextOnlyOutput.from_pty(self.stdout)
        except (AttributeError, OSError, ValueError):
            return super()._create_main_session(**kwargs)
        with create_app_session(output=output):
            return super()._create_main_session(**kwargs)

    def postcmd(self, stop: bool, statement: cmd2.Statement | str) -> bool:
        self.sync_login_state()
        return stop

    # --- failures --------------------------------------------------------------------------------

    def fail(self, message: str) -> None:
        """Report a failure without stopping the shell; scripts see it in the exit status."""
        self.exit_code = 1
        self.perror(message)

    def confirm(self, message: str) -> None:
        """What a command did, when that is all it has to say (logged in, logged out): shown to
        a person, but on stderr when stdout is not a terminal, so a script's stdout holds only
        what its commands produce (`client.py "login alice" "tags --json" | jq`)."""
        if self.stdout.isatty():
            self.poutput(message)
        else:
            self.perror(message, style=None)

    def onecmd_plus_hooks(self, line: str, **kwargs: Any) -> bool:
        """cmd2 reports a line it cannot split into words (an unclosed quote) by itself and runs
        nothing, so onecmd never sees it: counted here, scripts see it in the exit status.
        With `stop_on_failure`, a failed command ends the run (failed_command names it)."""
        if self.output_closed or self.reader_gone():
            return self._stop_for_closed_output()
        if self.interrupted:  # while the line was read: it is not run
            self.interrupted_during = self.interrupted_during or ""
            return True
        failed_before, self.exit_code = self.exit_code, 0
        line = line.removeprefix(BOM)  # a script saved "with BOM" by a Windows editor
        undecodable = _undecodable(line)
        try:
            statement = None if undecodable else self.statement_parser.parse(line)
        except Cmd2ShlexError:
            self.exit_code = 1
            statement = None
        if undecodable:
            # Such a line cannot be encoded again: cmd2 would fail on it with a bare
            # UnicodeEncodeError, and then fail to save the history at exit.
            self.fail(
                f"This line holds bytes that are not UTF-8, so it was not run: {undecodable} "
                "(\\x.. marks each such byte; write the text in UTF-8)."
            )
            stop = False
        elif statement is not None and statement.redirector:
            # Even with redirection off, cmd2 cuts the line at an unquoted `>` or `|`, and
            # the command would run on what is left (`search size>10` searched "size").
            self.fail(
                f"{statement.redirector} has no special meaning in Vitrine, but unquoted it "
                "would cut the line short: quote the words that hold it (as in: search "
                f"'size{statement.redirector}10', or --title 'Sizes{statement.redirector}XL'). "
                "Nothing was run."
            )
            stop = False
        elif statement is not None and (escaped := _escaped_blank(line, self.statement_parser)):
            # `add_image ~/my\ shoe.jpg` skipped `~/my\` and `shoe.jpg` without a hint.
            self.fail(escaped)
            stop = False
        else:
            stop = super().onecmd_plus_hooks(line, **kwargs)
        if self.output_closed or self.reader_gone():
            # cmd2 swallows the BrokenPipeError of a table it prints, so the pipe itself is
            # asked. This stops the run once the reader is seen gone; it cannot promise that a
            # short listing piped to `head -1` is noticed before the next command starts
            # (docs/shell.md says so, and advises against chaining a checkout after one).
            self.exit_code = failed_before
            return self._stop_for_closed_output()
        failed = self.exit_code != 0
        self.exit_code = max(failed_before, self.exit_code)
        if self.interrupted:  # the command has said what it did; nothing after it runs
            self.interrupted_during = undecodable or line.strip()
            return True
        if failed and self.stop_on_failure:
            self.failed_command = undecodable or line.strip()
            return True
        return stop

    def sigint_handler(self, signum: int, frame: FrameType | None) -> None:
        """A script read from a pipe or a file stops at SIGINT (`kill -INT`, Ctrl-C at the
        terminal that started `... | client.py`), as a shell script does: the command it
        interrupts accounts for itself as after a Ctrl-C, and the lines after it are not run.
        cmd2 went on with the next line and ended with status 0. At a terminal, Ctrl-C still
        only stops the command and gives the prompt back."""
        if not self.stdin.isatty():
            self.interrupted = True
        super().sigint_handler(signum, frame)

    def _raise_keyboard_interrupt(self) -> None:
        """cmd2 prints an empty line first so that the next prompt starts a line of its own;
        in piped or redirected output it would sit among the JSON lines."""
        if self.stdout.isatty():
            self.poutput()
        raise KeyboardInterrupt("Got a keyboard interrupt")

    def _read_command_line(self, prompt: str) -> str:
        """cmd2 answers a Ctrl-C at the prompt with `^C` on stdout: with stdout not a terminal
        that goes to stderr (a person typing, output redirected), and in a script read from
        stdin the interrupt ends the run (onecmd_plus_hooks stops at the empty line)."""
        try:
            return super()._read_command_line(prompt)
        except KeyboardInterrupt:
            if self.interrupted or not self.stdin.isatty():
                self.interrupted = True
                return ""
            if self.stdout.isatty():
                raise  # cmd2 shows ^C and the prompt again
            self.perror("^C", style=None)
            return ""

    def reader_gone(self) -> bool:
        """Whether stdout is a pipe or socket whose reader has closed it: the kernel reports
        that on the writing end (POLLERR, POLLHUP) without anything having to be written."""
        try:
            poller = select.poll()
            poller.register(self.stdout.fileno(), 0)  # errors and hang-ups are always reported
            return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
        except (AttributeError, OSError, ValueError):  # no descriptor (a StringIO), or no poll
            return False

    def _stop_for_closed_output(self) -> bool:
        """Stop quietly, as command-line tools do when their reader goes. Python flushes stdout
        again at exit; aimed at /dev/null, that cannot fail and print the error after all."""
        if not self.output_closed:
            self.output_closed = True
            with contextlib.suppress(AttributeError, OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.stdout.fileno())
        return True

    def onecmd(self, statement: cmd2.Statement | str, *, add_to_history: bool = True) -> bool:
        # cmd2's built-ins (run_script, set, help, history) report a failure only by printing
        # it and leaving last_result False; scripts must see it in the exit status too.
        self.last_result = None
        try:
            stop = super().onecmd(statement, add_to_history=add_to_history)
            if self.last_result is False:
                self.exit_code = 1
            return stop
        except Cmd2ArgparseError as exc:
            # cmd2 raises this whenever argparse exits, for `-h` too (status 0): asking for
            # help succeeded, and a script that does must go on.
            exited = exc.__cause__
            if not (isinstance(exited, SystemExit) and exited.code in (0, None)):
                self.exit_code = 1
            raise
        except CommandFailed as exc:
            self.fail(str(exc))
        except VitrineError as exc:
            self.fail(f"Error ({exc.code.value}): {exc.message}")
            if exc.code not in _DETAILS_FOR_SCRIPTS:
                for detail in exc.details:
                    self.perror(f"  {detail}")
            if exc.code is ErrorCode.UNAUTHENTICATED:
                self.session.recheck_login()  # postcmd then shows the logged-out shell
        except ConnectionLost as exc:
            self.fail(
                f"Lost the connection to {self.session.server}: {str(exc).rstrip('.')}. "
                "The next command will reconnect."
            )
        except PinningError as exc:
            self.fail(str(exc))
        except BrokenPipeError:  # a ConnectionError, but not the server's
            # Whoever read our output has gone (`| head -1`): onecmd_plus_hooks stops here.
            return self._stop_for_closed_output()
        except ConnectionError as exc:
            self.fail(str(exc))
        except KeyboardInterrupt:
            self.fail("Interrupted.")
        except IndexError:
            if getattr(statement, "command", "") != "history":
                self.exit_code = 1
                raise
            # cmd2's own `history -r 99999` fails with a bare "list index out of range"
            self.fail("There is no such item in the history; `history` lists them, numbered.")
        except Exception:
            # A bug, not a refusal: cmd2 reports it (with the traceback under `set debug true`),
            # and a script must still see that the command failed.
            self.exit_code = 1
            raise
        return False

    def default(self, statement: cmd2.Statement) -> bool | None:
        self.exit_code = 1
        return super().default(statement)

    def _report_disabled_command_usage(
        self, *args: Any, message_to_print: str, **kwargs: Any
    ) -> None:
        self.exit_code = 1
        super()._report_disabled_command_usage(*args, message_to_print=message_to_print, **kwargs)

    @functools.wraps(cmd2.Cmd.do_history)  # its parser, completion and place in help
    def do_history(self, *args: Any, **kwargs: Any) -> bool | None:
        return cmd2.Cmd.do_history(self, *args, **kwargs)

    #: The line `help -v` and completion show: cmd2's says "View, run, edit, save, ..."
    do_history.__doc__ = "View, run, save, or clear previously entered commands."

    def _offer_no_editor(self) -> None:
        """Help and `set` offered what the shell refuses: `history -e` ("edit and then run")
        and the `editor` setting, which only `edit` and `history -e` use. Both go from what is
        listed; `history -e` typed anyway is still refused with its reason (`run_editor`)."""
        self.remove_settable("editor")
        history = self.command_parsers.get(self.do_history)
        if history is None:
            return
        history.description = self.do_history.__doc__
        for action in history._actions:
            if "--edit" in action.option_strings:
                action.help = argparse.SUPPRESS

    def run_editor(self, file_path: str | None = None) -> NoReturn:
        """There is no editor in Vitrine (`edit` and `shell` are off). cmd2's `history -e` would
        still write the chosen items to a file, fail to open the editor, and then run the file
        as it was: the commands again, unedited (a login, a `checkout --yes`, a delete). Raised
        before anything runs, so nothing is."""
        raise CommandFailed(
            "history -e would open a text editor, which Vitrine does not have: nothing was run. "
            "`history -r N` runs item N again as it was; to change it, type the command anew."
        )

    def do__eof(self, _: cmd2.Statement) -> bool:
        """End of input (Ctrl-D) quits. cmd2's own version prints an empty line first, which
        a terminal needs to leave the prompt's line, but which piped output would carry after
        the last JSON line."""
        if self.stdin.isatty() and self.stdout.isatty():
            self.poutput()
        self.last_result = True
        return True

    # --- input -----------------------------------------------------------------------------------

    def ask_secret(self, prompt: str, env: str = "VITRINE_PASSWORD") -> str:
        """Password prompts: the environment answers them for scripts, else a hidden prompt."""
        from_env = os.environ.get(env)
        if from_env is not None:
            return _sendable(from_env)
        if not self.stdin.isatty():
            raise CommandFailed(f"No terminal to ask for a password: set {env}.")
        try:
            if self.stdout.isatty() and not dumb_terminal():
                return _sendable(self.read_secret(prompt))
            # stdout piped (`client.py "login alice" "tags --json" | jq`): cmd2 would then read
            # the line with echo on and the prompt nowhere to be seen. getpass turns echo off
            # and prompts on the terminal itself (else stderr), never on stdout. A dumb
            # terminal gets it too: cmd2's hidden prompt draws with cursor movements there.
            return _sendable(getpass.getpass(prompt))
        except EOFError:
            raise CommandFailed("No password given.") from None

    def ask_new_secret(self, prompt: str, env: str) -> str:
        """A new password: asked twice at a terminal so a typo cannot lock the user out, and
        checked against the server's rule before the second time, not after it."""
        if env in os.environ:
            return _long_enough(os.environ[env])
        first = _long_enough(self.ask_secret(prompt, env))
        if self.ask_secret("Repeat it: ", env) != first:
            raise CommandFailed("The two entries differ; nothing was changed.")
        return first

    def ask_yes_no(self, question: str) -> bool:
        if not self.stdin.isatty():
            return False
        try:
            if self.stdout.isatty() and not dumb_terminal():
                answer = self.read_input(f"{question} [y/N] ")
            else:  # stdout is for data (and may be a file nobody sees): ask on stderr
                # (at a dumb terminal, where cmd2's prompt draws with cursor movements, on it)
                asked = self.stdout if self.stdout.isatty() else sys.stderr
                asked.write(f"{question} [y/N] ")
                asked.flush()
                answer = self.stdin.readline()
                if not answer:
                    raise EOFError
        except EOFError:
            return False
        return answer.strip().lower() in ("y", "yes")

    def note(self, message: str) -> None:
        """What a person is told besides the output (a cancelled checkout): on stderr, so it
        never lands among the data a script reads from stdout."""
        self.perror(message, style=None)


BOM = "\ufeff"


class _TextOnlyOutput(Vt100_Output):
    """prompt_toolkit's terminal output without the cursor escapes it sends unasked (showing,
    hiding, shaping the cursor): for a dumb terminal, where its plain prompt writes nothing else
    but text."""

    def show_cursor(self) -> None:
        pass

    def hide_cursor(self) -> None:
        pass

    def reset_cursor_shape(self) -> None:
        pass


def _undecodable(line: str) -> str:
    """The line with its non-UTF-8 bytes escaped, when it has any, else "".

    Python keeps such bytes (from argv, or stdin read with surrogateescape) as lone
    surrogates, which no encoder accepts."""
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return printable(escape_undecodable(line).strip())
    return ""


#: Commands whose words are local paths, and the options that take one: where `my\ shoe.jpg`
#: can only be a bash habit. Elsewhere (search text, titles, descriptions) a backslash before a
#: blank is text as typed (`search C:\ photos`), and so is one before an option.
_PATH_COMMANDS = frozenset({"add_image", "search_by_image"})
_PATH_OPTIONS = frozenset({"--save", "--sheet"})


def _escaped_blank(line: str, parser: StatementParser) -> str:
    """Why a line that escapes a blank in a path with a backslash, as bash reads
    `my\\ shoe.jpg`, is not run, else "". Here a backslash is a plain character (cmd2 splits
    lines without escapes, which keeps `C:\\photos` and search text as typed), so that name was
    two words, each skipped as a file that does not exist. A path word ending in a backslash
    before another word that is not an option is that mistake."""
    tokens = parser.tokenize(line)
    for at, word in enumerate(tokens[:-1]):
        if not word.endswith("\\") or tokens[at + 1].startswith("-") or at == 0:
            continue
        before = tokens[at - 1]
        if before.startswith("-") and before not in _PATH_OPTIONS:
            continue  # the value of a text option (`--title Price\ list`) is text
        if tokens[0] not in _PATH_COMMANDS and before not in _PATH_OPTIONS:
            continue
        end = at + 1
        while (
            tokens[end].endswith("\\")
            and end + 1 < len(tokens)
            and not tokens[end + 1].startswith("-")
        ):
            end += 1
        typed = " ".join(tokens[at : end + 1])
        meant = " ".join([part[:-1] for part in tokens[at:end]] + [tokens[end]])
        quote = "'" if '"' in meant else '"'
        return (
            f"A backslash does not escape a blank in Vitrine: `{printable(typed)}` is "
            f"{end + 1 - at} words here, not one. Put a path with blanks in quotes instead, as "
            f"in: {quote}{printable(meant)}{quote}. Nothing was run."
        )
    return ""


def _sendable(password: str) -> str:
    """A typed password the wire takes: the schema's own refusal of an empty or endless one
    ("Expected `str` of length >= 1 - at `$.password`") means nothing to a person."""
    if not password:
        raise CommandFailed("No password given: a password cannot be empty.")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise CommandFailed(f"A password has at most {MAX_PASSWORD_LENGTH} characters.")
    return password


def _long_enough(password: str) -> str:
    _sendable(password)
    if len(normalise_password(password)) < MIN_PASSWORD_LENGTH:  # as the server counts
        raise CommandFailed(f"Passwords must be at least {MIN_PASSWORD_LENGTH} characters long.")
    return password


def _private_history(path: Path) -> str | None:
    """The history holds every line typed, a password typed by mistake on a command line too:
    owner-only, like known_servers. cmd2 rewrites the file in place, so the mode it is created
    with here stays. Returns why the history cannot be saved (a read-only config directory,
    `history` a directory or a FIFO), or None when it can.

    Opened without blocking, and used only when it is a regular file: opening a FIFO to write
    waits for a reader, and the shell hung at start."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        kind = _special_file(path)
        if kind is None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
            try:
                kind = _special_kind(os.fstat(fd).st_mode)
                if kind is None:
                    os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return f"cannot write {exc.filename or path}: {reason}."
    if kind is not None:
        return f"{path} is {kind}, not a regular file, so it is neither read nor written."
    return None


def _readable_file(path: Path) -> bool:
    """Whether cmd2 can load `path` as the earlier history without an error of its own, or
    waiting for ever on a FIFO."""
    try:
        if _special_file(path) is not None:
            return False
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            return stat.S_ISREG(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
    except OSError:
        return False


def _special_file(path: Path) -> str | None:
    """What is at `path` when it is a FIFO, socket or device (which no history is), else None
    (nothing there, a regular file, or a directory, whose open then fails with its reason)."""
    try:
        return _special_kind(os.stat(path).st_mode)
    except FileNotFoundError:
        return None


def _special_kind(mode: int) -> str | None:
    """A FIFO, socket or device (`util.files.file_kind`), else None: a directory is left to the
    open, whose own error says so."""
    return None if stat.S_ISDIR(mode) else file_kind(mode)


# argparse takes a word that starts with "-" for an option unless it looks like a negative
# number, and its own test (`-12`, `-1.5`) misses `-inf`, `-1e3` and `-.5`: those then read as
# an unknown option, and the user is told that COLOR or a value is missing instead of why the
# value is refused. No command has an option that looks like a number, so these are values.
_NEGATIVE_NUMBER = re.compile(r"-(\d|\.\d|inf(inity)?$|nan$)", re.IGNORECASE)


#: Set to True on an argparse type that reads a comma-separated list (`tag_list_of`).
COMMA_SEPARATED = "comma_separated"


class ShellArgumentParser(cmd2.Cmd2ArgumentParser):
    """Every command's parser: argparse gives both the help text and the tab completion.

    It keeps the words it was given, so that an error can say what went wrong in them rather
    than repeat argparse's "unrecognized arguments". One such case it words itself: cmd2
    groups a quote only at the start of a word, so `--tags "straw hat",hat` reaches argparse as
    `--tags`, `straw hat` and `,hat`, and the stray `,hat` is all argparse can name.

    A command that takes any number of words takes them after its flags too (`_flags_first`).
    """

    def __init__(self, description: str) -> None:
        super().__init__(description=description)
        self._negative_number_matcher = _NEGATIVE_NUMBER  # argparse's own: see _NEGATIVE_NUMBER
        self._words: list[str] = []

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._words = list(args) if args is not None else []
        if args is not None and self._variadic():
            args = self._flags_first(self._words)
        return super().parse_known_args(args, namespace)

    def _variadic(self) -> bool:
        """Whether a positional takes any number of words (tags, search words, paths, ids),
        and every flag one value or none, as _flags_first reads them."""
        positionals = self._get_positional_actions()
        flags = self._get_optional_actions()
        return any(action.nargs in ("*", "+") for action in positionals) and all(
            action.nargs in (0, None) for action in flags
        )

    def _flags_first(self, words: list[str]) -> list[str]:
        """The words with the flags (and their values) moved before the rest, so that words
        typed after a flag still count: argparse gives a variadic positional only the words
        before the first flag and calls the others unrecognized (`browse_by_tags dress --any
        hat`: "unrecognized arguments: hat"). argparse's own parse_intermixed_args would do
        this, but Python 3.11's drops a leading `--` (`search -- -hat` then fails on -h). A
        flag keeps its value beside it, and `--` and what follows it stay last, as typed."""
        flags: list[str] = []
        rest: list[str] = []
        remaining = iter(words)
        for word in remaining:
            if word == "--":
                return [*flags, *rest, word, *remaining]
            if not self._reads_as_flag(word):
                rest.append(word)
                continue
            flags.append(word)
            action = self._option_for(word)
            if action is not None and action.nargs is None and "=" not in word:
                flags.extend(itertools.islice(remaining, 1))
        return [*flags, *rest]

    def _reads_as_flag(self, word: str) -> bool:
        """Whether argparse takes the word for a flag, known or not (its _parse_optional)."""
        if not word.startswith("-") or word == "-":
            return False
        if self._option_for(word) is not None:
            return True
        return not self._negative_number_matcher.match(word) and " " not in word

    def _option_for(self, word: str) -> argparse.Action | None:
        """The action a word names as argparse reads it (`--batch=5`, `--tol` for --tolerance),
        else None: so a value such as `--batch=0` that fails is not called an unknown option."""
        name = word.partition("=")[0] if word.startswith("--") else word
        options = {option: action for action in self._actions for option in action.option_strings}
        if name in options:
            return options[name]
        if self.allow_abbrev and name.startswith("--") and len(name) > 2:
            matches = {action for option, action in options.items() if option.startswith(name)}
            if len(matches) == 1:
                return matches.pop()
        return None

    def _list_cut_at_a_quote(self) -> str | None:
        """The advice for a comma-separated value that a quote cut in two, else None."""
        words = self._words
        for at in range(2, len(words)):
            action = self._option_for(words[at - 2])
            listed = action is not None and getattr(action.type, COMMA_SEPARATED, False)
            if words[at].startswith(",") and listed:
                flag, whole = words[at - 2], words[at - 1] + words[at]
                return (
                    f"{words[at]!r} is the rest of the list given to {flag}: a quote in a "
                    f"comma-separated list does not group words; quote the whole list instead, "
                    f'as in: {flag} "{whole}"'
                )
        return None

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments"):
            message = self._list_cut_at_a_quote() or message
        self._report_error(message)

    def _report_error(self, message: str) -> NoReturn:
        """cmd2's report (usage, then "Error: ..."), but folded only for a person at a terminal:
        rich folds it at 80 columns for a file or pipe as well, which split one error over two
        lines (the first with a trailing blank), and `grep Error:` found half of it. cmd2 also
        ended the report with an empty line of its own."""
        lines = message.split("\n")
        text = "Error: " + "\n       ".join(lines)
        with self.output_to(sys.stderr):
            self.print_usage(sys.stderr)
            console = self._get_formatter().console
            with console.capture() as capture:
                console.print(text, style=Cmd2Style.ERROR, soft_wrap=not is_terminal(sys.stderr))
        self.exit(2, capture.get())


def parser(description: str) -> ShellArgumentParser:
    """A command's parser (`ShellArgumentParser`)."""
    return ShellArgumentParser(description)


class TextArgumentParser(ShellArgumentParser):
    """A parser for a command whose positional words (search text, tags, a colour, a path) may
    start with '-' like options do.

    argparse reads `search straw -hat` as -h with the value "at" and says "ignored explicit
    argument 'at'", and `browse_by_tags -tag` as an unrecognized argument: neither tells a
    person anything. This says what happened and what to type: the words after `--`.
    `verb` and `noun` word that advice for the command ("search for" that "word").
    """

    def __init__(
        self,
        description: str,
        *,
        verb: str = "search for",
        noun: str = "word",
        never_dashed: str = "",
    ) -> None:
        super().__init__(description)
        self._verb = verb
        self._noun = noun
        #: Set when a positional word can never start with '-' (a tag): then `--` would only
        #: trade this error for the server's, and the sentence says why instead.
        self._never_dashed = never_dashed

    def _is_unknown_option(self, word: str) -> bool:
        return (
            word.startswith("-")
            and word not in ("-", "--")
            and not self._negative_number_matcher.match(word)
            and self._option_for(word) is None
        )

    def error(self, message: str) -> NoReturn:
        words = self._words
        dashed = [word for word in words if self._is_unknown_option(word)]
        if dashed and self._never_dashed:
            message = f"{self.prog} has no option {', '.join(dashed)}, and {self._never_dashed}."
        elif dashed and "--" not in words:
            flags: list[str] = []
            text: list[str] = []
            rest = iter(words)
            for word in rest:
                action = None if word in dashed else self._option_for(word)
                if action is None:
                    text.append(word)
                    continue
                flags.append(word)
                if action.nargs != 0 and "=" not in word:
                    flags.append(next(rest, ""))
            example = " ".join([self.prog, *flags, "--", *text])
            that = f"that {self._noun}" if len(dashed) == 1 else f"those {self._noun}s"
            the = f"the {self._noun}" if len(text) == 1 else f"the {self._noun}s"
            message = (
                f"{self.prog} has no option {', '.join(dashed)}; to {self._verb} {that}, "
                f"put {the} after --, as in: {example}"
            )
        super().error(message)


_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")


def whole_number(text: str) -> int:
    """A whole number as a person types one in a flag: ASCII digits with an optional sign.
    int() would also take `1_0` (10) and non-ASCII digits such as `１２` or `١٢`, so a typo
    would quietly become another count or another image's id. Raises ValueError."""
    digits = text.strip()
    if not _WHOLE_NUMBER.fullmatch(digits):
        raise ValueError(f"{text!r} is not a whole number")
    return int(digits)


def id_argument(kind: str) -> Callable[[str], int]:
    """An argparse type for an image or order id, written `12` or `#12` as listings show them;
    1 to 2**53, the largest integer a JSON number keeps exact."""

    def parse(text: str) -> int:
        try:
            value = whole_number(text.strip().removeprefix("#"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an {kind} id (a number)") from None
        if not 1 <= value <= 2**53:
            raise argparse.ArgumentTypeError(f"{value} is not an {kind} id")
        return value

    parse.__name__ = f"{kind}_id"  # argparse names a type by it in its own messages
    return parse


image_id = id_argument("image")


def write_json_lines(shell: cmd2.Cmd, values: Iterable[Any]) -> None:
    """`--json` output: one object per line on stdout and nothing else there, flushed at once
    so a script reading a pipe sees each batch as it is shown."""
    for value in values:
        shell.stdout.write(msgspec.json.encode(value).decode() + "\n")
    shell.stdout.flush()
