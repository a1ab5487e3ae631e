"""Strangers cannot lock an account's owner out: the throttle refuses the peer that guessed,
and only slows guesses at one account from many peers (QA of session 19: five wrong guesses
from any address used to refuse even the owner's right password for five minutes).

End to end on a real server, with the attacker on another loopback address (Linux routes the
whole of 127.0.0.0/8 to lo, so a client socket can bind 127.0.0.9), then `LoginThrottle` alone
with a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from pathlib import Path

import pytest

from protocol import codec, framing
from protocol.base import Response
from protocol.errors import ErrorCode, VitrineError
from protocol.messages import (
    PROTOCOL_VERSION,
    ChangePassword,
    CreateUser,
    Error,
    Hello,
    Login,
    Session,
)
from service.auth import LoginThrottle, peer_key
from tests.servers import ServerProcess, run_client

PASSWORD = "correct horse battery"
ATTACKER = "127.0.0.9"


class RawClient:
    """A TLS connection from a chosen loopback address, speaking frames by hand."""

    def __init__(self, server: ServerProcess, source: str) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(
            (server.host, server.port), timeout=60, source_address=(source, 0)
        )
        self.sock = context.wrap_socket(raw, server_hostname=server.host)
        self.ids = 1
        self.call(Hello(id=0, protocol=PROTOCOL_VERSION, client="lockout-test"))

    def call(self, request: object) -> Response:
        self.ids += 1
        request.id = self.ids  # type: ignore[attr-defined]
        self.sock.sendall(framing.frame(codec.encode(request)))  # type: ignore[arg-type]
        body = framing.read_frame_blocking(self.sock, framing.DEFAULT_MAX_FRAME)
        assert body is not None, "the server closed the connection"
        return codec.decode_response(body)

    def close(self) -> None:
        self.sock.close()


def test_guesses_from_another_address_do_not_lock_the_owner_out(
    server: ServerProcess, tmp_path: Path
) -> None:
    owner = server.connect(tmp_path / "owner")
    owner.call(CreateUser(id=0, name="victim", password=PASSWORD))
    owner.call(Login(id=0, name="victim", password=PASSWORD), Session)  # a session from before
    attacker = RawClient(server, ATTACKER)
    try:
        for guess in range(5):
            reply = attacker.call(Login(id=0, name="Victim", password=f"guess-{guess}"))
            assert isinstance(reply, Error) and reply.code is ErrorCode.UNAUTHENTICATED, reply
        refused = attacker.call(Login(id=0, name="victim", password=PASSWORD))
        # The guesser is refused, and told it is about its own address...
        assert isinstance(refused, Error) and refused.code is ErrorCode.RATE_LIMITED, refused
        assert "from your address" in refused.message and "try again in" in refused.message
    finally:
        attacker.close()
    # ...while the owner, from 127.0.0.1, logs in with the right password,
    fresh = server.connect(tmp_path / "fresh")
    assert fresh.call(Login(id=0, name="victim", password=PASSWORD), Session).name == "victim"
    # and the session already logged in can change the password, what a victim would do.
    changed = owner.call(
        ChangePassword(id=0, old_password=PASSWORD, new_password="a brand new password"), Session
    )
    assert changed.name == "victim"
    # The operator sees which account was tried, and from where.
    server.stop()
    log = server.log()
    assert f"wrong password: account='victim' peer={ATTACKER}" in log, log[-3000:]
    assert f"(RATE_LIMITED): account='victim' peer={ATTACKER}" in log, log[-3000:]


def test_a_name_tried_is_logged_escaped(server: ServerProcess, tmp_path: Path) -> None:
    """A name outside the rule is refused at once but still logged, so the operator sees what
    is being tried: %r keeps its control characters from forging a log line."""
    connection = server.connect(tmp_path)
    with pytest.raises(VitrineError):
        connection.call(Login(id=0, name="x\nFORGED outcome=ok", password="whatever1"))
    server.stop()
    log = server.log()
    assert "account='x\\nforged outcome=ok'" in log, log[-3000:]
    assert not any(line.startswith("forged") for line in log.splitlines())


def test_the_shell_refuses_a_login_name_no_account_can_have(
    shared_server: ServerProcess, tmp_path: Path
) -> None:
    done = run_client(
        shared_server, "login " + "a" * 65, config_dir=tmp_path / "client", password=PASSWORD
    )
    assert done.returncode != 0
    assert "Invalid user name" in done.stderr and "3 to 32 characters" in done.stderr, done
    assert "BAD_REQUEST" not in done.stdout + done.stderr and "$.name" not in done.stderr, done


# --- LoginThrottle alone, with a fake clock ------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _throttle(clock: FakeClock, **kwargs: float) -> LoginThrottle:
    settings: dict = {"base_delay": 0.0, "max_delay": 4.0, "window_s": 300.0, **kwargs}
    return LoginThrottle(clock=clock, **settings)


async def _fail(throttle: LoginThrottle, account: str, peer: str, **kwargs: bool) -> float:
    async with asyncio.timeout(1), throttle.attempt(account, peer, **kwargs) as attempt:
        return attempt.failed()


async def _admitted(throttle: LoginThrottle, account: str, peer: str, **kwargs: bool) -> None:
    async with asyncio.timeout(1), throttle.attempt(account, peer, **kwargs) as attempt:
        attempt.succeeded()


def _rate_limited(caught: pytest.ExceptionInfo[VitrineError]) -> str:
    assert caught.value.code is ErrorCode.RATE_LIMITED
    return caught.value.message


def test_many_peers_get_no_more_guesses_than_the_account_limit() -> None:
    """Each pair and each peer has room to spare, but the account's own count refuses: a
    hundred addresses (a /48 of IPv6 holds 65,536 /64s) get five guesses per window, as one
    address would, not five each."""

    async def scenario() -> None:
        clock = FakeClock()
        throttle = _throttle(clock, account_limit=5)
        verdicts = 0
        for i in range(100):
            try:
                await _fail(throttle, "alice", f"10.0.{i}.1")
                verdicts += 1
            except VitrineError as refused:
                assert refused.code is ErrorCode.RATE_LIMITED
                assert "for this account;" in refused.message, refused.message
        assert verdicts == 5
        await _admitted(throttle, "bob", "10.0.99.1")  # for alice only

    asyncio.run(scenario())


def test_the_owner_at_a_recent_address_is_not_refused_for_strangers_guesses() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        throttle = _throttle(clock, account_limit=5)
        await _admitted(throttle, "alice", "10.9.9.9")  # the owner, earlier
        clock.now += 3600
        for i in range(5):
            await _fail(throttle, "alice", f"10.0.{i}.1")
        with pytest.raises(VitrineError) as caught:
            await _admitted(throttle, "alice", "10.0.50.1")  # a new address: refused
        assert "for this account;" in _rate_limited(caught)
        await _admitted(throttle, "alice", "10.9.9.9")  # the owner's address: checked
        clock.now += 31 * 86400  # not used for over 30 days: no longer exempt
        for i in range(5):
            await _fail(throttle, "alice", f"10.1.{i}.1")
        with pytest.raises(VitrineError):
            await _admitted(throttle, "alice", "10.9.9.9")

    asyncio.run(scenario())


def test_a_peer_spraying_accounts_is_refused_and_the_window_forgets() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        throttle = _throttle(clock, peer_limit=20)
        for index in range(20):
            await _fail(throttle, f"user{index}", "10.0.0.1")
            clock.now += 1
        with pytest.raises(VitrineError) as caught:
            await _admitted(throttle, "someone", "10.0.0.1")
        message = _rate_limited(caught)
        assert message.endswith("from your address; try again in 281 seconds."), message
        clock.now += 281
        await _admitted(throttle, "someone", "10.0.0.1")  # the first failure left the window

    asyncio.run(scenario())


def test_a_login_forgives_that_peers_failures_not_the_strangers() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        throttle = _throttle(clock, base_delay=1.0, max_delay=1000.0, account_limit=100)
        for _ in range(4):
            await _fail(throttle, "erin", "10.0.0.3")
        await _admitted(throttle, "erin", "10.0.0.3")
        for _ in range(4):  # four more do not reach the pair's limit of 5
            await _fail(throttle, "erin", "10.0.0.3")
        await _admitted(throttle, "erin", "10.0.0.3")
        # the account's count (8 failures) still sets a stranger's delay
        assert await _fail(throttle, "erin", "10.0.0.4") == 2.0**8

    asyncio.run(scenario())


def test_a_failed_guess_holds_the_accounts_place_through_its_delay() -> None:
    """Peers guessing one account together get `account_in_flight` verdicts per delay; a
    peer the account logged in from does not queue behind them."""

    async def scenario() -> None:
        throttle = _throttle(FakeClock(), account_in_flight=2)
        await _admitted(throttle, "alice", "10.0.0.1")  # the owner's usual address
        first = await throttle.reserve("alice", "10.0.1.1")
        second = await throttle.reserve("alice", "10.0.1.2")
        first.failed()
        second.failed()  # verdicts given, delays not yet waited: the places stay taken
        third = asyncio.create_task(throttle.reserve("alice", "10.0.1.3"))
        await asyncio.sleep(0.05)
        assert not third.done()
        await _admitted(throttle, "alice", "10.0.0.1")  # the owner is not queued
        await _admitted(throttle, "alice", "10.0.0.1", logged_in=True)  # nor a ChangePassword
        first.end()  # the first answer is sent: the place is free
        (await asyncio.wait_for(third, 1)).end()
        second.end()

    asyncio.run(scenario())


def test_change_password_is_held_back_only_by_its_own_peer() -> None:
    async def scenario() -> None:
        throttle = _throttle(FakeClock(), base_delay=1.0, max_delay=64.0, account_limit=100)
        for index in range(50):
            await _fail(throttle, "alice", f"10.0.{index}.1")
        # a logged-in session's wrong password: its delay counts its own failures only
        assert await _fail(throttle, "alice", "10.1.0.1", logged_in=True) == 1.0
        for _ in range(4):
            await _fail(throttle, "alice", "10.1.0.1", logged_in=True)
        with pytest.raises(VitrineError) as caught:
            await _admitted(throttle, "alice", "10.1.0.1", logged_in=True)
        _rate_limited(caught)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("address", "counted_as"),
    [
        ("203.0.113.5", "203.0.113.5"),
        ("127.0.0.9", "127.0.0.9"),
        ("::ffff:203.0.113.5", "203.0.113.5"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("::1", "::1"),
        ("fe80::1%lo", "fe80::1%lo"),
        ("?", "?"),
    ],
)
def test_a_peer_is_an_ipv4_address_or_an_ipv6_64(address: str, counted_as: str) -> None:
    assert peer_key(address) == counted_as


def test_one_ipv6_host_cannot_rotate_addresses_within_its_64() -> None:
    async def scenario() -> None:
        # the account limit is out of the way: this is about how peers are counted
        throttle = _throttle(FakeClock(), account_limit=100)
        for index in range(5):
            await _fail(throttle, "alice", f"2001:db8:1:2::{index + 1:x}")
        with pytest.raises(VitrineError) as caught:
            await _admitted(throttle, "alice", "2001:db8:1:2:ffff::9")
        _rate_limited(caught)
        await _admitted(throttle, "alice", "2001:db8:1:3::1")  # the next /64 is another peer

    asyncio.run(scenario())


def test_memory_stays_bounded() -> None:
    async def scenario() -> None:
        throttle = _throttle(FakeClock(), max_keys=50)
        for index in range(200):
            await _fail(throttle, f"user{index}", f"10.{index}.0.1")
            await _admitted(throttle, f"user{index}", f"10.{index}.0.2")
        assert len(throttle._failures) <= 50 and len(throttle._trusted) <= 50
        assert not throttle._in_flight

    asyncio.run(scenario())


def test_a_refusal_is_logged_once_per_counter_and_window(caplog: pytest.LogCaptureFixture) -> None:
    """Refusals cost the server nothing, so a peer over its limit could write thousands of
    WARNING lines a second."""

    async def scenario() -> None:
        clock = FakeClock()
        throttle = _throttle(clock)
        for _ in range(5):
            await _fail(throttle, "alice", "10.0.0.1")
        for _ in range(50):
            with pytest.raises(VitrineError):
                await _admitted(throttle, "alice", "10.0.0.1")

    with caplog.at_level(logging.WARNING, logger="vitrine.auth"):
        asyncio.run(scenario())
    refusals = [r for r in caplog.records if "password check refused" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
