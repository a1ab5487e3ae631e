"""Vitrine server: parse flags and environment, open the repository, serve until a signal."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TextIO

from service.app import (
    CannotListen,
    DataDirError,
    DataDirPathError,
    prepare_data_dir,
    serve,
    tls_identity,
)
from service.check import check_data_dir
from service.context import ServerConfig
from util import config as cfg
from util import logs


def announce(line: str, stream: TextIO = sys.stdout) -> None:
    """Write a start-up line in one call. `print` writes the text and the newline separately,
    and a log line from a background thread (the embedding backfill starts at once) could land
    between them, gluing its date onto the port that scripts and tests read from this line."""
    stream.write(line + "\n")
    stream.flush()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve a Vitrine image repository over TLS 1.3.")
    cfg.add_option(parser, "--host", default="127.0.0.1", help="address to listen on")
    cfg.add_option(parser, "--port", default=7878, type=int, help="port to listen on (0: any free)")
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
        type=float,
        help="seconds before a silent connection is closed",
    )
    cfg.add_option(
        parser,
        "--write-timeout",
        default=ServerConfig.write_timeout_s,
        type=float,
        help="seconds a peer may leave an answer unread before its connection is dropped",
    )
    cfg.add_option(
        parser,
        "--max-image-bytes",
        default=ServerConfig.max_image_bytes,
        type=int,
        help="largest image file accepted, in bytes",
    )
    cfg.add_option(
        parser,
        "--weights",
        help="MobileNetV2 no-top .weights.h5 for search by image (default: Keras' own ImageNet "
        "download, which needs internet); without a model the rest of the server still works",
    )
    parser.add_argument(
        "--no-colours",
        action="store_true",
        help="do not extract dominant colours at upload: saves about 5%% of upload time, and "
        "search_by_color does not find an image uploaded meanwhile until a later run with "
        "colours has computed its colours (in the background, right after start-up)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the data directory (blobs, rows, orders) instead of serving, deleting nothing "
        "(unreferenced blobs are reported; the next start removes them); exit 0 if consistent, "
        "1 if not",
    )
    cfg.add_option(parser, "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logs.configure(args.log_level)
    try:
        if args.check:
            report = check_data_dir(Path(args.data_dir))
            print(report.text(), flush=True)
            return 0 if report.ok else 1
        return run_server(args)
    except DataDirError as exc:
        print(f"vitrine: {exc}", file=sys.stderr)
        # A path that can never be a data directory is a bad argument, like argparse's own.
        return 2 if isinstance(exc, DataDirPathError) else 1


def run_server(args: argparse.Namespace) -> int:
    config = ServerConfig(
        host=args.host,
        port=int(args.port),
        data_dir=Path(args.data_dir),
        idle_timeout_s=float(args.idle_timeout),
        write_timeout_s=float(args.write_timeout),
        max_image_bytes=int(args.max_image_bytes),
        weights=args.weights or None,
        colours=not args.no_colours,
    )
    # Before the TLS identity, which would otherwise be the first to trip over a bad path.
    prepare_data_dir(config.data_dir)
    ssl_context, fingerprint = tls_identity(config, args.tls_cert, args.tls_key)

    try:
        asyncio.run(serve(config, ssl_context, fingerprint, announce))
    except CannotListen as exc:
        print(f"vitrine: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the data directory's files, say: not the address
        print(f"vitrine: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
