"""Work whose client left (`Services.finish_regardless`) and then failed was read only to keep
asyncio quiet, so an upload lost to a database error, a full disk or a bug left no trace: its
request line had said "disconnected". Such a failure is now logged as an ERROR with its
traceback, a refusal as the request line would have logged it (INFO, with its code), and a
failure whose request still waits is left to that request, which answers and logs it.

The work here is a coroutine standing in for an upload (a real one cannot be made to fail with
a database error after its client left without breaking the disk under a server); the end to
end counterpart, uploads finished after their client left, is in test_unfinished_uploads.py.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from types import SimpleNamespace

import pytest

from protocol.errors import ErrorCode, VitrineError
from service.context import Services

LOGGER = "vitrine.requests"


def _run(failure: BaseException, *, client_leaves: bool) -> list[dict]:
    """Run work that fails with `failure` through finish_regardless, its request cancelled
    first if `client_leaves`; returns what reached asyncio's exception handler."""
    holder = SimpleNamespace(unfinished=set(), max_unfinished=4)
    unhandled: list[dict] = []

    async def upload() -> None:
        await asyncio.sleep(0.05)
        raise failure

    async def request() -> None:
        await Services.finish_regardless(holder, upload(), "UploadImage 7 user=pat")  # type: ignore[arg-type]

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
        waiting = asyncio.ensure_future(request())
        await asyncio.sleep(0)
        if client_leaves:
            waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await asyncio.sleep(0.2)
        assert holder.unfinished == set()

    asyncio.run(scenario())
    return unhandled


def test_an_unexpected_failure_after_the_client_left_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert _run(sqlite3.OperationalError("disk I/O error"), client_leaves=True) == []
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.ERROR
    assert "UploadImage 7 user=pat" in record.getMessage()
    assert "client had left" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], sqlite3.OperationalError)


def test_a_refusal_after_the_client_left_is_logged_as_a_refused_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    refusal = VitrineError(ErrorCode.BAD_REQUEST, "That file is not an image.")
    assert _run(refusal, client_leaves=True) == []
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.INFO and record.exc_info is None
    assert "UploadImage 7 user=pat" in record.getMessage()
    assert "outcome=BAD_REQUEST" in record.getMessage()


@pytest.mark.parametrize(
    "failure",
    [sqlite3.OperationalError("disk I/O error"), VitrineError(ErrorCode.BAD_REQUEST, "no")],
)
def test_a_failure_whose_request_still_waits_is_left_to_that_request(
    failure: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    """The request answers it, and its line (or `service.connection._failed`) logs it: a
    second line here would count one failure twice."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    assert _run(failure, client_leaves=False) == []
    assert [r for r in caplog.records if r.name == LOGGER] == []
