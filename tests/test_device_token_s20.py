"""Device tokens (OWASP's "device cookie"): the owner's client, given a token at an earlier
login, is not refused for strangers' guesses at a new address or after a server restart, while
a client without one is refused as before (docs/security.md).

`DeviceTokens` and `LoginThrottle` alone with fake clocks, then end to end on a real server with
the attacker on 127.0.0.9 (as in test_login_lockout.py), the owner on other 127.x addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import msgspec
import pytest

from protocol import codec, framing
from protocol.errors import ErrorCode, VitrineError
from protocol.messages import ChangePassword, CreateUser, Error, Login, Session
from service import accounts as account_handlers
from service.auth import DeviceTokens, LoginThrottle
from shell.session import DEVICE_TOKENS_FILE, ClientSession, DeviceTokenStore, server_key
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


async def _fail(throttle: LoginThrottle, peer: str, device: bool = False) -> None:
    async with asyncio.timeout(1), throttle.attempt("alice", peer, device=device) as attempt:
        attempt.failed()


async def _admitted(throttle: LoginThrottle, peer: str, device: bool = False) -> None:
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
        await _admitted(throttle, "10.9.0.1", device=True)  # the owner's client
        await _admitted(throttle, "10.9.0.2", device=True)  # wherever it is

    asyncio.run(scenario())


def test_failures_with_tokens_use_up_the_exemption_of_every_token_of_the_account() -> None:
    """A stolen token is no way around the account limit: five wrong passwords made with the
    account's tokens (from any addresses) and no token exempts, until the window forgets
    them; the owner at an address it logged in from lately is still let in."""

    async def scenario() -> None:
        clock = FakeClock()
        throttle = _throttle(clock)
        await _admitted(throttle, "10.7.0.1")  # the owner's usual address
        await _under_attack(throttle)
        for i in range(5):
            await _fail(throttle, f"10.1.{i}.1", device=True)
        with pytest.raises(VitrineError) as caught:
            await _admitted(throttle, "10.1.9.1", device=True)
        assert "for this account" in caught.value.message
        await _admitted(throttle, "10.7.0.1")
        clock.now += 301  # the window forgets the tokens' failures too
        await _admitted(throttle, "10.1.9.1", device=True)

    asyncio.run(scenario())


def test_a_fresh_token_per_owner_login_buys_no_more_verdicts() -> None:
    """Each of the owner's logins issues a new valid token; someone who reads each of them
    (here four, each used from fresh addresses) still gets at most account_limit +
    device_limit verdicts on the account per window, and the owner's own logins with a
    token, which succeed, give no new budget."""

    async def scenario() -> None:
        throttle = _throttle(FakeClock())
        verdicts = 0
        attempt = 0

        async def guess(device: bool) -> None:
            nonlocal verdicts, attempt
            attempt += 1
            with contextlib.suppress(VitrineError):
                await _fail(throttle, f"10.4.{attempt}.1", device=device)
                verdicts += 1

        await _admitted(throttle, "10.7.0.1")  # the owner's usual address
        for _ in range(10):
            await guess(device=False)
        for _ in range(4):
            await _admitted(throttle, "10.7.0.1", device=True)  # the owner logs in again
            for _ in range(10):
                await guess(device=True)
        assert verdicts == throttle.account_limit + throttle.device_limit

    asyncio.run(scenario())


def test_a_token_does_not_lift_the_pair_and_peer_limits() -> None:
    async def scenario() -> None:
        throttle = _throttle(FakeClock())
        for _ in range(5):
            await _fail(throttle, "10.3.0.1", device=True)
        with pytest.raises(VitrineError) as caught:
            await _admitted(throttle, "10.3.0.1", device=True)
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
    token = store.get(server_key(connection), "victim")
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


class _OldLogin(msgspec.Struct, tag="Login", tag_field="type", forbid_unknown_fields=True):
    """`Login` as a server from before device tokens decodes it."""

    id: int
    name: str
    password: str


class _OldChangePassword(
    msgspec.Struct, tag="ChangePassword", tag_field="type", forbid_unknown_fields=True
):
    id: int
    old_password: str
    new_password: str


class _StrictLogin(msgspec.Struct, tag="Login", tag_field="type", forbid_unknown_fields=True):
    """`Login` as a server whose device tokens are shorter than this shell's bound reads it."""

    id: int
    name: str
    password: str
    device_token: Annotated[str, msgspec.Meta(max_length=16)] = ""
    remember_device: bool = False


