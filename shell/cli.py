"""Starting the shell: flags, the first connection (with pinning), then the command loop."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import signal
import ssl
import sys
from pathlib import Path

from cmd2 import rich_utils

from protocol.errors import VitrineError
from protocol.pinning import KnownServers, PinningError
from shell.account_commands import AccountCommands
from shell.app import VitrineShell
from shell.browse_commands import BrowseCommands
from shell.cart_commands import CartCommands
from shell.colour_commands import ColourCommands
from shell.connection import (
    DEFAULT_ANSWER_TIMEOUT_S,
    ConnectionLost,
    ServerConnection,
    TrustPolicy,
)
from shell.image_commands import ImageCommands
from shell.order_commands import OrderHistoryCommands
from shell.session import ClientSession
from shell.similar_commands import SimilarCommands
from shell.text import dumb_terminal, plural
from util import config as cfg

DEFAULT_PORT = 7878


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="client.py",
        description="Vitrine shell. Commands given after the flags run in order, as if typed; "
        "the exit status is non-zero if any of them failed.",
    )
    cfg.add_option(
        parser, "--server", default=f"127.0.0.1:{DEFAULT_PORT}", help="HOST:PORT of the server"
    )
    cfg.add_option(
        parser,
        "--config-dir",
        default=str(cfg.default_client_config_dir()),
        type=Path,
        help="where known_servers and the history live",
    )
    cfg.add_option(
        parser,
        "--data-dir",
        default=str(cfg.default_client_data_dir()),
        type=Path,
        help="where carts live",
        # not VITRINE_DATA_DIR, the server's: one exported environment must not put the
        # client's carts into the server's data directory
        env="VITRINE_CLIENT_DATA_DIR",
    )
    parser.add_argument(
        "--trust-new-server",
        action="store_true",
        help="pin an unknown server's fingerprint without asking",
    )
    parser.add_argument(
        "--fingerprint",
        metavar="SHA256:...",
        type=_fingerprint,
        help="the server fingerprint you expect; anything else is refused",
    )
    cfg.add_option(
        parser,
        "--ca-file",
        type=Path,
        help="verify the server's certificate against this CA bundle",
    )
    cfg.add_option(
        parser,
        "--timeout",
        default=str(DEFAULT_ANSWER_TIMEOUT_S),
        type=_seconds,
        metavar="SECONDS",
        help="give the connection up when the server has not answered a waiting command for "
        "this long (its commands then fail, exit status 1)",
    )
    parser.add_argument(
        "commands",
        nargs="*",
        metavar="COMMAND",
        help='shell commands to run, each one argument (quote it: "login bob")',
    )
    # The environment twins of these two are checked here, not by argparse, so that a bad
    # value is said to come from the variable: "argument --timeout" would send the user
    # looking for a flag that nobody typed.
    parser.set_defaults(server=None, timeout=None)
    args = parser.parse_args(argv)
    cfg.settle(parser, args)  # the other variables' values, and where each came from
    args.server_source = "--server"
    if args.server is None:
        from_env = cfg.env_value(cfg.env_name("--server"))
        args.server = f"127.0.0.1:{DEFAULT_PORT}" if from_env is None else from_env
        args.server_source = "--server" if from_env is None else cfg.env_name("--server")
    if args.timeout is None:
        from_env = cfg.env_value(cfg.env_name("--timeout"))
        try:
            args.timeout = DEFAULT_ANSWER_TIMEOUT_S if from_env is None else _seconds(from_env)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"{cfg.env_name('--timeout')}: {exc}")
    return args


_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")


def _fingerprint(text: str) -> str:
    """A mistyped fingerprint would only ever be reported as the server's not matching it."""
    if not _FINGERPRINT.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a fingerprint: it is SHA256: and 43 characters of base64, as "
            "server.py prints at start-up"
        )
    return text.strip()


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"the timeout must be above 0 s, not {text}")
    return value


