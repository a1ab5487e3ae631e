"""`repository.filters.SearchFilters`, the filters every ranked search shares, against a real
database made by the project's migrations: what passes must be what the filters say, whether
it is asked of some candidates (`passing`), of the whole catalogue (`allowed_ids`), or by a
later batch's re-check (`service.listings.Recheck`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from protocol.catalog import Filters
from repository import images as repo
from repository.database import Database
from repository.filters import SearchFilters
from service.listings import Recheck
from tests.rows import add_users, new_image

TAGS = ["red", "blue", "green"]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """Two users and 120 images with random prices, stock, tags and privacy; a few deleted."""
    db = Database(tmp_path / "vitrine.db")
    conn = db.conn
    add_users(conn, "ann", "bob")
    rng = np.random.default_rng(7)
    for k in range(120):
        # "green" on few images, "red" on most: rarest first is then green, blue, red
        odds = {"red": 0.8, "blue": 0.4, "green": 0.1}
        repo.insert_image(
            conn,
            new_image(
                k,
                owner_id=1 + k % 2,
                price_cents=100 * int(rng.integers(0, 10)),
                quantity=int(rng.integers(0, 3)),
                private=bool(rng.random() < 0.2),
                tags=[t for t in TAGS if rng.random() < odds[t]],
            ),
        )
    for image_id in (3, 40, 77):
        repo.soft_delete(conn, image_id)
    yield db
    db.close()


def _expected(conn: sqlite3.Connection, viewer: int, flt: SearchFilters, tags: list[str]) -> set:
    """The filters worked out in Python from the rows: the reference."""
    rows = conn.execute(
        "SELECT id, owner_id, private, deleted_at, price_cents, quantity FROM images"
    ).fetchall()
    tagged: dict[int, set[str]] = {}
    for image_id, name in conn.execute(
        "SELECT it.image_id, t.name FROM image_tags it JOIN tags t ON t.id = it.tag_id"
    ):
        tagged.setdefault(image_id, set()).add(name)
    return {
        image_id
        for image_id, owner, private, deleted, price, quantity in rows
        if deleted is None
        and (not private or owner == viewer)
        and (flt.min_price_cents is None or price >= flt.min_price_cents)
        and (flt.max_price_cents is None or price <= flt.max_price_cents)
        and (not flt.in_stock or quantity > 0)
        and set(tags) <= tagged.get(image_id, set())
    }


def _queries(conn: sqlite3.Connection) -> list[str]:
    """Start recording the SQL `conn` runs; the list fills as it does."""
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    return seen


def test_tags_resolve_rarest_first_only_when_asked(db: Database) -> None:
    conn = db.conn
    ids = repo.tag_ids(conn, TAGS)
    counts = repo.tag_image_counts(conn, list(ids.values()))
    assert counts[ids["green"]] < counts[ids["blue"]] < counts[ids["red"]]

    ranked = SearchFilters(in_stock=True).with_tags(conn, TAGS, rarest_first=True)
    assert ranked.tag_ids == (ids["green"], ids["blue"], ids["red"])
    assert ranked.tag_counts == tuple(counts[ids[t]] for t in ("green", "blue", "red"))
    assert ranked.in_stock and not ranked.impossible

    # the re-check of every batch and search by colour do not pay for a COUNT per tag
    seen = _queries(conn)
    plain = SearchFilters(max_price_cents=500).with_tags(conn, TAGS)
    conn.set_trace_callback(None)
    assert sorted(plain.tag_ids) == sorted(ids.values()) and plain.tag_counts == ()
    assert plain.max_price_cents == 500
    assert not [q for q in seen if "COUNT" in q]


def test_an_unknown_tag_matches_nothing_without_a_query(db: Database) -> None:
    conn = db.conn
    flt = SearchFilters(min_price_cents=100).with_tags(conn, ["red", "no-such-tag"])
    assert flt.impossible and flt.tag_ids == ()
    seen = _queries(conn)
    assert flt.passing(conn, 1, range(1, 121)) == set()
    assert flt.allowed_ids(conn, 1).tolist() == []
    conn.set_trace_callback(None)
    assert seen == []
    # and should its SQL be used anyway, it holds nothing back
    params: dict[str, object] = {"viewer": 1}
    sql = f"SELECT COUNT(*) FROM images i WHERE {repo.VISIBLE}{flt.sql(params)}"
    assert conn.execute(sql, params).fetchone()[0] == 0


@pytest.mark.parametrize("rarest_first", [False, True])
def test_passing_and_allowed_ids_agree_with_the_rows(db: Database, rarest_first: bool) -> None:
    conn = db.conn
    rng = np.random.default_rng(1)
    candidates = [*range(1, 121), 500, 501]  # two ids with no row at all
    for _ in range(60):
        tags = [t for t in TAGS if rng.random() < 0.4]
        low = 100 * int(rng.integers(0, 6)) if rng.random() < 0.5 else None
        high = 100 * int(rng.integers(4, 10)) if rng.random() < 0.5 else None
        conditions = SearchFilters(
            min_price_cents=low, max_price_cents=high, in_stock=bool(rng.random() < 0.5)
        )
        flt = conditions.with_tags(conn, tags, rarest_first=rarest_first)
        viewer = int(rng.integers(1, 3))
        want = _expected(conn, viewer, conditions, tags)
        picked = [i for i in candidates if rng.random() < 0.5]
        assert flt.passing(conn, viewer, picked) == want & set(picked), (flt, viewer)
        assert flt.allowed_ids(conn, viewer).tolist() == sorted(want), (flt, viewer)


def test_no_filters_is_visibility_alone(db: Database) -> None:
    conn = db.conn
    want = _expected(conn, 2, SearchFilters(), [])
    assert SearchFilters().passing(conn, 2, range(1, 200)) == want
    assert repo.passing_ids(conn, 2, range(1, 200)) == want


def test_a_recheck_resolves_its_tags_again_each_batch(db: Database) -> None:
    """A tag's id is looked up on every re-check, not kept from when the search ran: a tag
    first used after the search still filters the later batches."""
    conn = db.conn
    recheck = Recheck.of(["sale"], Filters(tags=["sale"], max_price_cents=500))
    assert recheck.conditions == SearchFilters(max_price_cents=500)
    assert recheck.resolve(conn).impossible
    assert recheck.passing(conn, 1, list(range(1, 121))) == set()

    cheap = conn.execute(
        "SELECT id FROM images WHERE price_cents <= 500 AND private = 0 AND deleted_at IS NULL "
        "ORDER BY id LIMIT 1"
    ).fetchone()[0]
    dear = conn.execute(
        "SELECT id FROM images WHERE price_cents > 500 AND private = 0 AND deleted_at IS NULL "
        "ORDER BY id LIMIT 1"
    ).fetchone()[0]
    for image_id in (cheap, dear):
        repo.update_image(conn, image_id, repo.Changes(add_tags=["sale"]))
    assert recheck.passing(conn, 1, list(range(1, 121))) == {cheap}
