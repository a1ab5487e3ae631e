"""Rows for repository-level tests, which write straight to a `Database` without a server:
users, and images with placeholder blobs, so each test states only the fields it is about."""

from __future__ import annotations

import sqlite3
from typing import Any

from repository import images as repo


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
