"""Where things live and how flags meet their `VITRINE_*` environment twins.

Flags added with `add_option` can also be given as an environment variable (`--data-dir` as
`VITRINE_DATA_DIR`, see `env_name`) so that `make run`, CI and service managers configure
Vitrine the same way; the flag wins when both are set, and `--help` names each twin. Not every
flag has one: the server's `--no-colours` and `--check`, and the client's `--trust-new-server`
and `--fingerprint`, are command-line only. The client's `--data-dir` is
`VITRINE_CLIENT_DATA_DIR`, so that one exported `VITRINE_DATA_DIR` cannot put carts into the
server's data directory. Defaults come from platformdirs so a plain `python server.py` works
with nothing set up.

A value is blamed on where it came from: a bad one from a variable is refused naming the
variable (`VITRINE_PORT: 'abc' is not a port number`, `VITRINE_DATA_DIR=/etc/passwd is not a
directory`), never a flag that nobody typed. `add_option` marks such a value (`EnvValue`) and
`settle` converts it after parsing and records its `Setting`, which the code that words a
message about the value takes.

A variable set but empty (`VITRINE_CONFIG_DIR=`) counts as unset, for every variable here
(`env_value`): an empty path would otherwise mean the current directory, and the client would
write its pins, history and carts wherever it happened to be started.

The client's own folders are owner-only (`private_directory`), every level it has to create
included: `carts/<server>/<user>.json` names the accounts used on each server, and a plain
`mkdir -p` under the usual umask would let every local user list them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP_NAME = "vitrine"


def default_server_data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME)) / "server"


def default_client_config_dir() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME))


def default_client_data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME)) / "client"


def default_cache_dir() -> Path:
    """The server's model cache when no --cache-dir reached it (the bench scripts): the same
    variable, so that they share the server's converted model."""
    return Path(env_value("VITRINE_CACHE_DIR") or platform_cache_dir())


def platform_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir(APP_NAME))


def private_directory(path: Path) -> None:
    """Make `path` and each missing folder above it 0700, as the XDG spec asks of a program
    creating its base directories: `Path.mkdir(parents=True, mode=...)` gives the mode to the
    last level only, and the others 0755 under the usual umask. Folders already there keep
    their mode (a `--data-dir` someone chose is theirs); raises OSError as mkdir does."""
    missing: list[Path] = []
    for level in (path, *path.parents):
        if level.is_dir():
            break
        missing.append(level)
    for level in reversed(missing):
        level.mkdir(mode=0o700, exist_ok=True)  # another shell may make it at the same moment


def tighten_directory(path: Path) -> None:
    """Take group and other access away from a folder that only Vitrine uses, made looser by
    an older client (or by hand). Only one of this user's own, and quietly: failing to tighten
    it is no reason to refuse what the folder is for."""
    with contextlib.suppress(OSError):
        status = path.stat()
        if status.st_uid == os.getuid() and status.st_mode & 0o077:
            path.chmod(0o700)


def env_value(name: str) -> str | None:
    """The variable's value, or None when it is unset or empty (see the module docstring):
    `VAR=` in a unit file or a `docker run -e VAR=` is how people clear a setting."""
    return os.environ.get(name) or None


def env_name(flag: str) -> str:
    """`--data-dir` -> `VITRINE_DATA_DIR`."""
    return "VITRINE_" + flag.lstrip("-").replace("-", "_").upper()


class EnvValue(str):
    """A flag's value taken from its `VITRINE_*` twin, not yet converted: checked after parsing
    (`settle`), so that a bad one is blamed on the variable, not on a flag the user never gave.
    It carries the flag's converter, which argparse must not run on it."""

    env: str
    flag: str
    convert: Callable[[str], object] | None

    def __new__(
        cls, env: str, text: str, flag: str = "", convert: Callable[[str], object] | None = None
    ) -> EnvValue:
        value = super().__new__(cls, text)
        value.env, value.flag, value.convert = env, flag, convert
        return value


@dataclass(frozen=True)
class Setting:
    """Where a flag's value came from, for the sentences about it: `env` is the variable when
    the value was taken from it. With `env` None every wording is the flag's alone, exactly as
    before variables existed, so messages about a typed flag do not change."""

    flag: str
    env: str | None = None

    @property
    def name(self) -> str:
        """What the user set: `is VITRINE_CONFIG_DIR a file?`."""
        return self.env or self.flag

    @property
    def either(self) -> str:
        """What the user may change: `choose another VITRINE_DATA_DIR or --data-dir`."""
        return f"{self.env} or {self.flag}" if self.env else self.flag

    def shown(self, value: object) -> str:
        """The value where a sentence names it: `VITRINE_DATA_DIR=/etc/passwd is not...`."""
        return f"{self.env}={value}" if self.env else str(value)

    def given(self, value: object) -> str:
        """The value with what gave it: `--ca-file /x`, `VITRINE_CA_FILE=/x`."""
        return f"{self.env}={value}" if self.env else f"{self.flag} {value}"


def from_flag(convert: Callable[[str], object]) -> Callable[[str], object]:
    """`convert` for values given as flags; a twin's value passes through to `settle`."""

    def converter(text: str) -> object:
        return text if isinstance(text, EnvValue) else convert(text)

    converter.__name__ = getattr(convert, "__name__", "value")  # argparse's "invalid X value"
    return converter


def add_option(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    default: object = None,
    help: str,
    env: str | None = None,
    type: Callable[[str], object] | None = None,
    **kwargs: object,
) -> None:
    """Add `flag` with its environment twin as the default, and say so in the help. `env`
    names the twin where env_name's would be another program's (the client's --data-dir).
    A twin's value stays an `EnvValue` until `settle` converts it."""
    env = env or env_name(flag)
    from_env = env_value(env)
    value = default if from_env is None else EnvValue(env, from_env, flag, type)
    converter = None if type is None else from_flag(type)
    parser.add_argument(flag, default=value, type=converter, help=f"{help} (env {env})", **kwargs)  # type: ignore[arg-type]


def settle(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Convert what came from environment twins, refusing a bad one the way argparse refuses a
    bad flag (one line, exit 2) but naming the variable; and keep where each came from in
    `args.settings` (see `setting`)."""
    settings: dict[str, Setting] = {}
    for dest, value in vars(args).items():
        if not isinstance(value, EnvValue):
            continue
        settings[dest] = Setting(value.flag, value.env)
        if value.convert is None:
            setattr(args, dest, str(value))
            continue
        try:
            setattr(args, dest, value.convert(str(value)))
        except argparse.ArgumentTypeError as exc:
            parser.error(f"{value.env}: {exc}")
    args.settings = settings


def setting(args: argparse.Namespace, flag: str) -> Setting:
    """Where `flag`'s value in `args` (settled) came from: its variable, or the command line or
    the default, which the flag names."""
    dest = flag.lstrip("-").replace("-", "_")
    return getattr(args, "settings", {}).get(dest) or Setting(flag)


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """Parse `host`, `host:port` or `[v6]:port`; raise ValueError with a readable reason."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"{text!r} has no host name; expected HOST or HOST:PORT.")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{port_text!r} is not a port number (1-65535).")
    return host, int(port_text)
