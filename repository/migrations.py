"""Versioned schema steps; `PRAGMA user_version` records how many have run.

Append new steps at the end and never edit a released one: a database in the field has already
run it. Prices are integer cents and quantities integers, with CHECKs so that no bug anywhere
can store a negative stock.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable

from util.catalogue_text import TextRefused, fold_for_search, index_text, normalise_tag

log = logging.getLogger(__name__)

#: Renamed tags a v9 log line names, as examples; beyond, only counted.
V9_RENAMES_NAMED = 10

_V1_SCHEMA = """
        CREATE TABLE users (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            is_admin INTEGER NOT NULL DEFAULT 0 CHECK (is_admin IN (0, 1)),
            created_at REAL NOT NULL
        );
        CREATE TABLE sessions (
            id INTEGER PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            token_hash BLOB NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            revoked_at REAL
        );
        CREATE TABLE images (
            id INTEGER PRIMARY KEY,
            owner_id INTEGER NOT NULL REFERENCES users(id),
            blob TEXT NOT NULL,
            thumb_blob TEXT NOT NULL,
            filename TEXT NOT NULL DEFAULT '',
            title TEXT NOT NULL DEFAULT '',
            description TEXT NOT NULL DEFAULT '',
            price_cents INTEGER NOT NULL DEFAULT 0 CHECK (price_cents >= 0),
            quantity INTEGER NOT NULL DEFAULT 0 CHECK (quantity >= 0),
            private INTEGER NOT NULL DEFAULT 0 CHECK (private IN (0, 1)),
            format TEXT NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            byte_size INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            deleted_at REAL
        );
        -- One live row per owner and content: a re-upload reports the existing id.
        CREATE UNIQUE INDEX images_owner_blob ON images(owner_id, blob) WHERE deleted_at IS NULL;
        CREATE INDEX images_listing ON images(created_at DESC) WHERE deleted_at IS NULL;
        CREATE INDEX images_blob ON images(blob);
        CREATE INDEX images_thumb_blob ON images(thumb_blob);

        CREATE TABLE tags (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE
        );
        CREATE TABLE image_tags (
            image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            tag_id INTEGER NOT NULL REFERENCES tags(id),
            PRIMARY KEY (image_id, tag_id)
        ) WITHOUT ROWID;
        CREATE INDEX image_tags_by_tag ON image_tags(tag_id, image_id);

        -- rowid = images.id, kept in step by the repository on every write.
        CREATE VIRTUAL TABLE images_fts USING fts5(
            title, description, tags, filename, tokenize = 'unicode61 remove_diacritics 2'
        );

        CREATE TABLE embeddings (
            image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
            model TEXT NOT NULL,
            vector BLOB NOT NULL
        );

        CREATE TABLE image_colours (
            image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            rank INTEGER NOT NULL,
            r INTEGER NOT NULL, g INTEGER NOT NULL, b INTEGER NOT NULL,
            hue REAL NOT NULL,
            saturation REAL NOT NULL,
            lightness REAL NOT NULL,
            share REAL NOT NULL,
            PRIMARY KEY (image_id, rank)
        ) WITHOUT ROWID;
        CREATE INDEX image_colours_by_hue ON image_colours(hue);

        CREATE TABLE orders (
            id INTEGER PRIMARY KEY,
            buyer_id INTEGER NOT NULL REFERENCES users(id),
            total_cents INTEGER NOT NULL CHECK (total_cents >= 0),
            created_at REAL NOT NULL
        );
        CREATE INDEX orders_by_buyer ON orders(buyer_id, created_at);
        CREATE TABLE order_lines (
            order_id INTEGER NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
            line_no INTEGER NOT NULL,
            image_id INTEGER NOT NULL REFERENCES images(id),
            seller_id INTEGER NOT NULL REFERENCES users(id),
            title TEXT NOT NULL,
            quantity INTEGER NOT NULL CHECK (quantity > 0),
            unit_price_cents INTEGER NOT NULL CHECK (unit_price_cents >= 0),
            PRIMARY KEY (order_id, line_no)
        );
        CREATE INDEX order_lines_by_seller ON order_lines(seller_id);
        CREATE INDEX order_lines_by_image ON order_lines(image_id);
