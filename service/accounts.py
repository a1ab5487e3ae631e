"""Account requests: sign-up, login, resume, logout, password change.

The answer to a failed login never says whether the name exists, and it comes only after the
throttle's delay, so guessing is slow and learns nothing about which accounts exist.
"""

from __future__ import annotations

import asyncio
import hashlib
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
)
from repository import accounts
from repository.accounts import User
from service import auth
from service.context import RequestContext
from service.registry import route

BAD_CREDENTIALS = "Wrong user name or password."


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def _start_session(ctx: RequestContext, request_id: int, user: User) -> Session:
    token = secrets.token_urlsafe(32)
    services = ctx.services
    session_id = await services.db_call(
        accounts.create_session, user.id, _token_hash(token), services.config.session_lifetime_s
    )
    ctx.connection.user = user
    ctx.connection.session_id = session_id
    return Session(id=request_id, name=user.name, admin=user.is_admin, resume_token=token)


@route(CreateUser, needs_login=False, exclusive=True)
async def create_user(ctx: RequestContext, request: CreateUser) -> UserInfo:
    name = auth.normalise_username(request.name)
    auth.check_new_password(request.password)
    password_hash = await ctx.services.run(auth.hash_password, request.password)
    try:
        user = await ctx.services.db_call(accounts.create_user, name, password_hash)
    except accounts.NameTaken:
        raise VitrineError(
            ErrorCode.CONFLICT, f"The name {name!r} is taken; choose another."
        ) from None
    return UserInfo(id=request.id, name=user.name, admin=user.is_admin)


@route(Login, needs_login=False, exclusive=True)
async def login(ctx: RequestContext, request: Login) -> Session:
    services = ctx.services
    account = request.name.strip().lower()
    peer = ctx.connection.peer
    services.throttle.check(account, peer)
    user = await services.db_call(accounts.user_by_name, account)
    ok = await services.run(
        auth.verify_or_waste_time, request.password, user.password_hash if user else None
    )
    if not ok or user is None:
        await asyncio.sleep(services.throttle.failure(account, peer))
        raise VitrineError(ErrorCode.UNAUTHENTICATED, BAD_CREDENTIALS)
    services.throttle.success(account)
    return await _start_session(ctx, request.id, user)


@route(Resume, needs_login=False, exclusive=True)
async def resume(ctx: RequestContext, request: Resume) -> Session:
    found = await ctx.services.db_call(accounts.session_user, _token_hash(request.token))
    if found is None:
        raise VitrineError(
            ErrorCode.UNAUTHENTICATED,
            "That session has ended (logged out, expired or revoked); log in again.",
        )
    session_id, user = found
    ctx.connection.user = user
    ctx.connection.session_id = session_id
    return Session(id=request.id, name=user.name, admin=user.is_admin, resume_token=request.token)


@route(Logout, exclusive=True)
async def logout(ctx: RequestContext, request: Logout) -> Ok:
    if ctx.connection.session_id is not None:
        await ctx.services.db_call(accounts.revoke_session, ctx.connection.session_id)
    ctx.connection.user = None
    ctx.connection.session_id = None
    ctx.connection.extras.clear()
    return Ok(id=request.id)


@route(WhoAmI)
async def whoami(ctx: RequestContext, request: WhoAmI) -> UserInfo:
    return UserInfo(id=request.id, name=ctx.user.name, admin=ctx.user.is_admin)


@route(ChangePassword, exclusive=True)
async def change_password(ctx: RequestContext, request: ChangePassword) -> Ok:
    services = ctx.services
    user = await services.db_call(accounts.user_by_id, ctx.user.id)
    if user is None:
        raise VitrineError(ErrorCode.UNAUTHENTICATED, "Your account no longer exists.")
    services.throttle.check(user.name, ctx.connection.peer)
    if not await services.run(auth.verify_password, request.old_password, user.password_hash):
        await asyncio.sleep(services.throttle.failure(user.name, ctx.connection.peer))
        raise VitrineError(ErrorCode.UNAUTHENTICATED, "The current password is wrong.")
    auth.check_new_password(request.new_password)
    new_hash = await services.run(auth.hash_password, request.new_password)
    await services.db_call(accounts.set_password_hash, user.id, new_hash)
    await services.db_call(accounts.revoke_user_sessions, user.id, ctx.connection.session_id)
    return Ok(id=request.id)
