"""Password hashing, the rules for names and passwords, and throttling of failed logins.

Argon2id at the OWASP minimum (19 MiB, t=2, p=1) makes each guess cost real memory and time;
the throttle makes guessing slow even for a patient attacker: it refuses a peer that guessed
too often (one account, or many), and slows, without ever refusing, guesses at one account from
many peers, so that strangers cannot lock an account's owner out. Device tokens (OWASP's "device
cookie") let the owner's own client past the account-wide limit from any address.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import struct
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from protocol.base import MIN_PASSWORD_LENGTH, normalise_password
from protocol.errors import ErrorCode, VitrineError
from protocol.messages import canonical_username, invalid_username
from repository.blobstore import subkey

log = logging.getLogger("vitrine.auth")

ARGON2_MEMORY_KIB = 19 * 1024
ARGON2_ITERATIONS = 2
ARGON2_LANES = 1

#: Longest a queued login waits before looking at the throttle's counts again.
WAIT_RECHECK_S = 1.0


def hash_password(password: str) -> str:
    kdf = Argon2id(
        salt=os.urandom(16),
        length=32,
        iterations=ARGON2_ITERATIONS,
        lanes=ARGON2_LANES,
        memory_cost=ARGON2_MEMORY_KIB,
    )
    return kdf.derive_phc_encoded(normalise_password(password).encode())


def _matches(password: str, phc: str) -> bool:
    try:
        Argon2id.verify_phc_encoded(password.encode(), phc)
    except (InvalidKey, ValueError):
        return False
    return True


def verify_password(password: str, phc: str) -> bool:
    """The NFC form matches hashes made since passwords are normalised; the form as typed
    matches a hash made before, from a password that was not NFC. There is no re-hashing on
    login (a new hash would end the user's device tokens), so both stay accepted."""
    normalised = normalise_password(password)
    if _matches(normalised, phc):
        return True
    return normalised != password and _matches(password, phc)


#: Verified against when the name is unknown, so that unknown names take as long as wrong
#: passwords and the answer time does not reveal which names exist.
_DUMMY_HASH = hash_password("vitrine-timing-equaliser")


def verify_or_waste_time(password: str, phc: str | None) -> bool:
    if phc is None:
        verify_password(password, _DUMMY_HASH)
        return False
    return verify_password(password, phc)


def normalise_username(name: str) -> str:
    """Names are case-insensitive: `Alice` and `alice` are the same account."""
    normalised = canonical_username(name)
    if normalised is None:
        raise VitrineError(ErrorCode.BAD_REQUEST, invalid_username(repr(name)))
    return normalised


def check_new_password(password: str) -> None:
    if len(normalise_password(password)) < MIN_PASSWORD_LENGTH:
        raise VitrineError(
            ErrorCode.BAD_REQUEST,
            f"Passwords must be at least {MIN_PASSWORD_LENGTH} characters long.",
        )


def peer_key(address: str) -> str:
    """Who a failure is counted against: an IPv4 address whole, an IPv6 address by its /64.

    One host (or one customer of an ISP) owns a whole IPv6 /64 and can pick a new address in it
    for every guess, so counting by address would give it billions of fresh counters. Link-local
    and loopback IPv6 addresses are counted whole (every neighbour shares fe80::/64, and ::/64
    holds ::1), and an IPv4-mapped IPv6 address (`::ffff:203.0.113.5`, from a dual-stack
    socket) is its IPv4 address. Anything that is not an IP address is taken as it is.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if ip.is_loopback or ip.is_link_local:
            return str(ip)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


#: A device token lets its holder past the account-wide limit this long after the login that
#: issued it; every successful login issues a fresh one, so a device in use never loses it.
DEVICE_TOKEN_LIFETIME_S = 30 * 86400.0
#: HKDF `info` of the device-token key, beside the blob store's subkeys of the same master key
#: (repository/blobstore.py): a distinct label gives an independent key, and the blob keys stay
#: as they were.
DEVICE_TOKEN_INFO = b"vitrine device token v1"
_DEVICE_TOKEN_VERSION = 1
#: version, user id, issue time (whole seconds since the epoch), random id.
_DEVICE_PAYLOAD = struct.Struct(">BqQ16s")
_DEVICE_MAC_BYTES = 32


class DeviceTokens:
    """Stateless device tokens: nothing is stored, so they survive restarts without a schema.

    A token is its payload and an HMAC-SHA256 over the payload and a digest of the account's
    stored password hash: a password change (a new hash, new salt) kills every token issued
    before it, and the issue time in the payload makes them expire. The random id makes every
    token distinct; the throttle counts the failures made with any of an account's tokens
    together, since each login issues another.
    """

    def __init__(
        self,
        key: bytes,
        *,
        lifetime_s: float = DEVICE_TOKEN_LIFETIME_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self.lifetime_s = lifetime_s
        self._clock = clock

    @classmethod
    def from_master_key(cls, master: bytes, **kwargs: Any) -> DeviceTokens:
        """Derive the key as the blob store derives its subkeys (HKDF-SHA256, no salt)."""
        return cls(subkey(master, DEVICE_TOKEN_INFO), **kwargs)

    def _mac(self, payload: bytes, password_hash: str) -> bytes:
        bound = payload + hashlib.sha256(password_hash.encode()).digest()
        return hmac.new(self._key, bound, hashlib.sha256).digest()

    def issue(self, user_id: int, password_hash: str) -> str:
        payload = _DEVICE_PAYLOAD.pack(
            _DEVICE_TOKEN_VERSION, user_id, int(self._clock()), secrets.token_bytes(16)
        )
        raw = payload + self._mac(payload, password_hash)
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def check(self, token: str, user_id: int, password_hash: str) -> str | None:
        """The token's id if it is valid for this account now, else None: another account's,
        expired, forged, malformed and pre-password-change tokens are all just no token."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) != _DEVICE_PAYLOAD.size + _DEVICE_MAC_BYTES:
            return None
        payload, mac = raw[: _DEVICE_PAYLOAD.size], raw[_DEVICE_PAYLOAD.size :]
        if not hmac.compare_digest(mac, self._mac(payload, password_hash)):
            return None
        version, owner, issued, random_id = _DEVICE_PAYLOAD.unpack(payload)
        age = self._clock() - issued
        if version != _DEVICE_TOKEN_VERSION or owner != user_id or not 0 <= age < self.lifetime_s:
            return None
        return random_id.hex()


@dataclass
class _Failures:
    times: deque[float] = field(default_factory=deque)
    #: The oldest recent failure when a refusal was last logged: one line per key and window,
    #: since refusals cost nothing and could otherwise fill the log thousands of times a second.
    refusal_logged: float | None = None


@dataclass(frozen=True)
class _Keys:
    """The throttle's counters for one attempt.

    `pair` (this account from this peer) and `peer` refuse past their limits; `account` (this
    account from anywhere) refuses only peers the account has not logged in from lately and
    attempts without a valid device token, so strangers cannot lock its owner out. `account` is
    None for a password check of a session already logged in (ChangePassword): only its own
    peer's failures may hold it back. `device` (set when a valid device token came with the
    attempt) counts the failures made with any of the account's device tokens: past its limit
    no token exempts, so neither a stolen token nor the fresh one each of the owner's logins
    issues is a way around the account limit.
    """

    name: str
    peer: str
    pair: str
    peer_key: str
    account: str | None
    device: str | None = None

    def refusing(self) -> tuple[str, str]:
        return (self.pair, self.peer_key)

    def held(self) -> tuple[str, ...]:
        extra = tuple(key for key in (self.account, self.device) if key)
        return self.refusing() + extra


class LoginAttempt:
    """One password check that holds places in the throttle's counts until it ends.

    The places are taken before hashing, so attempts sent at once on many connections cannot all
    pass the check while each other's failures are still being computed. A failed attempt keeps
    them through the delay before its answer, so the verdicts an attacker gets on one account
    are bounded by its places per delay, however many addresses it guesses from.
    """

    def __init__(self, throttle: LoginThrottle, keys: _Keys) -> None:
        self._throttle = throttle
        self._keys = keys
        self._verdict = False
        self._held = True

    def failed(self) -> float:
        """Count the attempt as a failure; returns how long to wait before answering it (the
        places are held until `end`, which `LoginThrottle.attempt` calls after that wait)."""
        self._give_verdict()
        return self._throttle.failure(self._keys)

    def succeeded(self) -> None:
        """A right password is no failure; it forgives this peer's earlier failures on the
        account and marks the peer as one the account's owner logs in from."""
        self._give_verdict()
        self._throttle.success(self._keys)
        self.end()

    def end(self) -> None:
        """Give the places back: after the answer, or with no verdict (an error, a dropped
        connection), which taught the peer nothing."""
        if self._held:
            self._held = False
            self._throttle._release(self._keys)

    def _give_verdict(self) -> None:
        if self._verdict:
            raise RuntimeError("this login attempt already has its verdict")
        self._verdict = True


class LoginThrottle:
    """Growing delays after failed logins; RATE_LIMITED for the peer that made them.

    Failures are counted within a sliding window per (account, peer) pair, per peer (one peer,
    many victims) and per account (one victim, many peers); a peer is an IPv4 address or an IPv6
    /64 (`peer_key`). Past `pair_limit` or `peer_limit` recorded failures the peer is refused
    (RATE_LIMITED) without its password being checked. Past `account_limit` failures of the
    account from everywhere, every peer is refused too, except the peers from which the account
    logged in within `trusted_s`: so attackers with many addresses (an IPv6 /48 holds 65,536
    /64s) still get no more than `account_limit` guesses per window at one account, as with a
    plain per-account limit, while the owner, at an address it used lately, is neither refused
    nor queued behind them. The owner at a new address, or after a restart, is exempt the same
    way by presenting a device token from an earlier login (`DeviceTokens`), until
    `device_limit` failures were made with the account's tokens (all of them together, as each
    login issues a new one). The counts also set the delay before a
    wrong password is answered (the largest decides, the peer's growing four times more slowly:
    one busy office shares one address), and at most `account_in_flight` checks of one account
    run at once for peers not exempt. Memory is bounded by forgetting the least recently used
    keys first.

    Attempts still being verified count too: when recorded failures plus attempts in flight reach
    a peer's limit, a new attempt waits for their verdicts instead of being hashed alongside them.
    So a burst of guesses gets no more verdicts than the limit, while a burst of right passwords
    (many clients behind one address) is only queued, never refused.
    """

    def __init__(
        self,
        *,
        base_delay: float = 0.25,
        max_delay: float = 4.0,
        pair_limit: int = 5,
        peer_limit: int = 20,
        account_limit: int = 5,
        account_in_flight: int = 4,
        device_limit: int = 5,
        window_s: float = 300.0,
        trusted_s: float = 30 * 86400.0,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.pair_limit = pair_limit
        self.peer_limit = peer_limit
        self.account_limit = account_limit
        self.account_in_flight = account_in_flight
        self.device_limit = device_limit
        self.window_s = window_s
        self.trusted_s = trusted_s
        self.max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[str, _Failures] = OrderedDict()
        #: pair key -> when the account last logged in from that peer.
        self._trusted: OrderedDict[str, float] = OrderedDict()
        self._in_flight: dict[str, int] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._lock = threading.Lock()

    @staticmethod
    def _keys(account: str, peer: str, *, logged_in: bool, device: bool = False) -> _Keys:
        net = peer_key(peer)
        return _Keys(
            name=account,
            peer=peer,
            pair=f"ap:{account}@{net}",
            peer_key=f"p:{net}",
            account=None if logged_in else f"a:{account}",
            device=f"ad:{account}" if device and not logged_in else None,
        )

    def _recent(self, key: str, now: float) -> deque[float]:
        entry = self._failures.get(key)
        if entry is None:
            return deque()
        while entry.times and entry.times[0] <= now - self.window_s:
            entry.times.popleft()
        return entry.times

    def _limits(self, keys: _Keys, now: float) -> list[tuple[str, int, str]]:
        """(key, limit, whose failures, for the message) that can refuse this attempt."""
        limits = [
            (keys.pair, self.pair_limit, "for this account from your address"),
            (keys.peer_key, self.peer_limit, "from your address"),
        ]
        if keys.account is not None and not self._is_exempt(keys, now):
            limits.append((keys.account, self.account_limit, "for this account"))
        return limits

    def refuse_peer_early(self, account: str, peer: str) -> None:
        """RATE_LIMITED if this peer's own counts (pair, peer) already refuse an attempt at
        `account`: a login asks before doing anything for the attempt (looking the account up
        to check a device token), so that a refusal costs the server nothing. The account's
        count is not asked, since a valid token or a trusted address may lift it."""
        now = self._clock()
        with self._lock:
            self._refuse_if_over(self._keys(account, peer, logged_in=True), now)

    def _refuse_if_over(self, keys: _Keys, now: float) -> None:
        """Under the lock: RATE_LIMITED once recorded failures reach a limit."""
        counters = {keys.pair: "pair", keys.peer_key: "peer", keys.account: "account"}
        for key, limit, whose in self._limits(keys, now):
            recent = self._recent(key, now)
            if len(recent) >= limit:
                retry = int(recent[0] + self.window_s - now) + 1
                entry = self._failures[key]
                if entry.refusal_logged != recent[0]:
                    entry.refusal_logged = recent[0]
                    # The name tried, as %r: the operator sees who is under attack, and control
                    # characters in a name cannot forge a log line.
                    log.warning(
                        "password check refused (RATE_LIMITED): account=%r peer=%s counter=%s "
                        "failures=%d (logged once per counter and window)",
                        keys.name,
                        keys.peer,
                        counters[key],
                        len(recent),
                    )
                raise VitrineError(
                    ErrorCode.RATE_LIMITED,
                    f"Too many wrong passwords {whose}; try again in {retry} seconds.",
                )

    def _is_exempt(self, keys: _Keys, now: float) -> bool:
        """Not held back by the account's count: a peer the account logged in from lately, or
        a valid device token while the failures made with the account's tokens (recorded and in
        flight) are under their limit."""
        since = self._trusted.get(keys.pair)
        if since is not None and now - since < self.trusted_s:
            return True
        if keys.device is None:
            return False
        used = len(self._recent(keys.device, now)) + self._in_flight.get(keys.device, 0)
        return used < self.device_limit

    def _try_reserve(self, keys: _Keys) -> LoginAttempt | None:
        """Places for one attempt, None while attempts in flight fill what the limits leave."""
        now = self._clock()
        with self._lock:
            self._refuse_if_over(keys, now)
            for key, limit, _ in self._limits(keys, now):
                if len(self._recent(key, now)) + self._in_flight.get(key, 0) >= limit:
                    return None
            if (
                keys.account is not None
                and self._in_flight.get(keys.account, 0) >= self.account_in_flight
                and not self._is_exempt(keys, now)
            ):
                return None
            for key in keys.held():
                self._in_flight[key] = self._in_flight.get(key, 0) + 1
            return LoginAttempt(self, keys)

    async def reserve(
        self, account: str, peer: str, *, logged_in: bool = False, device: bool = False
    ) -> LoginAttempt:
        """Wait for places (or RATE_LIMITED); the caller must `end` the attempt.

        `logged_in`: the password of a session already logged in as `account` (ChangePassword);
        the account's count from other peers neither delays nor queues it. `device`: the caller
        checked a device token of `account` as valid (`DeviceTokens.check`)."""
        keys = self._keys(account, peer, logged_in=logged_in, device=device)
        while (attempt := self._try_reserve(keys)) is None:
            waiter = asyncio.get_running_loop().create_future()
            with self._lock:
                self._waiters.append(waiter)
            # Re-checked after the wake-up or the timeout: the timeout only guards against a
            # wake-up missed between the failed reservation and joining the waiters.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, WAIT_RECHECK_S)
        return attempt

    @contextlib.asynccontextmanager
    async def attempt(
        self, account: str, peer: str, *, logged_in: bool = False, device: bool = False
    ) -> AsyncIterator[LoginAttempt]:
        """`reserve`, and `end` the attempt when the body ends (after a failure's delay)."""
        attempt = await self.reserve(account, peer, logged_in=logged_in, device=device)
        try:
            yield attempt
        finally:
            attempt.end()

    def _release(self, keys: _Keys) -> None:
        with self._lock:
            for key in keys.held():
                left = self._in_flight.get(key, 0) - 1
                if left > 0:
                    self._in_flight[key] = left
                else:
                    self._in_flight.pop(key, None)
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.get_loop().call_soon_threadsafe(_wake, waiter)

    def failure(self, keys: _Keys) -> float:
        """Record a failure and return how long to wait before answering it."""
        now = self._clock()
        with self._lock:
            counts: dict[str, int] = {}
            for key in keys.held():
                self._recent(key, now)
                entry = self._failures.setdefault(key, _Failures())
                entry.times.append(now)
                self._failures.move_to_end(key)
                counts[key] = len(entry.times)
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
        pair_count, peer_count = counts[keys.pair], counts[keys.peer_key]
        account_count = [counts[keys.account]] if keys.account else []
        # The peer counter grows more slowly: one busy office shares one address.
        steps = max(pair_count, peer_count // 4, *account_count, counts.get(keys.device or "", 0))
        log.info(
            "wrong password: account=%r peer=%s failures: pair=%d peer=%d account=%s%s",
            keys.name,
            keys.peer,
            pair_count,
            peer_count,
            account_count[0] if account_count else "- (logged-in session)",
            # the tokens' count, never a token: a log is no place for a credential
            f" device-tokens={counts[keys.device]}" if keys.device else "",
        )
        return min(self.max_delay, self.base_delay * 2 ** max(steps - 1, 0))

    def success(self, keys: _Keys) -> None:
        now = self._clock()
        with self._lock:
            # The tokens' count is not forgiven: the owner's success says nothing of who else
            # holds a token, and forgiving it would give a thief a new budget at each login.
            self._failures.pop(keys.pair, None)
            if keys.account is not None:  # a login, not a ChangePassword
                self._trusted[keys.pair] = now
                self._trusted.move_to_end(keys.pair)
                while len(self._trusted) > self.max_keys:
                    self._trusted.popitem(last=False)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
