"""Rows for repository-level tests, which write straight to a `Database` without a server:
users, and images with placeholder blobs, so each test states only the fields it is about."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from repository import images as repo
from repository.migrations import MIGRATIONS


def database_at(path: Path, version: int) -> sqlite3.Connection:
    """A new database file as a server of schema `version` left it: the first `version` steps
    run, nothing after (autocommit, rows by name), for tests of the steps after it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    for number, step in enumerate(MIGRATIONS[:version], start=1):
        step(conn)
        conn.execute(f"PRAGMA user_version={number}")
    return conn


def rewind_statements(version: int) -> list[str]:
    """SQL that makes a current database look written at schema `version`: later steps' added
    columns and indexes are dropped, since a real database of that version has none and
    migrating it again adds them (the data a later step changed is the test's to set)."""
    statements = []
    if version < 12:
        statements += [
            "DROP INDEX images_colours_outdated",
            "ALTER TABLE images DROP COLUMN colours_outdated",
        ]
    return [*statements, f"PRAGMA user_version={version}"]


def rewind_schema(conn: sqlite3.Connection, version: int) -> None:
    for statement in rewind_statements(version):
        conn.execute(statement)


def add_users(conn: sqlite3.Connection, *names: str) -> None:
    """Users with ids 1, 2, ... in the order given (a fresh database), no usable password."""
    for name in names:
        conn.execute(
            "INSERT INTO users (name, password_hash, created_at) VALUES (?, 'x', 0)", (name,)
        )


def new_image(k: int, **fields: Any) -> repo.NewImage:
    """Image number `k` (its blob names derive from it) with `fields` over the defaults."""
    values: dict[str, Any] = {
        "owner_id": 1,
        "blob": f"b{k}",
        "thumb_blob": f"t{k}",
        "filename": "",
        "title": "",
        "description": "",
        "price_cents": 0,
        "quantity": 1,
        "private": False,
        "format": "JPEG",
        "width": 1,
        "height": 1,
        "byte_size": 1,
        "tags": [],
        "palette": [],
    }
    values.update(fields)
    return repo.NewImage(**values)
