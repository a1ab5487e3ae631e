"""Where things live and how flags meet their `VITRINE_*` environment twins.

Flags added with `add_option` can also be given as an environment variable (`--data-dir` as
`VITRINE_DATA_DIR`, see `env_name`) so that `make run`, CI and service managers configure
Vitrine the same way; the flag wins when both are set, and `--help` names each twin. Not every
flag has one: the server's `--no-colours` and `--check`, and the client's `--trust-new-server`
and `--fingerprint`, are command-line only. The client's `--data-dir` is
`VITRINE_CLIENT_DATA_DIR`, so that one exported `VITRINE_DATA_DIR` cannot put carts into the
server's data directory. Defaults come from platformdirs so a plain `python server.py` works
with nothing set up.

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
    return Path(env_value("VITRINE_CACHE_DIR") or platformdirs.user_cache_dir(APP_NAME))


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


def add_option(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    default: object = None,
    help: str,
    env: str | None = None,
    **kwargs: object,
) -> None:
    """Add `flag` with its environment twin as the default, and say so in the help. `env`
    names the twin where env_name's would be another program's (the client's --data-dir)."""
    env = env or env_name(flag)
    from_env = env_value(env)
    value = default if from_env is None else from_env
    parser.add_argument(flag, default=value, help=f"{help} (env {env})", **kwargs)  # type: ignore[arg-type]


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
