"""Vitrine server: parse flags and environment, open the repository, serve until a signal."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sys
from pathlib import Path
from typing import TextIO

from protocol.tls import TlsIdentityError
from service.app import CannotListen, serve
from service.check import check_data_dir
from service.context import ServerConfig
from service.data_dir import DataDirError, DataDirPathError, prepare_data_dir
from service.identity import identity_after_refusals
from util import config as cfg
from util import logs


def announce(line: str, stream: TextIO = sys.stdout) -> None:
    """Write a start-up line in one call. `print` writes the text and the newline separately,
    and a log line from a background thread (the embedding backfill starts at once) could land
    between them, gluing its date onto the port that scripts and tests read from this line."""
    stream.write(line + "\n")
    stream.flush()


log = logging.getLogger("vitrine.server")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return value


def positive_seconds(text: str) -> float:
    """Zero or less would drop every connection, even mid-handshake, without a word."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def positive_bytes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of bytes")
    return value


#: The largest --max-image-bytes. A frame may not pass max_frame_bytes, and the file travels in
#: two: the upload (the file and its text: title, description, tags and file name, under 64 KiB
#: at their wire limits) and show_image's answer, which carries the text again, the owner's
#: name, the palette and the thumbnail (at most 256 px a side, so under 196 KiB even stored
#: raw). A larger setting would accept files that the owner could then never download.
LARGEST_IMAGE_BYTES = ServerConfig.max_frame_bytes - 512 * 1024


def positive_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def image_bytes(text: str) -> int:
    value = positive_bytes(text)
    if value > LARGEST_IMAGE_BYTES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is more than one upload can carry; the largest is {LARGEST_IMAGE_BYTES}"
        )
    return value


def log_level(text: str) -> str:
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return text.upper()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve a Vitrine image repository over TLS 1.3.")
    cfg.add_option(parser, "--host", default="127.0.0.1", help="address to listen on")
    cfg.add_option(
        parser,
        "--port",
        default=7878,
        type=port_number,
        help="port to listen on (0: any free)",
    )
    cfg.add_option(
        parser,
        "--data-dir",
        default=str(cfg.default_server_data_dir()),
        type=Path,
        help="where the database, blobs, keys and certificate live",
    )
    cfg.add_option(
        parser, "--tls-cert", type=Path, help="PEM certificate instead of the self-made one"
    )
    cfg.add_option(parser, "--tls-key", type=Path, help="PEM private key for --tls-cert")
    cfg.add_option(
        parser,
        "--idle-timeout",
        default=300.0,
        type=positive_seconds,
        help="seconds before a silent connection is closed",
    )
    cfg.add_option(
        parser,
        "--write-timeout",
        default=ServerConfig.write_timeout_s,
        type=positive_seconds,
        help="seconds a peer may leave an answer unread before its connection is dropped",
    )
    cfg.add_option(
        parser,
        "--max-image-bytes",
        default=ServerConfig.max_image_bytes,
        type=image_bytes,
        help=f"largest image file accepted, in bytes (at most {LARGEST_IMAGE_BYTES})",
    )
    cfg.add_option(
        parser,
        "--max-connections",
        default=ServerConfig.max_connections,
        type=positive_count,
        help="open connections at once, server-wide (each idle one holds about 275 KB)",
    )
    cfg.add_option(
        parser,
        "--max-connections-per-address",
        default=ServerConfig.max_connections_per_address,
        type=positive_count,
        help="open connections from one client address (an IPv6 /64 counts as one)",
    )
    cfg.add_option(
        parser,
        "--max-connections-per-account",
        default=ServerConfig.max_connections_per_account,
        type=positive_count,
        help="connections logged in as one account at once",
    )
    cfg.add_option(
        parser,
        "--weights",
        help="MobileNetV2 no-top .weights.h5 for search by image (default: Keras' own ImageNet "
        "download, which needs internet); without a model the rest of the server still works",
    )
    cfg.add_option(
        parser,
        "--cache-dir",
        default=str(cfg.platform_cache_dir()),
        type=Path,
        help="where the image model, converted once per weights file, is kept (safe to delete: "
        "the next start converts it again)",
    )
    parser.add_argument(
        "--no-colours",
        action="store_true",
        help="do not extract dominant colours at upload: saves about 5%% of upload time, and "
        "search_by_color answers UNAVAILABLE on such a run; a later run with colours computes "
        "the missing colours in the background, right after start-up",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the data directory (blobs, rows, orders) instead of serving, deleting nothing "
        "(unreferenced blobs and leftover temporary files are reported; the next start "
        "removes them); exit 0 if consistent, "
        "1 if not",
    )
    cfg.add_option(
        parser,
        "--log-level",
        default="INFO",
        type=log_level,
        choices=LOG_LEVELS,
        help="how much to log",
    )
    args = parser.parse_args(argv)
    # A value from a VITRINE_* variable is checked here, so that a bad one is blamed on the
    # variable (argparse would name the flag), and remembered, so that later sentences are too.
    cfg.settle(parser, args)
    if (args.tls_cert is None) != (args.tls_key is None):
        cert, key = cfg.setting(args, "--tls-cert"), cfg.setting(args, "--tls-key")
        parser.error(f"{cert.name} and {key.name} go together: give both or neither")
    return args