def _ask_trust(server: str, fingerprint: str) -> bool:
    """Asked on stderr, as ssh does: stdout may be a pipe to `jq`, which must get nothing but
    the commands' output (and a person would never see a question sent there)."""
    print(f"The authenticity of the Vitrine server at {server} can't be established.",
          file=sys.stderr)  # fmt: skip
    print(f"Its certificate fingerprint is {fingerprint}.", file=sys.stderr)
    print("Are you sure you want to trust it and connect (yes/no)? ", end="", file=sys.stderr)
    sys.stderr.flush()
    try:
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        answer = ""
    if not answer.endswith("\n"):
        print(file=sys.stderr)
    return answer.strip().lower() in ("yes", "y")


#: The exit status of a Unix tool killed by SIGPIPE (128 + 13): the client's reader closed its
#: end (`| head -1`), so it stopped there, as `cat` or `grep` would.
SIGPIPE_STATUS = 141
#: The exit status of a script stopped by SIGINT (128 + 2), as a shell reports one.
INTERRUPTED_STATUS = 130


#: The narrowest width anything is laid out for: a smaller COLUMNS is taken as this. Here
#: listings, the cart and the order histories are records of a field a line (their narrowest
#: layout), and the longest number the protocol allows still shows whole beside the longest
#: label: an order total of 500 lines at the largest price and quantity (20 characters, after
#: "order total"), an id of 16 digits in show_image (after "description").
MIN_COLUMNS = 36


def sane_terminal_size() -> None:
    """Drop a COLUMNS or LINES that is not a positive number, and raise a COLUMNS below
    MIN_COLUMNS to it, before any console reads them. rich takes `COLUMNS=0` literally and
    then prints nothing at all, errors included, and `COLUMNS=1` gave records of blank lines;
    the standard library already ignores 0, so both now agree on one width."""
    for name in ("COLUMNS", "LINES"):
        value = os.environ.get(name)
        if value is None:
            continue
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number <= 0:
            del os.environ[name]  # as if unset: the terminal's own size, else 80 columns
        else:  # rich reads only plain digits, the standard library any int(): one spelling
            os.environ[name] = str(max(number, MIN_COLUMNS) if name == "COLUMNS" else number)


def reopen_closed_std_streams() -> None:
    """Give a closed stdin, stdout or stderr (a daemon-style launch, `<&-`, `>&-`) /dev/null in
    its place, as if it had been redirected there: Python leaves sys.stdin and the others None
    for a closed descriptor, and the first `isatty()` on one ended the run with a traceback.
    An open descriptor that cannot go the stream's way counts as closed too: a bash script run
    with `2>&-` reads itself through the first free descriptor, 2, so stderr was the script,
    open read-only, and the first error written to it (EBADF) ended the run.
    Done first, before anything opens a file: the kernel hands out the lowest free descriptor,
    so a history or socket opened before this would take fd 1, and output would land in it."""
    modes = {0: ("stdin", "r"), 1: ("stdout", "w"), 2: ("stderr", "w")}
    for fd, (name, mode) in modes.items():
        if not _usable(fd, readable=fd == 0):
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)  # inheritable, as the standard descriptors are
                os.close(null)
            else:  # os.open gives close-on-exec descriptors: a child would find it closed
                os.set_inheritable(fd, True)
            # A stream Python made on what was there now reads or writes /dev/null through the
            # same descriptor, and is kept: dropped, it would close that descriptor.
        if getattr(sys, name) is None:
            # line-buffered like the streams Python makes itself; fd left open at exit
            stream = open(fd, mode, buffering=1, closefd=False, errors="surrogateescape")  # noqa: SIM115
            setattr(sys, name, stream)
            setattr(sys, f"__{name}__", stream)


def _usable(fd: int, *, readable: bool) -> bool:
    """Whether `fd` is open for reading (stdin) or writing (stdout, stderr)."""
    try:
        access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError:  # closed
        return False
    wanted = (os.O_RDONLY, os.O_RDWR) if readable else (os.O_WRONLY, os.O_RDWR)
    return access in wanted


