"""Account commands: create_user, login, logout, whoami, change_password.

In scripts, VITRINE_PASSWORD answers the password prompts and VITRINE_NEW_PASSWORD gives the new
password to change_password.
"""

from __future__ import annotations

import argparse

import cmd2

from protocol.base import normalise_password
from protocol.messages import CreateUser, UserInfo, WhoAmI, canonical_username, invalid_username
from shell.app import ACCOUNT, CommandFailed, TextArgumentParser, VitrineShell, parser
from shell.session import DEVICE_TOKENS_FILE, DeviceTokenStore
from shell.text import printable


def _check_name(name: str) -> None:
    """The server's rule for names, applied before a password is asked for one."""
    if canonical_username(name) is None:
        raise CommandFailed(invalid_username(repr(printable(name))))


def _device_tokens(shell: VitrineShell) -> DeviceTokenStore:
    """Beside known_servers: what lets this client's owner log in while strangers guess."""
    return DeviceTokenStore(shell.config_dir / DEVICE_TOKENS_FILE)


class AccountCommands(cmd2.CommandSet[VitrineShell]):
    DEFAULT_CATEGORY = ACCOUNT

    create_parser = TextArgumentParser(
        "Create an account on the server. The first account is the admin.",
        never_dashed="a name cannot start with '-'",
    )
    create_parser.add_argument(
        "name", metavar="NAME", help="3-32 characters: a-z, 0-9, '.', '_' or '-'"
    )

    @cmd2.with_argparser(create_parser)
    def do_create_user(self, args: argparse.Namespace) -> None:
        shell = self._cmd
        # Refused before the password is asked (twice), not after: the server stays the judge
        # (of a name taken too), this only spares typing a password for a name it would refuse.
        _check_name(args.name)
        password = shell.ask_new_secret("New password: ", "VITRINE_PASSWORD")
        user = shell.session.call(CreateUser(id=0, name=args.name, password=password), UserInfo)
        role = " as the admin" if user.admin else ""
        shell.confirm(f"Created user {user.name}{role}. Log in with: login {user.name}")

    # A TextArgumentParser as create_user's: with a plain one `login -bad` read -bad as an
    # unknown option and then said NAME was missing, which explains nothing.
    login_parser = TextArgumentParser(
        "Log in to the server.", never_dashed="a name cannot start with '-'"
    )
    login_parser.add_argument("name", metavar="NAME", help="your user name")

    @cmd2.with_argparser(login_parser)
    def do_login(self, args: argparse.Namespace) -> None:
        shell = self._cmd
        # No account can have a name outside the rule: asking for the password would be for
        # nothing, and a name too long for the wire would come back as a protocol error.
        _check_name(args.name)
        password = shell.ask_secret("Password: ")
        session = shell.session.login(args.name, password, _device_tokens(shell))
        role = " (admin)" if session.admin else ""
        shell.confirm(f"Logged in as {session.name}{role}.")

    @cmd2.with_argparser(parser("Log out; the session cannot be resumed afterwards."))
    def do_logout(self, _: argparse.Namespace) -> None:
        shell = self._cmd
        name = shell.session.user
        shell.session.logout()
        shell.confirm(f"Logged out {name}.")

    @cmd2.with_argparser(parser("Show who you are logged in as."))
    def do_whoami(self, _: argparse.Namespace) -> None:
        shell = self._cmd
        user = shell.session.call(WhoAmI(id=0), UserInfo)
        role = " (admin)" if user.admin else ""
        shell.poutput(f"{user.name}{role} on {shell.session.server}")

    @cmd2.with_argparser(parser("Change your password; your other sessions end."))
    def do_change_password(self, _: argparse.Namespace) -> None:
        shell = self._cmd
        old = shell.ask_secret("Current password: ")
        new = shell.ask_new_secret("New password: ", "VITRINE_NEW_PASSWORD")
        # Compared as the server compares them (NFC): it would still end every other session,
        # for nothing.
        if normalise_password(new) == normalise_password(old):
            raise CommandFailed("The new password is the current one; nothing was changed.")
        shell.session.change_password(old, new, _device_tokens(shell))
        shell.confirm("Password changed; your other sessions have ended.")