def main(argv: list[str] | None = None) -> int:
    # Everything the server creates in its data directory is its own alone: blobs, keys and
    # certificates are written owner-only anyway, and this covers what SQLite and the vector
    # index create (vitrine.db and its WAL, vector-index/).
    os.umask(0o077)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logs.configure(args.log_level)
    try:
        if args.check:
            report = check_data_dir(Path(args.data_dir), tls_files_of(args), tls_settings_of(args))
            print(report.text(), flush=True)
            return 0 if report.ok else 1
        return run_server(args)
    except DataDirError as exc:
        print(f"vitrine: {exc.naming(cfg.setting(args, '--data-dir'))}", file=sys.stderr)
        # A path that can never be a data directory is a bad argument, like argparse's own.
        return 2 if isinstance(exc, DataDirPathError) else 1
    except TlsIdentityError as exc:
        print(f"vitrine: {exc}", file=sys.stderr)
        return 1


def tls_files_of(args: argparse.Namespace) -> tuple[Path, Path] | None:
    """--tls-cert and --tls-key as the pair `serve` and `--check` take (parse_args refused
    half a pair: both or neither)."""
    return None if args.tls_cert is None else (Path(args.tls_cert), Path(args.tls_key))


def tls_settings_of(args: argparse.Namespace) -> tuple[cfg.Setting, cfg.Setting]:
    """Where --tls-cert and --tls-key came from, for the sentences that name them."""
    return cfg.setting(args, "--tls-cert"), cfg.setting(args, "--tls-key")


def run_server(args: argparse.Namespace) -> int:
    config = ServerConfig(
        host=args.host,
        port=int(args.port),
        data_dir=Path(args.data_dir),
        idle_timeout_s=float(args.idle_timeout),
        write_timeout_s=float(args.write_timeout),
        max_image_bytes=int(args.max_image_bytes),
        max_connections=int(args.max_connections),
        max_connections_per_address=int(args.max_connections_per_address),
        max_connections_per_account=int(args.max_connections_per_account),
        weights=args.weights or None,
        cache_dir=Path(args.cache_dir),
        cache_dir_setting=cfg.setting(args, "--cache-dir"),
        colours=not args.no_colours,
    )
    # Before the TLS identity, which would otherwise be the first to trip over a bad path.
    prepare_data_dir(config.data_dir)
    identity = identity_after_refusals(config, tls_files_of(args), tls_settings_of(args))

    try:
        asyncio.run(serve(config, identity, announce))
    except CannotListen as exc:
        print(f"vitrine: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the data directory's files, say: not the address
        print(f"vitrine: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