class _FakeServer:
    """A connection, for `ClientSession` alone, to a server that decodes what it is sent with
    real msgspec types (refusing as the server's codec does) and answers every login."""

    connected = True

    def __init__(
        self,
        decoder: msgspec.msgpack.Decoder[Any] | None = None,
        *,
        server: str = "shop:7878",
        fingerprint: str = "sha256:" + "aa" * 32,
        server_id: str = "shop",
        answer_name: str | None = None,
        device_token: str = "",
    ) -> None:
        self.decoder = decoder
        self.server, self.fingerprint, self.server_id = server, fingerprint, server_id
        self.answer_name, self.device_token = answer_name, device_token
        self.sent: list[Any] = []

    def call(self, request: Login | ChangePassword, expect: type) -> Session:
        body = codec.encode(request)
        try:
            decoded = self.decoder.decode(body) if self.decoder else codec.decode_request(body)
        except msgspec.ValidationError as exc:
            raise VitrineError(ErrorCode.BAD_REQUEST, f"Invalid message: {exc}") from None
        self.sent.append(decoded)
        name = self.answer_name or getattr(decoded, "name", "victim").lower()
        remember = getattr(decoded, "remember_device", False)
        token = self.device_token if remember else ""
        return Session(id=0, name=name, admin=False, resume_token="r", device_token=token)


def _session(connection: _FakeServer) -> ClientSession:
    return ClientSession(connection, notify=lambda _: None)  # type: ignore[arg-type]


def test_a_new_client_logs_in_and_changes_its_password_on_an_older_server(
    tmp_path: Path,
) -> None:
    """The old server's own msgspec types refuse any field they do not know, default or not:
    the shell asks again with none of them, for a login and a password change."""
    old = _FakeServer(msgspec.msgpack.Decoder(_OldLogin | _OldChangePassword))
    store = DeviceTokenStore(tmp_path / DEVICE_TOKENS_FILE)
    session = _session(old)
    assert session.login("victim", PASSWORD, store).name == "victim"
    session.change_password(PASSWORD, PASSWORD + "-new", store)
    assert [type(sent) for sent in old.sent] == [_OldLogin, _OldChangePassword]
    assert session.user == "victim" and not store.path.exists()
    # and a plain login, with no store, needs no second try
    assert _session(old).login("victim", PASSWORD).name == "victim"


def test_the_server_decodes_both_forms_of_login_and_change_password() -> None:
    plain = codec.decode_request(codec.encode(Login(id=1, name="victim", password=PASSWORD)))
    assert plain == Login(id=1, name="victim", password=PASSWORD)
    full = Login(id=1, name="victim", password=PASSWORD, device_token="abc", remember_device=True)
    assert codec.decode_request(codec.encode(full)) == full
    change = ChangePassword(id=2, old_password=PASSWORD, new_password=PASSWORD + "x")
    assert b"remember_device" not in codec.encode(change)
    assert codec.decode_request(codec.encode(change)) == change


FINGERPRINT = "sha256:" + "aa" * 32
TOKEN = "A" * 86


def test_tokens_are_kept_per_address_and_pinned_key_not_per_claimed_id(tmp_path: Path) -> None:
    """An impostor that claims the shop's `server_id` (at another address, or with another
    key) is not shown the shop's token and cannot replace it."""
    store = DeviceTokenStore(tmp_path / DEVICE_TOKENS_FILE)
    shop = _FakeServer(device_token=TOKEN)
    _session(shop).login("victim", PASSWORD, store)
    elsewhere = _FakeServer(server="evil:7878", device_token="B" * 86)
    rekeyed = _FakeServer(fingerprint="sha256:" + "bb" * 32, device_token="C" * 86)
    for impostor in (elsewhere, rekeyed):
        _session(impostor).login("victim", PASSWORD, store)
        assert impostor.sent[0].device_token == ""
    _session(shop).login("victim", PASSWORD, store)
    assert shop.sent[-1].device_token == TOKEN
    assert store.get(server_key(shop), "victim") == TOKEN  # type: ignore[arg-type]


def test_a_token_is_kept_under_the_name_asked_for(tmp_path: Path) -> None:
    """A server answering a login as mallory with "you are victim" files nothing under
    victim; the name is kept in its canonical form, which the next login presents."""
    store = DeviceTokenStore(tmp_path / DEVICE_TOKENS_FILE)
    liar = _FakeServer(answer_name="victim", device_token=TOKEN)
    _session(liar).login(" Mallory", PASSWORD, store)
    key = server_key(liar)  # type: ignore[arg-type]
    assert (store.get(key, "victim"), store.get(key, "mallory")) == ("", TOKEN)
    _session(liar).login("MALLORY", PASSWORD, store)
    assert liar.sent[-1].device_token == TOKEN


