"""Account requests: sign-up, login, resume, logout, password change.

The answer to a failed login never says whether the name exists, and it comes only after the
throttle's delay, so guessing is slow and learns nothing about which accounts exist (a name
outside the public name rule, which no account can have, gets the same answer at once). The
throttle refuses only the peer that guessed too often: the owner's right password is always
checked, however many strangers guess at the account, from an address it used lately or with
the device token its client was given at an earlier login (until wrong passwords made with the
account's device tokens reach their own limit: docs/security.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets

from protocol.errors import ErrorCode, VitrineError
from protocol.messages import (
    ChangePassword,
    CreateUser,
    Login,
    Logout,
    Ok,
    Resume,
    Session,
    UserInfo,
    WhoAmI,
    canonical_username,
)
from repository import accounts
from repository.accounts import User
from service import auth
from service.context import RequestContext
from service.registry import route

log = logging.getLogger("vitrine.auth")

BAD_CREDENTIALS = "Wrong user name or password."
SESSION_ENDED = "That session has ended (logged out, expired or revoked); log in again."
PASSWORD_CHANGED_MEANWHILE = (
    "The password was changed on another connection while this one logged in; log in again."
)


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def _start_session(
    ctx: RequestContext,
    request_id: int,
    user: User,
    password_hash: str,
    *,
    remember_device: bool = False,
) -> Session:
    """A new session for `user`, whose password was just verified as `password_hash`; with a
    fresh device token (30 more days) if the client keeps them."""
    token = secrets.token_urlsafe(32)
    services = ctx.services
    made = await services.db_call(
        accounts.create_session,
        user.id,
        _token_hash(token),
        services.config.session_lifetime_s,
        password_hash,
    )
    if made is None:
        raise VitrineError(ErrorCode.UNAUTHENTICATED, PASSWORD_CHANGED_MEANWHILE)
    await _log_in(ctx, user, made[0], PASSWORD_CHANGED_MEANWHILE)
    device = services.device_tokens.issue(user.id, password_hash) if remember_device else ""
    return Session(
        id=request_id,
        name=user.name,
        admin=user.is_admin,
        resume_token=token,
        device_token=device,
    )


async def _log_in(ctx: RequestContext, user: User, session_id: int, ended: str) -> None:
    """Log this connection in, then make sure its session was not ended meanwhile.

    A logout or a password change revokes sessions in the database, then ends the connections
    logged in on them. A connection that looked its session up before the revocation but
    logs in after the sweep would stay logged in on a dead session; so it logs in first and
    looks again: a revocation before the second look is seen there, one after it is followed
    by a sweep that finds this connection logged in.

    The second look also reads when the session expires: the connection ends it then, however
    busy it keeps (`ConnectionState.expire_at`).
    """
    state = ctx.connection
    state.start(user, session_id)
    expires_at = await ctx.services.db_call(accounts.session_expires_at, session_id)
    if expires_at is None:
        state.end()
        raise VitrineError(ErrorCode.UNAUTHENTICATED, ended)
    if state.session_id == session_id:  # not ended by a sweep meanwhile
        state.expire_at(expires_at)


def _taken(name: str) -> VitrineError:
    return VitrineError(ErrorCode.CONFLICT, f"The name {name!r} is taken; choose another.")


@route(CreateUser, needs_login=False, exclusive=True)
async def create_user(ctx: RequestContext, request: CreateUser) -> UserInfo:
    name = auth.normalise_username(request.name)
    auth.check_new_password(request.password)
    # Before hashing: anyone may ask for a taken name, and each hash costs the shared pool
    # tens of milliseconds. The insert still decides a race between two new accounts.
    if await ctx.services.db_call(accounts.user_by_name, name) is not None:
        raise _taken(name)
    password_hash = await ctx.services.run(auth.hash_password, request.password)
    try:
        user = await ctx.services.db_call(accounts.create_user, name, password_hash)
    except accounts.NameTaken:
        raise _taken(name) from None
    return UserInfo(id=request.id, name=user.name, admin=user.is_admin)


@route(Login, needs_login=False, exclusive=True)
async def login(ctx: RequestContext, request: Login) -> Session:
    """A name outside the name rule (`canonical_username`, the rule sign-up and the shell
    apply) belongs to no account and never will: it is answered as a wrong password is, but
    at once, without a password check or a count in the throttle. Its counters are for
    guesses at accounts, and one per made-up name would only push real ones out of its
    memory; a refused peer learns nothing either way, as the rule is public. The name is
    still logged, as a wrong password's is, so the operator sees what is being tried."""
    services = ctx.services
    account = canonical_username(request.name)
    peer = ctx.connection.peer
    if account is None:
        # %r, lowercased as names are: control characters in it cannot forge a log line.
        log.info(
            "login with a name no account can have: account=%r peer=%s (not counted)",
            request.name.strip().lower(),
            peer,
        )
        raise VitrineError(ErrorCode.UNAUTHENTICATED, BAD_CREDENTIALS)
    device = False
    if request.device_token:
        # The token is checked before the throttle (it decides which limits apply), which needs
        # the account's row: only for a peer its own counts do not refuse already, so that a
        # refused peer still costs no work. An invalid token is no token, and the answer never
        # says which it was.
        services.throttle.refuse_peer_early(account, peer)
        owner = await services.db_call(accounts.user_by_name, account)
        if owner is not None:
            checked = services.device_tokens.check(
                request.device_token, owner.id, owner.password_hash
            )
            device = checked is not None
    async with services.throttle.attempt(account, peer, device=device) as attempt:
        user = await services.db_call(accounts.user_by_name, account)
        ok = await services.run(
            auth.verify_or_waste_time, request.password, user.password_hash if user else None
        )
        if not ok or user is None:
            await asyncio.sleep(attempt.failed())
            raise VitrineError(ErrorCode.UNAUTHENTICATED, BAD_CREDENTIALS)
        attempt.succeeded()
    return await _start_session(
        ctx, request.id, user, user.password_hash, remember_device=request.remember_device
    )