def plain_text_for_a_dumb_terminal() -> None:
    """TERM=dumb (Emacs' shell, many IDE consoles) shows escape sequences as text: no styles
    then, in listings, help or errors. cmd2 styles whatever goes to a terminal in truecolor,
    whatever TERM says; its `allow_style` setting (`set allow_style`) is what turns that off.
    With it off, rich also stops sizing the output as a dumb terminal's 80 columns."""
    if dumb_terminal():
        rich_utils.ALLOW_STYLE = rich_utils.AllowStyle.NEVER


def main(argv: list[str] | None = None) -> int:
    reopen_closed_std_streams()  # before anything else opens a file (see there)
    sane_terminal_size()  # before argparse, which lays --help out for COLUMNS too
    plain_text_for_a_dumb_terminal()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # A script line that is not UTF-8 is refused by the shell with a sentence; read strictly,
    # it would end the whole run with a UnicodeDecodeError. (Before anything reads stdin: the
    # trust question may.)
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")
    try:
        host, port = cfg.split_host_port(args.server, DEFAULT_PORT)
    except ValueError as exc:
        print(f"vitrine: bad {args.server_source}: {exc}", file=sys.stderr)
        return 2
    config_dir, data_dir = Path(args.config_dir), Path(args.data_dir)
    # Before pinning writes known_servers there: each level made is owner-only. A folder that
    # cannot be made is reported by whatever then fails to write in it.
    with contextlib.suppress(OSError):
        cfg.private_directory(config_dir)
    trust = TrustPolicy(
        known_servers=KnownServers(config_dir / "known_servers", cfg.setting(args, "--config-dir")),
        trust_new=args.trust_new_server,
        expected=args.fingerprint,
        # Asked only where it can be seen and answered: with stderr redirected the question
        # would be invisible, and a blind "yes" would pin a fingerprint nobody read.
        ask=_ask_trust if sys.stdin.isatty() and sys.stderr.isatty() else None,
    )
    if args.ca_file is not None:
        try:  # a CA bundle that cannot be used is not the server's fault: say which file
            ssl.create_default_context(cafile=args.ca_file)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            given = cfg.setting(args, "--ca-file").given(args.ca_file)
            print(f"vitrine: cannot use {given}: {reason}", file=sys.stderr)
            return 2
    connection = ServerConnection(
        host, port, trust, ca_file=args.ca_file, answer_timeout=args.timeout
    )
    try:
        connection.connect()
    except (ConnectionError, ConnectionLost, PinningError, VitrineError) as exc:
        print(f"vitrine: {exc}", file=sys.stderr)
        return 2

    shell: VitrineShell | None = None
    session = ClientSession(connection, notify=lambda text: shell.confirm(text) if shell else None)
    shell = VitrineShell(
        session,
        data_dir=data_dir,
        data_dir_setting=cfg.setting(args, "--data-dir"),
        config_dir=config_dir,
        command_sets=[
            AccountCommands(),
            ImageCommands(),
            BrowseCommands(),
            SimilarCommands(),
            ColourCommands(),
            CartCommands(),
            OrderHistoryCommands(),
        ],
        allow_cli_args=False,
    )
    intro = (
        f"Connected to Vitrine {connection.server_version} at {connection.server} "
        f"({connection.fingerprint}). Type help for commands."
    )
    # Only a person at a terminal is greeted on stdout; for a script stdout carries nothing
    # but the commands' output (so `| jq` works), and the greeting goes to stderr if anywhere.
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    shell.intro = intro if interactive and not args.commands else ""
    if not interactive and not args.commands:
        print(intro, file=sys.stderr)
    at_terminal = sys.stdin.isatty()
    try:
        # Commands given as arguments are the whole script unless a person is at a terminal
        # to take over: reading stdin as well would take the lines of a `while read` loop
        # around the client for commands, and with stdout piped (`| jq`) a shell left open
        # shows no prompt and looks hung.
        if args.commands and (
            run_arguments(shell, args.commands, at_terminal=interactive) or not interactive
        ):
            return _stopped_status(shell) or shell.exit_code
        scripted_status = shell.exit_code
        shell.stop_on_failure = not at_terminal
        try:
            status = shell.cmdloop()
        except KeyboardInterrupt:  # one that came between cmd2's own handling of them
            if not shell.interrupted:
                raise
        stopped = _stopped_status(shell, between="while waiting for the next command")
        if stopped:
            return stopped
        if shell.failed_command is not None:
            shell.perror(
                f"Stopped at `{shell.failed_command}`, which failed: nothing after it was run.",
                style=None,
            )
        # A person at a terminal has seen each failure already; a typo earlier in the session
        # should not make the whole session "fail". Scripts (arguments, piped input) keep it.
        return scripted_status if at_terminal else status
    finally:
        connection.close()


