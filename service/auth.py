"""Password hashing, the rules for names and passwords, and throttling of failed logins.

Argon2id at the OWASP minimum (19 MiB, t=2, p=1) makes each guess cost real memory and time;
the throttle makes guessing slow even for a patient attacker, per account (one victim, many
peers) and per peer (one peer, many victims).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from protocol.base import MIN_PASSWORD_LENGTH, USERNAME_RULE, USERNAME_RULE_TEXT
from protocol.errors import ErrorCode, VitrineError

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
    return kdf.derive_phc_encoded(password.encode())


def verify_password(password: str, phc: str) -> bool:
    try:
        Argon2id.verify_phc_encoded(password.encode(), phc)
    except (InvalidKey, ValueError):
        return False
    return True


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
    normalised = name.strip().lower()
    if not USERNAME_RULE.fullmatch(normalised):
        raise VitrineError(
            ErrorCode.BAD_REQUEST, f"Invalid user name {name!r}: use {USERNAME_RULE_TEXT}."
        )
    return normalised


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise VitrineError(
            ErrorCode.BAD_REQUEST,
            f"Passwords must be at least {MIN_PASSWORD_LENGTH} characters long.",
        )


@dataclass
class _Failures:
    times: deque[float] = field(default_factory=deque)


class LoginAttempt:
    """One password check that holds a place in the throttle's counts until its verdict.

    The place is taken before hashing, so attempts sent at once on many connections cannot all
    pass the check while each other's failures are still being computed.
    """

    def __init__(self, throttle: LoginThrottle, account: str, peer: str) -> None:
        self._throttle = throttle
        self._account = account
        self._peer = peer
        self._open = True

    def failed(self) -> float:
        """Count the attempt as a failure; returns how long to wait before answering it."""
        self._close()
        return self._throttle.failure(self._account, self._peer)

    def succeeded(self, *, forgive_account: bool) -> None:
        """A right password is no failure; a login also forgives the account's earlier ones."""
        self._close()
        if forgive_account:
            self._throttle.success(self._account)

    def abandon(self) -> None:
        """No verdict reached the peer (an error, a dropped connection): it taught nothing."""
        if self._open:
            self._close()

    def _close(self) -> None:
        if not self._open:
            raise RuntimeError("this login attempt already has its verdict")
        self._open = False
        self._throttle._release(self._account, self._peer)


class LoginThrottle:
    """Growing delays after failed logins, and RATE_LIMITED past a threshold.

    Failures are counted within a sliding window, separately per account name and per peer
    address; the stricter of the two applies. Memory is bounded by forgetting the least recently
    failed keys first.

    Attempts still being verified count too: when recorded failures plus attempts in flight reach
    a limit, a new attempt waits for their verdicts instead of being hashed alongside them. So a
    burst of guesses gets no more verdicts than the limit, while a burst of right passwords (many
    clients behind one address) is only queued, never refused.
    """

    def __init__(
        self,
        *,
        base_delay: float = 0.25,
        max_delay: float = 4.0,
        account_limit: int = 5,
        peer_limit: int = 20,
        window_s: float = 300.0,
        max_keys: int = 100_000,
    ) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.account_limit = account_limit
        self.peer_limit = peer_limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._failures: OrderedDict[str, _Failures] = OrderedDict()
        self._in_flight: dict[str, int] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        entry = self._failures.get(key)
        if entry is None:
            return deque()
        while entry.times and entry.times[0] <= now - self.window_s:
            entry.times.popleft()
        return entry.times

    def _limits(self, account: str, peer: str) -> tuple[tuple[str, int], ...]:
        return ((f"a:{account}", self.account_limit), (f"p:{peer}", self.peer_limit))

    def _refuse_if_over(self, account: str, peer: str, now: float) -> None:
        """Under the lock: RATE_LIMITED once recorded failures reach either limit."""
        for key, limit in self._limits(account, peer):
            recent = self._recent(key, now)
            if len(recent) >= limit:
                retry = int(recent[0] + self.window_s - now) + 1
                raise VitrineError(
                    ErrorCode.RATE_LIMITED,
                    f"Too many failed logins; try again in {retry} seconds.",
                )

    def _try_reserve(self, account: str, peer: str) -> LoginAttempt | None:
        """A place for one attempt, None if attempts in flight fill what the limits leave."""
        now = time.monotonic()
        with self._lock:
            self._refuse_if_over(account, peer, now)
            limits = self._limits(account, peer)
            for key, limit in limits:
                if len(self._recent(key, now)) + self._in_flight.get(key, 0) >= limit:
                    return None
            for key, _ in limits:
                self._in_flight[key] = self._in_flight.get(key, 0) + 1
            return LoginAttempt(self, account, peer)

    async def reserve(self, account: str, peer: str) -> LoginAttempt:
        """Wait for a place (or RATE_LIMITED); the caller must give the attempt a verdict."""
        while (attempt := self._try_reserve(account, peer)) is None:
            waiter = asyncio.get_running_loop().create_future()
            with self._lock:
                self._waiters.append(waiter)
            # Re-checked after the wake-up or the timeout: the timeout only guards against a
            # wake-up missed between the failed reservation and joining the waiters.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, WAIT_RECHECK_S)
        return attempt

    @contextlib.asynccontextmanager
    async def attempt(self, account: str, peer: str) -> AsyncIterator[LoginAttempt]:
        """`reserve`, and give up the place if the body ends without a verdict."""
        attempt = await self.reserve(account, peer)
        try:
            yield attempt
        finally:
            attempt.abandon()

    def _release(self, account: str, peer: str) -> None:
        with self._lock:
            for key, _ in self._limits(account, peer):
                left = self._in_flight.get(key, 0) - 1
                if left > 0:
                    self._in_flight[key] = left
                else:
                    self._in_flight.pop(key, None)
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.get_loop().call_soon_threadsafe(_wake, waiter)

    def failure(self, account: str, peer: str) -> float:
        """Record a failure and return how long to wait before answering it."""
        now = time.monotonic()
        with self._lock:
            counts = []
            for key in (f"a:{account}", f"p:{peer}"):
                self._recent(key, now)
                entry = self._failures.setdefault(key, _Failures())
                entry.times.append(now)
                self._failures.move_to_end(key)
                counts.append(len(entry.times))
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
        account_count, peer_count = counts
        # The peer counter grows more slowly: one busy office shares one address.
        steps = max(account_count, peer_count // 4)
        return min(self.max_delay, self.base_delay * 2 ** max(steps - 1, 0))

    def success(self, account: str) -> None:
        with self._lock:
            self._failures.pop(f"a:{account}", None)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