@route(Resume, needs_login=False, exclusive=True)
async def resume(ctx: RequestContext, request: Resume) -> Session:
    found = await ctx.services.db_call(accounts.session_user, _token_hash(request.token))
    if found is None:
        raise VitrineError(ErrorCode.UNAUTHENTICATED, SESSION_ENDED)
    session_id, user = found
    await _log_in(ctx, user, session_id, SESSION_ENDED)
    return Session(id=request.id, name=user.name, admin=user.is_admin, resume_token=request.token)


@route(Logout, exclusive=True)
async def logout(ctx: RequestContext, request: Logout) -> Ok:
    state = ctx.connection
    if state.user is not None and state.session_id is not None:
        await ctx.services.db_call(accounts.revoke_session, state.session_id)
        ctx.services.end_sessions(
            state.user.id,
            "This session was logged out on another connection; log in again.",
            session_id=state.session_id,
            keep=state,
        )
    state.end()
    return Ok(id=request.id)


@route(WhoAmI)
async def whoami(ctx: RequestContext, request: WhoAmI) -> UserInfo:
    return UserInfo(id=request.id, name=ctx.user.name, admin=ctx.user.is_admin)


@route(ChangePassword, exclusive=True)
async def change_password(ctx: RequestContext, request: ChangePassword) -> Session:
    """Every session of the user ends, this one's token included (it may be the stolen one):
    the answer carries a fresh token for this connection."""
    services = ctx.services
    user = await services.db_call(accounts.user_by_id, ctx.user.id)
    if user is None:
        raise VitrineError(ErrorCode.UNAUTHENTICATED, "Your account no longer exists.")
    # Throttled by this peer's own wrong passwords only: strangers guessing at the account must
    # not stop its owner from changing the password, which is what an owner under attack does.
    throttle = services.throttle.attempt(user.name, ctx.connection.peer, logged_in=True)
    async with throttle as attempt:
        if not await services.run(auth.verify_password, request.old_password, user.password_hash):
            await asyncio.sleep(attempt.failed())
            raise VitrineError(ErrorCode.UNAUTHENTICATED, "The current password is wrong.")
        attempt.succeeded()
    auth.check_new_password(request.new_password)
    new_hash = await services.run(auth.hash_password, request.new_password)
    await services.db_call(accounts.replace_password, user.id, new_hash)
    services.end_sessions(
        user.id,
        "The password was changed on another connection; log in again.",
        keep=ctx.connection,
    )
    return await _start_session(
        ctx, request.id, user, new_hash, remember_device=request.remember_device
    )