"""


def _run_statements(
    script: str, report: Callable[[list[int]], None] | None = None
) -> Callable[[sqlite3.Connection], None]:
    """One statement at a time: `executescript` would commit the migration's transaction.
    `report` is given each statement's row count (SQLite's changes(), free), for a step that
    changes what users see to say in the log how much it changed."""

    def step(conn: sqlite3.Connection) -> None:
        counts = [
            conn.execute(statement).rowcount for statement in script.split(";") if statement.strip()
        ]
        if report is not None:
            report(counts)

    return step


#: v2: colour search walks hue ranges reading share, lightness and saturation too; with them in
#: the index the walk never touches the table. It supersedes the hue-only index.
_V2_COLOUR_INDEX = """
        CREATE INDEX image_colours_by_hue_share
            ON image_colours(hue, share, lightness, saturation);
        DROP INDEX image_colours_by_hue
"""

#: v3: an image stored by a server run with `--no-colours` has no colours because none were
#: computed, not because it has none; the flag tells the two apart, so that a later run with
#: colours computes them (`service.colour_backfill`). Rows from before v3 cannot be told apart:
#: every one without colours is marked, and the first start computes them once (an achromatic
#: picture finds none again, and is then unmarked for good).
_V3_COLOURS_PENDING = """
        ALTER TABLE images ADD COLUMN colours_pending INTEGER NOT NULL DEFAULT 0
            CHECK (colours_pending IN (0, 1));
        UPDATE images SET colours_pending = 1
            WHERE NOT EXISTS (SELECT 1 FROM image_colours c WHERE c.image_id = images.id);
        CREATE INDEX images_colours_pending ON images(id) WHERE colours_pending = 1
"""


def _v3_report(counts: list[int]) -> None:
    if marked := counts[1]:
        log.info(
            "schema v3: %d images without colours marked for the colour backfill, which "
            "computes them at a start with colours",
            marked,
        )


#: v4: a random id for this shop's data, sent in `Welcome`: the client keys a buyer's local
#: cart by it, so a new server at the same address (or the same server by another name) is
#: never handed a cart whose image ids meant other products. It goes where the data goes: a
#: restored backup keeps it.
_V4_SERVER_ID = """
        CREATE TABLE server_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        INSERT INTO server_meta (key, value) VALUES ('server_id', lower(hex(randomblob(16))))
"""

#: v5: search by colour ranks from memory (`repository.colour_table`), which loads
#: `image_colours` with one scan and follows it by primary key; no query walks hues in SQL any
#: more, so v2's index was only written (on every upload, backfill and purge), never read.
_V5_NO_HUE_INDEX = """
        DROP INDEX IF EXISTS image_colours_by_hue_share
"""

#: v6: the idempotency key a client sends with a checkout, so that an order sent again after
#: no answer came (the shell killed, the connection lost) is found instead of placed twice.
#: Unique per buyer; orders from before v6 have none.
_V6_CHECKOUT_KEY = """
        ALTER TABLE orders ADD COLUMN checkout_key TEXT;
        CREATE UNIQUE INDEX orders_by_checkout_key ON orders(buyer_id, checkout_key)
            WHERE checkout_key IS NOT NULL
