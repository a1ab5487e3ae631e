"""Users and their resumable sessions.

Only a hash of each resume token is stored, so a copy of the database cannot be used to take
over anyone's session.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from repository.database import transaction


@dataclass(frozen=True)
class User:
    id: int
    name: str
    password_hash: str
    is_admin: bool


def _user(row: sqlite3.Row | None) -> User | None:
    if row is None:
        return None
    return User(row["id"], row["name"], row["password_hash"], bool(row["is_admin"]))


class NameTaken(Exception):
    pass


def create_user(conn: sqlite3.Connection, name: str, password_hash: str) -> User:
    """Insert a user; the first one ever created becomes the admin, decided inside the
    transaction so two simultaneous first sign-ups cannot both become admin."""
    with transaction(conn, immediate=True):
        try:
            cursor = conn.execute(
                "INSERT INTO users (name, password_hash, is_admin, created_at) "
                "VALUES (?, ?, (SELECT COUNT(*) = 0 FROM users), ?)",
                (name, password_hash, time.time()),
            )
        except sqlite3.IntegrityError:
            raise NameTaken(name) from None
        user_id = cursor.lastrowid
    user = user_by_id(conn, user_id)
    assert user is not None
    return user


def user_by_name(conn: sqlite3.Connection, name: str) -> User | None:
    return _user(conn.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone())


def user_by_id(conn: sqlite3.Connection, user_id: int | None) -> User | None:
    return _user(conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone())


def replace_password(conn: sqlite3.Connection, user_id: int, password_hash: str) -> None:
    """The new hash and the end of every session of the user, in one transaction: the old
    password may be known to someone, and a crash between the two must not leave its sessions
    alive under the new one."""
    with transaction(conn, immediate=True):
        conn.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))
        conn.execute(
            "UPDATE sessions SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
            (time.time(), user_id),
        )


#: Expired sessions deleted by each new one (`create_session`): more than the one it adds, so
#: the table drains to the sessions still live, and few enough that no login pays for a backlog.
PURGE_PER_SESSION = 16


def create_session(
    conn: sqlite3.Connection, user_id: int, token_hash: bytes, lifetime_s: float, password_hash: str
) -> tuple[int, float] | None:
    """A new session and when it expires, only while the user's password is still the one
    just verified (None otherwise): a login whose password was changed on another connection
    during its seconds of hashing must not get a token the change can no longer revoke.

    Every login added a row and nothing deleted one, so the table only grew. Each new session
    now deletes up to PURGE_PER_SESSION expired ones, of any user, oldest first: found by the
    expiry index (v11), it is a bounded amount of work for the login that does it, and as
    each login removes more dead rows than it adds, the table shrinks to the live sessions
    whenever anyone logs in. A purge of only the user's own sessions would leave those of
    users who never come back for good; a purge of all at start-up (there is none) would wait
    for a restart. An expired row is worth nothing: a Resume of its token answers as for an
    unknown one, and `session_expires_at` of a deleted session is None, as of an expired one."""
    now = time.time()
    # Two statements, each its own transaction: the purge needs no atomicity with the insert,
    # and a statement that fails on a failing disk is rolled back by SQLite itself, where a
    # COMMIT that fails could leave this thread's connection inside a transaction.
    purge_expired_sessions(conn, now, limit=PURGE_PER_SESSION)
    cursor = conn.execute(
        "INSERT INTO sessions (user_id, token_hash, created_at, expires_at) "
        "SELECT ?, ?, ?, ? "
        "WHERE EXISTS (SELECT 1 FROM users WHERE id = ? AND password_hash = ?)",
        (user_id, token_hash, now, now + lifetime_s, user_id, password_hash),
    )
    if cursor.rowcount == 1 and cursor.lastrowid:
        return int(cursor.lastrowid), now + lifetime_s
    return None


def purge_expired_sessions(conn: sqlite3.Connection, now: float, limit: int) -> int:
    """Delete up to `limit` sessions expired by `now`, the soonest expired first; returns how
    many. The limit keeps it a bounded piece of the login that calls it. Revoked ones stay
    until they expire too: a row is needed for nothing after its expiry, and before it the
    revocation is what refuses its token."""
    cursor = conn.execute(
        "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions WHERE expires_at <= ? "
        "ORDER BY expires_at LIMIT ?)",
        (now, limit),
    )
    return cursor.rowcount


def session_expires_at(conn: sqlite3.Connection, session_id: int) -> float | None:
    """When the session expires if it is live now (neither revoked nor expired), else None."""
    row = conn.execute(
        "SELECT expires_at FROM sessions WHERE id = ? AND revoked_at IS NULL AND expires_at > ?",
        (session_id, time.time()),
    ).fetchone()
    return None if row is None else float(row[0])


def session_user(conn: sqlite3.Connection, token_hash: bytes) -> tuple[int, User] | None:
    """The live session for a token hash and its user, or None if unknown, revoked or expired."""
    row = conn.execute(
        "SELECT id, user_id FROM sessions WHERE token_hash = ? AND revoked_at IS NULL "
        "AND expires_at > ?",
        (token_hash, time.time()),
    ).fetchone()
    if row is None:
        return None
    user = user_by_id(conn, row["user_id"])
    return (row["id"], user) if user else None


def revoke_session(conn: sqlite3.Connection, session_id: int) -> None:
    conn.execute(
        "UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
        (time.time(), session_id),
    )