def run_arguments(shell: VitrineShell, commands: list[str], *, at_terminal: bool) -> bool:
    """Run the argument commands in order, stopping at the first that fails; True when the
    client should exit now (a `quit`, a SIGINT without a terminal, or a failure with nobody at
    a terminal to carry on).

    SIGINT goes to the shell's own handler, as in `cmdloop`: without a terminal it then stops
    the run as it stops a script read from stdin (`_stopped_status` says where, status 130).
    Under Python's default handler the interrupted command merely failed, and the run ended
    as after any failure, with status 1. An ignored SIGINT stays ignored: bash starts a
    script's background jobs (`client.py ... &`) so, for a Ctrl-C meant for the foreground."""
    shell.stop_on_failure = True
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, shell.sigint_handler)
    after = ""
    try:
        for done, command in enumerate(commands, start=1):
            ran_before, after = after, command.strip()
            stop = shell.onecmd_plus_hooks(command)
            if shell.interrupted:
                if not shell.interrupted_during:  # it came before this command began
                    shell.interrupted_after = ran_before
                return True
            if not stop:
                continue
            if shell.output_closed:  # nobody reads what would follow, nor a note about it
                return True
            skipped = len(commands) - done
            if shell.failed_command is None:  # quit
                if skipped:
                    shell.perror(
                        f"Quit at `{command.strip()}`: {plural(skipped, 'command')} after it "
                        "not run.",
                        style=None,
                    )
                return True
            if skipped:
                shell.perror(
                    f"Stopped at `{shell.failed_command}`, which failed: "
                    f"{plural(skipped, 'command')} after it not run.",
                    style=None,
                )
            shell.failed_command = None
            return not at_terminal
        return False
    except KeyboardInterrupt:  # between two commands, outside any command's own handling
        if not shell.interrupted:
            raise
        shell.interrupted_during, shell.interrupted_after = "", after
        return True
    finally:
        signal.signal(signal.SIGINT, previous)
        shell.stop_on_failure = False


def _stopped_status(shell: VitrineShell, between: str = "") -> int:
    """The exit status of a run that must stop whatever its commands did, else 0: the reader
    of stdout gone (141, said nowhere), or a SIGINT without a terminal (130). The same rule for
    commands given as arguments and read from stdin: stderr ends with where it stopped, and
    nothing after that was run. `between` says where a SIGINT between commands came, when no
    command had run yet there."""
    if shell.output_closed:
        return SIGPIPE_STATUS
    if not shell.interrupted:
        return 0
    if shell.interrupted_during:
        where = f"at `{shell.interrupted_during}`: nothing after it was run"
    elif shell.interrupted_after:
        where = f"after `{shell.interrupted_after}`: nothing after it was run"
    else:
        where = f"{between or 'before the first command'}: nothing more was run"
    shell.perror(f"Interrupted {where}.", style=None)
    return INTERRUPTED_STATUS