"""


def _rewrite_search_text(conn: sqlite3.Connection, spell: Callable[[str], str]) -> None:
    """Write the text-index row of every live image again, each column spelt by `spell`; the
    stored titles keep what was typed. The SELECT does for all rows in one statement what
    `repository.images.fts_texts` does for one, and the columns are named here rather than
    taken from `repository.images.index_row` on purpose: that row follows the index as it is
    now, and a later version that changes its columns (or where tags live) must not change, or
    break, what this released step writes into the v6 table. Only the spelling is current
    code, and on purpose (see v7).

    The index is dropped and made again from its own definition rather than emptied with
    DELETE, which has to read every old row's tokens: a damaged index would then stop the
    upgrade, and with it the server's start, while everything it holds is about to be
    replaced anyway."""
    rows = conn.execute(
        "SELECT i.id, i.title, i.description, "
        "  COALESCE((SELECT group_concat(t.name, ' ') FROM image_tags it "
        "            JOIN tags t ON t.id = it.tag_id WHERE it.image_id = i.id), ''), "
        "  i.filename "
        "FROM images i WHERE i.deleted_at IS NULL"
    )
    folded = [(row[0], *(spell(str(v)) for v in row[1:])) for row in rows]
    (definition,) = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'images_fts'"
    ).fetchone()
    conn.execute("DROP TABLE images_fts")
    conn.execute(definition)
    conn.executemany(
        "INSERT INTO images_fts (rowid, title, description, tags, filename) VALUES (?, ?, ?, ?, ?)",
        folded,
    )


def _v7_fold_search_text(conn: sqlite3.Connection) -> None:
    """v7: the text index holds its text folded (`util.catalogue_text.fold_for_search`: NFKC,
    casefold, Greek accents), as the search text is, so `fullwidth`, `fine`, `xii`, `strasse`
    and `σισυφος` find `ＦＵＬＬＷＩＤＴＨ ﬁne Ⅻ`, `straße` and `ΣΊΣΥΦΟΣ`. It folds with the
    function as it is when it runs, on purpose: a later change to the folding comes with its
    own migration (v8 did), and a database that meets both gets the newest spelling."""
    _rewrite_search_text(conn, fold_for_search)


def _v8_split_unspaced_text(conn: sqlite3.Connection) -> None:
    """v8: in the text index every Chinese ideograph and Japanese kana is a word of its own
    (`util.catalogue_text.index_text`), and a search for a run of them looks for those
    characters together, in order; so `连衣裙` finds "红色连衣裙" and `東京` "東京タワー". Rows
    written before held each run as one word, which the new query no longer matches."""
    _rewrite_search_text(conn, index_text)


def _merge_tag(conn: sqlite3.Connection, tag_id: int, into: int) -> None:
    """Give every image of tag `tag_id` the tag `into` instead (once: an image with both keeps
    one row), then drop `tag_id`."""
    conn.execute(
        "INSERT INTO image_tags (image_id, tag_id) SELECT image_id, ? FROM image_tags "
        "WHERE tag_id = ? ON CONFLICT DO NOTHING",
        (into, tag_id),
    )
    conn.execute("DELETE FROM image_tags WHERE tag_id = ?", (tag_id,))
    conn.execute("DELETE FROM tags WHERE id = ?", (tag_id,))


def _v9_spelling(name: str) -> str:
    """The spelling v9 gives a stored tag: `normalise_tag`'s, as uploads and lookups have it, so
    the tag is still found and removed by what was typed for it. A name no version accepted
    (none should be stored) is left as it is rather than renamed to another refused one."""
    try:
        return normalise_tag(name)
    except TextRefused:
        return name


def _v9_fold_tags(conn: sqlite3.Connection) -> None:
    """v9: tags are folded (`util.catalogue_text.fold_tag`: NFKC, lower(), `ß` as `ss`, unless
    that would make the tag invalid), so `ＳＡＬＥ`, `ﬁne` and `straße`, stored until now as
    tags of their own that browsing by `sale`, `fine` or `strasse` never found, become those
    tags, while `a½`, `ŀ` or 33 `ß`, which folded are refused, keep their names. Tags that now
    fold alike are merged into one: the one already spelt so if there is one, else the oldest,
    renamed. Its images keep one row each. The text index held the tags folded already, but
    the merged images' rows are written again, so that each holds its tags once, as a new
    upload's row would; the columns are named here, not taken from `repository.images`, as in v7."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for tag_id, name in conn.execute("SELECT id, name FROM tags ORDER BY id").fetchall():
        groups.setdefault(_v9_spelling(str(name)), []).append((int(tag_id), str(name)))
    changed: list[int] = []
    renamed: list[str] = []  # "old → new", for the log
    merged = 0
    for folded, tags in groups.items():
        if not folded or (len(tags) == 1 and tags[0][1] == folded):
            continue
        renamed += [f"{name} → {folded}" for _tag_id, name in tags if name != folded]
        keep = next((tag_id for tag_id, name in tags if name == folded), tags[0][0])
        for tag_id, _name in tags:
            if tag_id != keep:
                _merge_tag(conn, tag_id, keep)
                merged += 1
        # A tag spelt `folded` outside this group (one whose own name folds on further) would
        # make the rename break the unique name: merge into it instead.
        row = conn.execute("SELECT id FROM tags WHERE name = ?", (folded,)).fetchone()
        if row is not None and row[0] != keep:
            _merge_tag(conn, keep, int(row[0]))
            merged += 1
            keep = int(row[0])
        conn.execute("UPDATE tags SET name = ? WHERE id = ?", (folded, keep))
        changed.append(keep)
    if not changed:
        return
    _v9_report(conn, changed, renamed, merged)
    rows = conn.execute(
        "SELECT i.id, i.title, i.description, "
        "  COALESCE((SELECT group_concat(t.name, ' ') FROM image_tags it "
        "            JOIN tags t ON t.id = it.tag_id WHERE it.image_id = i.id), ''), "
        "  i.filename "
        "FROM images i WHERE i.deleted_at IS NULL AND i.id IN "
        "  (SELECT image_id FROM image_tags WHERE tag_id IN (SELECT value FROM json_each(?)))",
        (json.dumps(changed),),
    ).fetchall()
    for row in rows:
        conn.execute("DELETE FROM images_fts WHERE rowid = ?", (row[0],))
        conn.execute(
            "INSERT INTO images_fts (rowid, title, description, tags, filename) "
            "VALUES (?, ?, ?, ?, ?)",
            (row[0], *(index_text(str(v)) for v in row[1:])),
        )


