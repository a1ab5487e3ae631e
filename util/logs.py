"""One logging set-up for the server, so every line has the same shape and goes to stderr.

The server logs a line per request from its event loop, which every connection shares; the
lines are therefore formatted and written by a background thread (`QueueListener`), and the
event loop only hands over the record.
"""

from __future__ import annotations

import atexit
import logging
import queue
import sys
from logging.handlers import QueueHandler, QueueListener

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _HandOver(QueueHandler):
    """Queue the record as it is; the listener's handler formats it in its own thread.

    The stock `QueueHandler.prepare` formats the message in the caller's thread, which is the
    cost we move away. This is safe because the server's log calls pass immutable arguments
    (names, numbers, strings) and exceptions, which the listener can still format later.
    """

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def configure(level: str = "INFO") -> None:
    """Log to stderr through a background thread; flushed and stopped at exit."""
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(logging.Formatter(FORMAT))
    listener = QueueListener(records, writer)
    root = logging.getLogger()
    root.handlers[:] = [_HandOver(records)]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    listener.start()
    atexit.register(listener.stop)