@pytest.mark.parametrize("bad", ["A" * 257, "not base64!", "é" * 10, "a=b", " " + "A" * 20])
def test_tokens_the_server_could_not_read_are_neither_kept_nor_presented(
    tmp_path: Path, bad: str
) -> None:
    store = DeviceTokenStore(tmp_path / DEVICE_TOKENS_FILE)
    store.put("shop", "victim", bad)
    assert not store.path.exists()
    store.put("shop", "victim", TOKEN)
    assert store.get("shop", "victim") == TOKEN
    store.path.write_text(json.dumps({"shop": {"victim": bad}}))  # written by another program
    assert store.get("shop", "victim") == ""
    # nor does a server's answer put one there
    shop = _FakeServer(device_token=bad)
    _session(shop).login("victim", PASSWORD, store)
    assert store.get(server_key(shop), "victim") == ""  # type: ignore[arg-type]


def test_a_token_the_server_refuses_to_read_is_dropped_for_one_retry(tmp_path: Path) -> None:
    """A BAD_REQUEST about the token (here: longer than this server reads) would otherwise
    refuse every login until the file is deleted: the shell asks again without it, and keeps
    the new token it is then given."""
    strict = _FakeServer(msgspec.msgpack.Decoder(_StrictLogin), device_token="short")
    store = DeviceTokenStore(tmp_path / DEVICE_TOKENS_FILE)
    store.put(server_key(strict), "victim", TOKEN)  # type: ignore[arg-type]
    assert _session(strict).login("victim", PASSWORD, store).name == "victim"
    assert [sent.device_token for sent in strict.sent] == [""]
    assert store.get(server_key(strict), "victim") == "short"  # type: ignore[arg-type]


def test_a_peer_refused_by_its_own_counts_costs_no_lookup_for_its_token() -> None:
    """A device token is checked against the account's row before the throttle; a peer whose
    pair or peer count refuses it already must not get that lookup for free."""
    clock = FakeClock()
    throttle = _throttle(clock)
    looked_up: list[object] = []

    async def db_call(function: object, *args: object) -> None:
        looked_up.append(function)
        return None

    async def scenario() -> None:
        for _ in range(5):
            await _fail(throttle, "10.6.0.1")
        services = SimpleNamespace(throttle=throttle, db_call=db_call, device_tokens=None)
        ctx = SimpleNamespace(services=services, connection=SimpleNamespace(peer="10.6.0.1"))
        request = Login(id=1, name="alice", password=PASSWORD, device_token=TOKEN)
        with pytest.raises(VitrineError) as caught:
            await account_handlers.login(ctx, request)  # type: ignore[arg-type]
        assert caught.value.code is ErrorCode.RATE_LIMITED
        assert "from your address" in caught.value.message

    asyncio.run(scenario())
    assert looked_up == []


def test_fresh_tokens_from_the_owners_logins_give_no_more_verdicts(
    server: ServerProcess, tmp_path: Path
) -> None:
    """End to end: whoever reads each token the owner's logins leave in its file gets, with
    all of them, as many verdicts per window as the account limit and one token budget
    allow (5 + 5), not 5 more per token."""
    server.connect(tmp_path / "owner").call(CreateUser(id=0, name="victim", password=PASSWORD))
    owner_token = _login_from(server, "127.0.0.6")  # the owner's usual address
    assert isinstance(owner_token, Session)
    verdicts = 0
    source = iter(f"127.0.{n // 200 + 1}.{n % 200 + 10}" for n in range(1000))

    def guess(token: str = "") -> None:
        nonlocal verdicts
        attacker = RawClient(server, next(source))
        try:
            reply = attacker.call(
                Login(id=0, name="victim", password="wrong-guess", device_token=token)
            )
        finally:
            attacker.close()
        assert isinstance(reply, Error), reply
        assert reply.code in (ErrorCode.UNAUTHENTICATED, ErrorCode.RATE_LIMITED), reply
        verdicts += reply.code is ErrorCode.UNAUTHENTICATED

    for _ in range(6):
        guess()
    for _ in range(4):
        login = _login_from(server, "127.0.0.6")  # the owner logs in: a new token
        assert isinstance(login, Session) and login.device_token, login
        for _ in range(6):
            guess(login.device_token)
    assert verdicts == 10


def test_the_protocol_reference_renders_docstrings_as_plain_sentences() -> None:
    """docs/protocol.md's reference is what the generator prints now, and no docstring's
    indentation shows in it as a run of spaces (as `Login`'s long docstring did)."""
    root = Path(__file__).resolve().parent.parent
    printed = subprocess.run(
        [sys.executable, str(root / "scripts" / "protocol_reference.py")],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "  " not in printed
    assert printed.strip() in (root / "docs" / "protocol.md").read_text()