def _v9_report(
    conn: sqlite3.Connection, changed: list[int], renamed: list[str], merged: int
) -> None:
    """Log what v9 changed that users see: a seller finds their tag under another spelling, so
    the operator must be able to tell them which and why."""
    (images,) = conn.execute(
        "SELECT count(DISTINCT image_id) FROM image_tags "
        "WHERE tag_id IN (SELECT value FROM json_each(?))",
        (json.dumps(changed),),
    ).fetchone()
    named = ", ".join(renamed[:V9_RENAMES_NAMED])
    if len(renamed) > V9_RENAMES_NAMED:
        named += f", and {len(renamed) - V9_RENAMES_NAMED} more"
    log.info(
        "schema v9: %d tags respelt as uploads now spell them (%s), %d of them merged into a "
        "tag of the same spelling; %d images (deleted ones included) hold the changed tags",
        len(renamed),
        named,
        merged,
        images,
    )


#: v10: colours extracted before session 20's merge limit (`models.colours.CHROMA_KEEP`) are
#: computed again. A hue sweep (a rainbow, a hue wheel, colour noise) merged then all the way
#: round into one grey "colour" with an arbitrary hue (`#7c7f7c`, "hue 120", share 1.0), found
#: by `search_by_color green --min-share 0.99`; and an upload of the same bytes by someone else
#: copies the stored palette, so only recomputing the stored one makes the two agree again.
#: Only palettes holding a colour the current rule cannot produce are marked, not all of them:
#: the pending flag (v3) makes the colour backfill compute them at the next start, and its rows
#: are deleted, since pending means "no colours yet" (`repository.images.store_palettes` inserts
#: the new ones) and a search must not find the grey meanwhile. Soft-deleted rows are marked too:
#: `repository.images.dedup_lookup` may offer one to a new upload of the same bytes, and a
#: pending one is extracted again rather than copied.
#:
#: The bound is chroma (max - min of the stored sRGB, of 255) under 10.2, i.e. 0.04. Every
#: pixel of a colour has at least the lowest floor, FAINT_CHROMA 0.06 (CHROMA_MIN 0.12 and
#: DARK_CHROMA 0.08 are higher), and a merged cluster keeps at least CHROMA_KEEP 0.85 of it:
#: 0.051. Measured: the lowest on the 500 clothing photos is 0.082 (a navy, #303445), while the
#: merged greys of docs/colour-measurements.md, "Hue sweeps", are 0 to 0.027 (#8c8587). It is
#: a constant here, not taken from `models.colours`, so that a later change there cannot change
#: what this released step marks. On 100,000 images (250,000 colour rows) the step takes
#: about 0.1 s: one scan of `image_colours`, and the marked images by primary key.
_V10_RECOMPUTE_GREY_MERGES = """
        UPDATE images SET colours_pending = 1
            WHERE id IN (SELECT image_id FROM image_colours
                         WHERE max(r, g, b) - min(r, g, b) < 0.04 * 255);
        DELETE FROM image_colours
            WHERE image_id IN (SELECT image_id FROM image_colours
                               WHERE max(r, g, b) - min(r, g, b) < 0.04 * 255)
"""


