"""Starting the shell: flags, the first connection (with pinning), then the command loop."""

from __future__ import annotations

import argparse
import ssl
import sys
from pathlib import Path

from protocol.errors import VitrineError
from protocol.pinning import KnownServers, PinningError
from shell.account_commands import AccountCommands
from shell.app import VitrineShell
from shell.browse_commands import BrowseCommands
from shell.cart_commands import CartCommands
from shell.colour_commands import ColourCommands
from shell.connection import ConnectionLost, ServerConnection, TrustPolicy
from shell.image_commands import ImageCommands
from shell.order_commands import OrderHistoryCommands
from shell.session import ClientSession
from shell.similar_commands import SimilarCommands
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
    )
    parser.add_argument(
        "--trust-new-server",
        action="store_true",
        help="pin an unknown server's fingerprint without asking",
    )
    parser.add_argument(
        "--fingerprint",
        metavar="SHA256:...",
        help="the server fingerprint you expect; anything else is refused",
    )
    cfg.add_option(
        parser,
        "--ca-file",
        type=Path,
        help="verify the server's certificate against this CA bundle",
    )
    parser.add_argument(
        "commands",
        nargs="*",
        metavar="COMMAND",
        help='shell commands to run, each one argument (quote it: "login bob")',
    )
    return parser.parse_args(argv)


def _ask_trust(server: str, fingerprint: str) -> bool:
    print(f"The authenticity of the Vitrine server at {server} can't be established.")
    print(f"Its certificate fingerprint is {fingerprint}.")
    try:
        answer = input("Are you sure you want to trust it and connect (yes/no)? ")
    except (EOFError, KeyboardInterrupt):
        print()
        return False
    return answer.strip().lower() in ("yes", "y")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        host, port = cfg.split_host_port(args.server, DEFAULT_PORT)
    except ValueError as exc:
        print(f"vitrine: bad --server: {exc}", file=sys.stderr)
        return 2
    config_dir, data_dir = Path(args.config_dir), Path(args.data_dir)
    trust = TrustPolicy(
        known_servers=KnownServers(config_dir / "known_servers"),
        trust_new=args.trust_new_server,
        expected=args.fingerprint,
        ask=_ask_trust if sys.stdin.isatty() else None,
    )
    if args.ca_file is not None:
        try:  # a CA bundle that cannot be used is not the server's fault: say which file
            ssl.create_default_context(cafile=args.ca_file)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            print(f"vitrine: cannot use --ca-file {args.ca_file}: {reason}", file=sys.stderr)
            return 2
    connection = ServerConnection(host, port, trust, ca_file=args.ca_file)
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
    try:
        if args.commands and shell.runcmds_plus_hooks(args.commands):
            return shell.exit_code
        scripted_status = shell.exit_code
        status = shell.cmdloop()
        # A person at a terminal has seen each failure already; a typo earlier in the session
        # should not make the whole session "fail". Scripts (arguments, piped input) keep it.
        return scripted_status if sys.stdin.isatty() else status
    finally:
        connection.close()
