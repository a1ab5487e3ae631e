"""Device tokens (OWASP's "device cookie"): the owner's client, given a token at an earlier
login, is not refused for strangers' guesses at a new address or after a server restart, while
a client without one is refused as before (docs/security.md).

`DeviceTokens` and `LoginThrottle` alone with fake clocks, then end to end on a real server with
the attacker on 127.0.0.9 (as in test_login_lockout.py), the owner on other 127.x addresses.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from protocol import codec, framing
from protocol.errors import ErrorCode, VitrineError
from protocol.messages import CreateUser, Error, Login, Session
from service.auth import DeviceTokens, LoginThrottle
from shell.session import DEVICE_TOKENS_FILE, ClientSession, DeviceTokenStore
from tests.servers import ServerProcess, run_client
from tests.test_login_lockout import ATTACKER, PASSWORD, FakeClock, RawClient

KEY = bytes(range(32))
HASH = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"


# --- DeviceTokens ----------------------------------------------------------------------------


def test_a_token_is_valid_for_its_account_only_until_it_expires() -> None:
    clock = FakeClock()
    clock.now = 1_700_000_000.0
    tokens = DeviceTokens(KEY, lifetime_s=30 * 86400.0, clock=clock)
    token = tokens.issue(7, HASH)
    token_id = tokens.check(token, 7, HASH)
    assert token_id is not None and token_id not in token
    assert tokens.check(token, 8, HASH) is None  # another account's
    assert tokens.check(token, 7, HASH + "x") is None  # the password was changed since
    assert DeviceTokens(bytes(32), clock=clock).check(token, 7, HASH) is None  # another key
    clock.now += 30 * 86400.0 - 1
    assert tokens.check(token, 7, HASH) == token_id
    clock.now += 2
    assert tokens.check(token, 7, HASH) is None  # expired


@pytest.mark.parametrize("garbage", ["", "x", "!!!!", "a" * 256, "é" * 10])
def test_malformed_or_forged_tokens_are_no_token(garbage: str) -> None:
    tokens = DeviceTokens(KEY)
    assert tokens.check(garbage, 7, HASH) is None
    real = tokens.issue(7, HASH)
    forged = real[:20] + ("A" if real[20] != "A" else "B") + real[21:]
    assert tokens.check(forged, 7, HASH) is None


def test_the_key_is_a_subkey_of_the_master_key() -> None:
    one = DeviceTokens.from_master_key(KEY)
    assert DeviceTokens.from_master_key(KEY).check(one.issue(1, HASH), 1, HASH) is not None
    assert DeviceTokens(KEY).check(one.issue(1, HASH), 1, HASH) is None  # not the master itself


# --- LoginThrottle with device tokens --------------------------------------------------------


def _throttle(clock: FakeClock) -> LoginThrottle:
    return LoginThrottle(clock=clock, base_delay=0.0, window_s=300.0, account_limit=5)


async def _fail(throttle: LoginThrottle, peer: str, device: str | None = None) -> None:
    async with asyncio.timeout(1), throttle.attempt("alice", peer, device=device) as attempt:
        attempt.failed()


async def _admitted(throttle: LoginThrottle, peer: str, device: str | None = None) -> None:
    async with asyncio.timeout(1), throttle.attempt("alice", peer, device=device) as attempt:
        attempt.succeeded()


async def _under_attack(throttle: LoginThrottle) -> None:
    for i in range(5):
        await _fail(throttle, f"10.0.{i}.1")


def test_a_valid_device_token_exempts_from_the_account_limit_at_any_address() -> None:
    async def scenario() -> None:
        throttle = _throttle(FakeClock())
        await _under_attack(throttle)
        with pytest.raises(VitrineError) as caught:
            await _admitted(throttle, "10.9.0.1")  # no token: refused as before
        assert caught.value.code is ErrorCode.RATE_LIMITED
        assert "for this account" in caught.value.message
        await _admitted(throttle, "10.9.0.1", device="token-1")  # the owner's client
        await _admitted(throttle, "10.9.0.2", device="token-1")  # wherever it is

    asyncio.run(scenario())


def test_failures_with_a_token_use_up_its_exemption() -> None:
    """A stolen token is no way around the account limit: five wrong passwords made with it
    (from any addresses) and it exempts no more; another token is not affected."""

    async def scenario() -> None:
        clock = FakeClock()
        throttle = _throttle(clock)
        await _under_attack(throttle)
        for i in range(5):
            await _fail(throttle, f"10.1.{i}.1", device="stolen")
        with pytest.raises(VitrineError) as caught:
            await _admitted(throttle, "10.1.9.1", device="stolen")
        assert "for this account" in caught.value.message
        await _admitted(throttle, "10.2.0.1", device="owners")
        clock.now += 301  # the window forgets the token's failures too
        await _admitted(throttle, "10.1.9.1", device="stolen")

    asyncio.run(scenario())


def test_a_token_does_not_lift_the_pair_and_peer_limits() -> None:
    async def scenario() -> None:
        throttle = _throttle(FakeClock())
        for _ in range(5):
            await _fail(throttle, "10.3.0.1", device="token-1")
        with pytest.raises(VitrineError) as caught:
            await _admitted(throttle, "10.3.0.1", device="token-2")
        assert "from your address" in caught.value.message

    asyncio.run(scenario())


# --- the client's store ----------------------------------------------------------------------


def test_the_store_is_owner_only_and_survives_damage(tmp_path: Path) -> None:
    store = DeviceTokenStore(tmp_path / "config" / DEVICE_TOKENS_FILE)
    assert store.get("shop", "alice") == ""
    store.put("shop", "alice", "t1")
    store.put("shop", "bob", "t2")
    store.put("other", "alice", "t3")
    assert (store.get("shop", "alice"), store.get("other", "alice")) == ("t1", "t3")
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    store.path.write_text("{not json")
    assert store.get("shop", "alice") == ""
    store.put("shop", "alice", "t4")
    assert store.get("shop", "alice") == "t4"


# --- end to end --------------------------------------------------------------------------------


def _login_from(server: ServerProcess, source: str, token: str = "") -> Session | Error:
    client = RawClient(server, source)
    try:
        reply = client.call(
            Login(id=0, name="victim", password=PASSWORD, device_token=token, remember_device=True)
        )
    finally:
        client.close()
    assert isinstance(reply, Session | Error), reply
    return reply


def _guess(server: ServerProcess) -> None:
    attacker = RawClient(server, ATTACKER)
    try:
        for guess in range(5):
            reply = attacker.call(Login(id=0, name="victim", password=f"guess-{guess}"))
            assert isinstance(reply, Error) and reply.code is ErrorCode.UNAUTHENTICATED, reply
    finally:
        attacker.close()


def test_the_owners_client_logs_in_from_a_new_address_and_after_a_restart(
    server: ServerProcess, tmp_path: Path
) -> None:
    connection = server.connect(tmp_path / "owner")
    connection.call(CreateUser(id=0, name="victim", password=PASSWORD))
    other = server.connect(tmp_path / "other")
    other.call(CreateUser(id=0, name="bystander", password=PASSWORD))
    bystander = other.call(
        Login(id=0, name="bystander", password=PASSWORD, remember_device=True), Session
    )
    store = DeviceTokenStore(tmp_path / "owner" / DEVICE_TOKENS_FILE)
    ClientSession(connection, notify=lambda _: None).login("Victim", PASSWORD, store)
    token = store.get(connection.server_id, "victim")
    assert token

    _guess(server)
    refused = _login_from(server, "127.0.0.5")  # a client without the token
    assert isinstance(refused, Error) and refused.code is ErrorCode.RATE_LIMITED, refused
    assert "for this account" in refused.message
    # another account's token, or a forged one, is no token: refused the same way, no error
    for wrong in (bystander.device_token, token[:-4] + "AAAA", "not a token"):
        again = _login_from(server, "127.0.0.5", wrong)
        assert isinstance(again, Error) and again.code is ErrorCode.RATE_LIMITED, again
        assert "for this account" in again.message
    moved = _login_from(server, "127.0.0.6", token)  # the owner, at a new address
    assert isinstance(moved, Session) and moved.name == "victim", moved
    assert moved.device_token and moved.device_token != token  # renewed at each login

    server.stop()
    server.restart()
    _guess(server)
    after = _login_from(server, "127.0.0.7")
    assert isinstance(after, Error) and after.code is ErrorCode.RATE_LIMITED, after
    back = _login_from(server, "127.0.0.7", moved.device_token)
    assert isinstance(back, Session) and back.name == "victim", back
    server.stop()
    assert token not in server.log() and moved.device_token not in server.log()


def test_the_shell_keeps_its_token_across_runs(server: ServerProcess, tmp_path: Path) -> None:
    """Through client.py: the token a `login` was given is on disk for the next run, which is
    let in after a restart while strangers guess; a shell without it is refused."""
    home = tmp_path / "home"
    made = run_client(
        server, "create_user victim", "login victim", config_dir=home, password=PASSWORD
    )
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(os.stat(home / DEVICE_TOKENS_FILE).st_mode) == 0o600
    server.stop()
    server.restart()
    _guess(server)
    stranger = run_client(server, "login victim", config_dir=tmp_path / "new", password=PASSWORD)
    assert stranger.returncode != 0 and "for this account" in stranger.stderr, stranger
    owner = run_client(server, "login victim", "whoami", config_dir=home, password=PASSWORD)
    assert owner.returncode == 0, owner.stderr
    assert owner.stdout.startswith("victim (admin) on"), owner.stdout


def test_a_client_from_before_device_tokens_is_answered_as_before(
    shared_server: ServerProcess, tmp_path: Path
) -> None:
    """Its Session decoder refuses unknown fields: no device_token may reach it."""
    connection = shared_server.connect(tmp_path)
    connection.call(CreateUser(id=0, name="oldclient", password=PASSWORD))
    client = RawClient(shared_server, "127.0.0.1")
    try:
        request = {"type": "Login", "id": 5, "name": "oldclient", "password": PASSWORD}
        client.sock.sendall(framing.frame(codec._encoder.encode(request)))
        body = framing.read_frame_blocking(client.sock, framing.DEFAULT_MAX_FRAME)
    finally:
        client.close()
    assert body is not None
    assert isinstance(codec.decode_response(body), Session)
    assert b"device_token" not in body


class _OldServer:
    """A connection to a server from before device tokens, for `ClientSession.login` alone:
    it refuses the new fields unread, as msgspec's forbid_unknown_fields does."""

    server, server_id, connected = "old:7878", "", True

    def __init__(self) -> None:
        self.sent: list[Login] = []

    def call(self, request: Login, expect: type) -> Session:
        self.sent.append(request)
        if request.device_token or request.remember_device:
            raise VitrineError(
                ErrorCode.BAD_REQUEST,
                "Invalid message: Object contains unknown field `device_token`",
            )
        return Session(id=0, name="victim", admin=False, resume_token="r")


def test_a_new_client_logs_in_to_an_older_server(tmp_path: Path) -> None:
    old = _OldServer()
    store = DeviceTokenStore(tmp_path / DEVICE_TOKENS_FILE)
    session = ClientSession(old, notify=lambda _: None)  # type: ignore[arg-type]
    assert session.login("victim", PASSWORD, store).name == "victim"
    assert [r.remember_device for r in old.sent] == [True, False]
    assert session.user == "victim" and not store.path.exists()