def _v10_report(counts: list[int]) -> None:
    if marked := counts[0]:
        log.info(
            "schema v10: %d images' colours (a hue sweep merged into one grey) removed and "
            "marked for the colour backfill, which computes them again after this start; until "
            "then search by colour does not find them",
            marked,
        )


#: v11: sessions are found by user (a password change revokes all of a user's, and deleting a
#: user cascades to them), which scanned the whole table, and by expiry: each new session
#: deletes a few expired ones (`repository.accounts.create_session`), until then nothing did.
#: The rows expired before this step, every login's since the first start, are deleted here,
#: once (SQLite's clock, in seconds since the epoch as `time.time()` stored them). IF NOT EXISTS:
#: tests of earlier steps set `user_version` back on a newer database and run the rest again.
_V11_SESSION_INDEXES = """
        CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions(user_id);
        CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions(expires_at);
        DELETE FROM sessions WHERE expires_at <= (julianday('now') - 2440587.5) * 86400.0
"""


#: v12: every stored palette is computed again. Session 23 changed extraction twice in ways a
#: stored palette cannot show: a photo with a colour profile (Display P3, Adobe RGB) is
#: converted to sRGB before its colours are taken, and a product cut off by the frame beside
#: another is no longer suppressed as a second backdrop (docs/colour-measurements.md, "A
#: product cut off by the frame"). Neither leaves a mark in the old colours, so every image
#: that still has its original is marked `colours_outdated`. Unlike v10's marks, the old
#: colours stay (they are right for almost every picture): searches and listings keep using
#: them until the colour backfill replaces them, a server run with `--no-colours` keeps showing
#: them, and an original that cannot be read keeps them instead of losing its colours.
_V12_OUTDATED_PALETTES = """
        ALTER TABLE images ADD COLUMN colours_outdated INTEGER NOT NULL DEFAULT 0
            CHECK (colours_outdated IN (0, 1));
        UPDATE images SET colours_outdated = 1 WHERE blob != '' AND colours_pending = 0;
        CREATE INDEX images_colours_outdated ON images(id) WHERE colours_outdated = 1
"""


def _v12_report(counts: list[int]) -> None:
    if marked := counts[1]:
        log.info(
            "schema v12: %d images' colours marked to be computed again from their originals "
            "by the colour backfill at the next start with colours (colour profiles and "
            "products cut off by the frame are read as they now are); until then they keep, "
            "and are found by, their current colours",
            marked,
        )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _run_statements(_V1_SCHEMA),
    _run_statements(_V2_COLOUR_INDEX),
    _run_statements(_V3_COLOURS_PENDING, _v3_report),
    _run_statements(_V4_SERVER_ID),
    _run_statements(_V5_NO_HUE_INDEX),
    _run_statements(_V6_CHECKOUT_KEY),
    _v7_fold_search_text,
    _v8_split_unspaced_text,
    _v9_fold_tags,
    _run_statements(_V10_RECOMPUTE_GREY_MERGES, _v10_report),
    _run_statements(_V11_SESSION_INDEXES),
    _run_statements(_V12_OUTDATED_PALETTES, _v12_report),
]
