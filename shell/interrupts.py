"""Holding Ctrl-C, SIGTERM and SIGHUP while a request the server will carry out anyway is in
flight: checkout's order, add_image's uploads already sent. A KeyboardInterrupt raised between
sending and recording the answer loses the answer (the cart keeps lines already bought, a run's
summary never comes), so presses are counted and heeded only where the command waits.

add_image also lets SIGTERM and SIGHUP stop its sending the way Ctrl-C does (`stopping`), so
that a run killed by `timeout` still says what became of every file before it ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, wait
from types import FrameType
from typing import Any


class HeldInterrupts:
    """Ctrl-C, SIGTERM and SIGHUP are held back from just before an order's key is written down
    and the order sent (`hold`) until the cart file is saved (the end of the `with`), and heeded
    only in `wait`.

    The server places an order it was sent whatever the shell does, so a KeyboardInterrupt
    raised anywhere in between (while the "waiting" notice is printed, between the answer and
    the cart's save) would keep the bought lines in the cart for the next checkout to buy
    again. The handler only counts presses: one it does not reach a `wait` for is dropped, and
    the command ends as it would have. Signal handlers run in the main thread only; elsewhere
    no Ctrl-C arrives, so nothing is held.

    SIGTERM (`timeout` in cron, a service stopping) and SIGHUP (the terminal closed) went to
    cmd2's handler, whose SystemExit left the cart unsaved and the checkout "failed". Now one
    ends the wait at once (nobody is there to wait for), the outcome is unknown unless the
    answer is in, the cart is saved as usual, and `end` then ends the shell by that signal. A
    signal that was ignored (`nohup`) stays ignored."""

    #: How soon a press held back ends a `wait` (a handler that only counts does not wake it).
    POLL_S = 0.05
    TERMINATING = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self._presses = 0
        self._heeded = 0
        self._previous: dict[int, Any] = {}
        self._holding = False
        #: The first SIGTERM or SIGHUP received while holding (or while `stopping`).
        self.terminated: int | None = None
        #: Inside `stopping`: a SIGTERM or SIGHUP becomes one KeyboardInterrupt.
        self._stopping = False
        self._stop_raised = False

    def __enter__(self) -> HeldInterrupts:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._holding:
            self._holding = False
            for signum, previous in self._previous.items():
                # None: the old handler was not set from Python; Python's own is the nearest.
                if previous is None:
                    previous = (
                        signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
                    )
                signal.signal(signum, previous)
            self._previous = {}

    def hold(self) -> None:
        if not self._holding and threading.current_thread() is threading.main_thread():
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._count)
            for signum in self.TERMINATING:
                if signal.getsignal(signum) != signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._terminate)
            self._holding = True

    def _count(self, signum: int, frame: FrameType | None) -> None:
        self._presses += 1

    def _terminate(self, signum: int, frame: FrameType | None) -> None:
        if self.terminated is None:
            self.terminated = signum

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self._terminate(signum, frame)
        self._raise_stop()

    def _raise_stop(self) -> None:
        """Once per run: the KeyboardInterrupt already raised stopped it, and a second one
        would cut short the accounting it started."""
        if not self._stop_raised:
            self._stop_raised = True
            raise KeyboardInterrupt("stopped by a signal")

    @contextlib.contextmanager
    def stopping(self) -> Iterator[None]:
        """SIGTERM and SIGHUP stop what runs in the block as a first Ctrl-C does (a
        KeyboardInterrupt, once), and are remembered in `terminated` for `end`, which the
        caller calls once it has said what was done. add_image's uploads got cmd2's SystemExit
        instead: the process ended with files sent and no word about them. Outside the main
        thread no signal arrives, so nothing changes; a signal ignored (`nohup`) stays so.
        Holding (`hold`, `whole`) inside the block counts them as usual, and lets one through
        at the end of `whole`."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous: dict[int, Any] = {}
        for signum in self.TERMINATING:
            if signal.getsignal(signum) != signal.SIG_IGN:
                previous[signum] = signal.signal(signum, self._stop)
        self._stopping = True
        try:
            yield
        finally:
            self._stopping = False
            for signum, handler in previous.items():
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def end(self) -> None:
        """After the cart is saved and the outcome said: end the shell by the signal it got, as
        if it had not been held (its exit status says so to a parent shell or cron)."""
        signum = self.terminated
        if signum is None:
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)  # only if the signal is blocked in this thread

    def wait(self, future: Future[Any], timeout: float | None = None) -> bool:
        """True once the future is done; False at a press not heeded yet, or after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not future.done():
            if self.terminated is not None:
                return False
            if self._presses > self._heeded:
                self._heeded = self._presses
                return False
            left = self.POLL_S
            if deadline is not None:
                left = min(left, deadline - time.monotonic())
                if left <= 0:
                    return False
            wait([future], timeout=left)
        return True

    @contextlib.contextmanager
    def whole(self) -> Iterator[None]:
        """Keep a first press out of one step's output (add_image: one file's outcome and its
        line), which it used to cut, as at `{"path":"…/b042.j`. Such a press is let through at
        the end of the block, as if it had come just then; once holding, presses are only
        counted anyway. So is a SIGTERM or SIGHUP: inside `stopping` it then stops the run,
        elsewhere it ends the shell."""
        if self._holding:  # held already: presses are only counted
            yield
            return
        presses = self._presses
        self.hold()
        try:
            yield
        finally:
            self.__exit__(None, None, None)
        if self.terminated is not None:  # SIGTERM or SIGHUP meanwhile, as if it came now
            if self._stopping:
                self._raise_stop()
            else:
                self.end()
        if self._presses > presses:
            self._heeded = self._presses
            signal.raise_signal(signal.SIGINT)  # to the handler held back, whatever it does
