"""Attacks not already covered elsewhere (docs/security.md maps every attack to its tests):
path tricks in file names, polyglot and bomb images, oversized texts, and SQL metacharacters in
every text field. Each one fails cleanly or is stored as harmless data, never an INTERNAL
error, never a changed schema, never a file outside the data directory."""

from __future__ import annotations

import io
import re
import sqlite3
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.catalog import (
    Batch,
    Browse,
    GetImage,
    ImageDetails,
    ImageUpdated,
    TextSearch,
    UpdateImage,
    Uploaded,
    UploadImage,
)
from protocol.errors import ErrorCode, VitrineError
from protocol.messages import PROTOCOL_VERSION, CreateUser, Error, Login, Session, UserInfo, Welcome
from shell.connection import ServerConnection
from tests.servers import ServerProcess, run_client
from tests.test_images_server import jpeg, picture
from tests.wire import read_response, send_message, tls_socket
from util.colour_spec import ColourSpecError, parse_colour

PASSWORD = "correct horse battery"
SQL = [
    "'",
    '"',
    ";",
    "--",
    "/*",
    "*/",
    "%",
    "_",
    "\\",
    "' OR '1'='1",
    "'; DROP TABLE images; --",
    '" UNION SELECT name, password_hash FROM users --',
    "1; UPDATE images SET quantity = -1 /* */",
    "%_%' ESCAPE '\\",
    "images_fts MATCH '*'",
]
NUL = "\x00"
_seeds = iter(range(50_000, 60_000))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("attacks") / "data").start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("attack-clients")


@pytest.fixture(scope="module")
def alice(server: ServerProcess, home: Path) -> Iterator[ServerConnection]:
    conn = server.user_connection(home / "alice", "alice", PASSWORD)
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def bob(server: ServerProcess, home: Path) -> Iterator[ServerConnection]:
    conn = server.user_connection(home / "bob", "bob", PASSWORD)
    yield conn
    conn.close()


def fresh() -> bytes:
    return jpeg(next(_seeds))


def refused(conn: ServerConnection, request: object) -> VitrineError:
    with pytest.raises(VitrineError) as caught:
        conn.call(request)  # type: ignore[arg-type]
    error = caught.value
    assert error.code is not ErrorCode.INTERNAL, error
    assert "Traceback" not in error.message
    return error


def schema(server: ServerProcess) -> list[tuple]:
    db = sqlite3.connect(f"file:{server.data_dir / 'vitrine.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        db.close()


def assert_no_server_error(server: ServerProcess, config_dir: Path) -> None:
    log = server.settled_log(config_dir)
    assert "outcome=INTERNAL" not in log and "Traceback" not in log, log[-3000:]


# --- path tricks in file names -------------------------------------------------------------------

PATH_TRICKS = [
    ("/etc/passwd.jpg", "passwd.jpg"),
    ("../../../../etc/zzshadow.jpg", "zzshadow.jpg"),
    ("....//....//zzdots.jpg", "zzdots.jpg"),
    ("~/.ssh/zzauthorized_keys", "zzauthorized_keys"),
    ("a\x00b\x00.jpg", "a\ufffdb\ufffd.jpg"),
    ("zz\r\ninjected: header.jpg", "zz\ufffd\ufffdinjected: header.jpg"),
    ("\u202egpj.exe", "\ufffdgpj.exe"),
    ("..", "unnamed"),
]


@pytest.mark.parametrize(("raw", "stored"), PATH_TRICKS)
def test_path_tricks_in_file_names_are_only_metadata(
    server: ServerProcess, alice: ServerConnection, raw: str, stored: str
) -> None:
    before = {p for p in server.data_dir.parent.rglob("*")}
    up = alice.call(UploadImage(id=0, filename=raw, data=fresh()), Uploaded)
    image = alice.call(GetImage(id=0, image_id=up.image_id), ImageDetails).image
    assert image.filename == stored
    created = {p for p in server.data_dir.parent.rglob("*")} - before
    # Only blobs appear, named by a keyed hash under the blob directory: no path from the name.
    blobs = server.data_dir / "blobs"
    for path in created:
        assert path.is_relative_to(server.data_dir), path
        assert (
            path.is_dir()
            or (path.is_relative_to(blobs) and re.fullmatch(r"[0-9a-f]{64}", path.name))
            or path.name.startswith("vitrine.db")
        ), path


def test_very_long_names_are_capped_and_overlong_ones_refused(alice: ServerConnection) -> None:
    name = "x" * 1000 + ".jpeg"  # within the wire limit (1024), over the file-system limit
    up = alice.call(UploadImage(id=0, filename=name, data=fresh()), Uploaded)
    stored = alice.call(GetImage(id=0, image_id=up.image_id), ImageDetails).image.filename
    assert len(stored.encode()) <= 255 and stored.endswith(".jpeg")
    error = refused(alice, UploadImage(id=0, filename="y" * 1025 + ".jpg", data=fresh()))
    assert error.code is ErrorCode.BAD_REQUEST and "$.filename" in error.message


def test_show_image_save_writes_only_where_told(
    server: ServerProcess, alice: ServerConnection, tmp_path: Path
) -> None:
    data = fresh()
    up = alice.call(
        UploadImage(id=0, filename="../../../zzescape.jpg", data=data), Uploaded
    ).image_id
    into = tmp_path / "a" / "b" / "downloads"
    into.mkdir(parents=True)
    done = run_client(
        server,
        "login alice",
        f"show_image {up} --save {into} --no-images",
        config_dir=tmp_path / "client",
        password=PASSWORD,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert [p.name for p in into.iterdir()] == ["zzescape.jpg"]
    assert (into / "zzescape.jpg").read_bytes() == data
    assert not [p for p in tmp_path.rglob("zzescape.jpg") if p.parent != into]


@pytest.mark.parametrize(
    ("sent", "written"), [(".bash_profile", "bash_profile"), ("..", "unnamed")]
)
def test_show_image_save_never_writes_a_hidden_file(
    server: ServerProcess, alice: ServerConnection, tmp_path: Path, sent: str, written: str
) -> None:
    """A seller chooses the file name over the wire (the shell's own walk skips hidden files,
    the wire does not): saved into a folder, it must not become a dotfile a shell would read."""
    up = alice.call(UploadImage(id=0, filename=sent, data=fresh()), Uploaded).image_id
    into = tmp_path / "home"
    into.mkdir()
    done = run_client(
        server,
        "login alice",
        f"show_image {up} --save {into}/ --no-images",
        config_dir=tmp_path / "client",
        password=PASSWORD,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert [p.name for p in into.iterdir()] == [written]


# --- polyglot images -----------------------------------------------------------------------------


def _zip(name: str, content: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(name, content)
    return out.getvalue()


def _gif() -> bytes:
    out = io.BytesIO()
    picture(7, (40, 30)).convert("P").save(out, "GIF")
    return out.getvalue()


PAYLOAD = b"<script>alert('zzpwned')</script>"
POLYGLOTS = {
    "jpeg+zip": (lambda: fresh() + _zip("evil.sh", b"rm -rf / " + PAYLOAD), "JPEG"),
    "jpeg+html": (lambda: fresh() + b"<html><body>" + PAYLOAD + b"</body></html>", "JPEG"),
    "gifar": (lambda: _gif() + _zip("META-INF/MANIFEST.MF", b"Main-Class: " + PAYLOAD), "GIF"),
}


@pytest.mark.parametrize("kind", sorted(POLYGLOTS))
def test_polyglots_are_accepted_as_the_image_and_never_interpreted(
    alice: ServerConnection, bob: ServerConnection, kind: str
) -> None:
    """Accepted: the bytes are a valid image (the decoder stops at its end marker), and refusing
    trailing data would also refuse real cameras' files. Harmless: the server never parses the
    tail, listings carry a re-encoded thumbnail without it, and the original goes back byte for
    byte only to those allowed to see it, labelled by its sniffed image format."""
    make, fmt = POLYGLOTS[kind]
    data = make()
    up = alice.call(UploadImage(id=0, filename=f"{kind}.jpg", data=data, private=True), Uploaded)
    mine = alice.call(GetImage(id=0, image_id=up.image_id, with_original=True), ImageDetails)
    assert mine.original == data and mine.format == fmt
    assert mine.image.thumbnail and PAYLOAD not in mine.image.thumbnail
    assert b"PK\x03\x04" not in mine.image.thumbnail
    assert refused(bob, GetImage(id=0, image_id=up.image_id, with_original=True)).code is (
        ErrorCode.NOT_FOUND
    )


def test_a_script_that_starts_like_a_page_is_not_an_image(alice: ServerConnection) -> None:
    error = refused(alice, UploadImage(id=0, filename="x.jpg", data=b"<html>" + PAYLOAD + fresh()))
    assert error.code is ErrorCode.UNSUPPORTED_IMAGE and error.details == ["not_an_image"]


# --- bombs ---------------------------------------------------------------------------------------


def _gif_declaring(width: int, height: int) -> bytes:
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return b"GIF89a" + screen + descriptor + b"\x02\x02\x44\x01\x00;"


def _webp_declaring(width: int, height: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00"
    vp8x += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def _bmp_declaring(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


@pytest.mark.parametrize(
    "data",
    [_gif_declaring(65535, 65535), _webp_declaring(16384, 16384), _bmp_declaring(60000, 60000)],
    ids=["gif-65535x65535", "webp-16384x16384", "bmp-60000x60000"],
)
def test_huge_dimension_headers_are_refused_before_decoding(
    server: ServerProcess, alice: ServerConnection, data: bytes
) -> None:
    error = refused(alice, UploadImage(id=0, filename="bomb", data=data))
    assert error.code in (ErrorCode.TOO_LARGE, ErrorCode.UNSUPPORTED_IMAGE), error
    assert len(error.message) > 20
    assert server.process is not None and server.process.poll() is None


# --- oversized texts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("title", "t" * 201, "$.title"),
        ("description", "d" * 5001, "$.description"),
        ("tags", ["x" * 65], "$.tags[0]"),
        ("tags", [f"t{n}" for n in range(65)], "$.tags"),
    ],
)
def test_oversized_texts_are_refused_at_the_wire_with_the_field(
    alice: ServerConnection, field: str, value: object, where: str
) -> None:
    upload = UploadImage(id=0, filename="x.jpg", data=fresh())
    setattr(upload, field, value)  # unchecked, the way a hostile client could send it
    error = refused(alice, upload)
    assert error.code is ErrorCode.BAD_REQUEST and where in error.message, error
    up = alice.call(UploadImage(id=0, filename="x.jpg", data=fresh()), Uploaded)
    update = UpdateImage(id=0, image_id=up.image_id)
    setattr(update, "add_tags" if field == "tags" else field, value)
    error = refused(alice, update)
    assert error.code is ErrorCode.BAD_REQUEST and "Invalid message" in error.message


def test_oversized_search_password_and_hello_texts(alice: ServerConnection) -> None:
    assert refused(alice, TextSearch(id=0, text="s" * 501)).code is ErrorCode.BAD_REQUEST
    error = refused(alice, CreateUser(id=0, name="longpw", password="p" * 1025))
    assert error.code is ErrorCode.BAD_REQUEST and "$.password" in error.message


# --- SQL metacharacters in every text field ------------------------------------------------------


def test_sql_in_names_is_refused_by_the_name_rule_or_kept_verbatim(
    server: ServerProcess, home: Path
) -> None:
    conn = server.connect(home / "names")
    try:
        before = schema(server)
        for payload in [*SQL, NUL]:
            name = f"u{payload}"
            try:
                created = conn.call(CreateUser(id=0, name=name, password=PASSWORD), UserInfo)
            except VitrineError as exc:
                assert exc.code is ErrorCode.BAD_REQUEST, exc
                assert "3 to 32 characters" in exc.message or "Invalid message" in exc.message
                continue
            # The rule lets a few through ("u--", "u_"): they are plain names, kept as typed.
            assert created.name == name.lower()
            assert conn.call(Login(id=0, name=name, password=PASSWORD), Session).name == name
        assert schema(server) == before
    finally:
        conn.close()


def test_sql_in_passwords_is_just_a_password(server: ServerProcess, home: Path) -> None:
    conn = server.connect(home / "passwords")
    try:
        for n, payload in enumerate([*SQL[:6], SQL[10], SQL[11], NUL]):
            name, password = f"sqlpw{n}", f"pw{payload}{payload}padding"
            assert conn.call(CreateUser(id=0, name=name, password=password), UserInfo)
            assert conn.call(Login(id=0, name=name, password=password), Session).name == name
        # The payload alone is not a way in.
        error = refused(conn, Login(id=0, name="sqlpw6", password="' OR '1'='1' --"))
        assert error.code is ErrorCode.UNAUTHENTICATED
    finally:
        conn.close()


def test_sql_in_titles_descriptions_tags_and_names_is_stored_verbatim(
    server: ServerProcess, home: Path, alice: ServerConnection, bob: ServerConnection
) -> None:
    before = schema(server)
    for payload in SQL:
        title, description = f"title {payload}", f"{payload} described"
        filename = f"file{payload}.jpg".replace("/", "").replace("\\", "")
        tag = f"t{payload}"
        try:
            up = alice.call(
                UploadImage(
                    id=0,
                    filename=filename,
                    data=fresh(),
                    title=title,
                    description=description,
                    tags=[tag],
                ),
                Uploaded,
            )
        except VitrineError as exc:
            # Only the tag rule may refuse (letters, digits and . & + ' - _); never the SQL.
            assert exc.code is ErrorCode.BAD_REQUEST and "tag" in exc.message, (payload, exc)
            up = alice.call(
                UploadImage(
                    id=0, filename=filename, data=fresh(), title=title, description=description
                ),
                Uploaded,
            )
            tag = ""
        seen = bob.call(GetImage(id=0, image_id=up.image_id), ImageDetails).image
        assert (seen.title, seen.description, seen.filename) == (title, description, filename)
        if tag:
            assert seen.tags == [tag.lower()]
            frames = list(bob.stream(Browse(id=0, tags=[tag])))
            assert [i.id for f in frames for i in f.items] == [up.image_id]
        changed = alice.call(
            UpdateImage(id=0, image_id=up.image_id, title=f"{payload}!", description=payload),
            ImageUpdated,
        ).image
        assert (changed.title, changed.description) == (f"{payload}!", payload)
    assert schema(server) == before
    assert_no_server_error(server, home)


def test_nul_in_titles_and_descriptions_is_refused_clearly(alice: ServerConnection) -> None:
    for field in ("title", "description"):
        upload = UploadImage(id=0, filename="x.jpg", data=fresh(), **{field: f"a{NUL}b"})
        error = refused(alice, upload)
        assert error.code is ErrorCode.BAD_REQUEST and "control characters" in error.message


@pytest.mark.parametrize("payload", [*SQL, NUL, f"x{NUL}y"])
def test_sql_in_search_text_is_plain_text(
    server: ServerProcess, alice: ServerConnection, payload: str
) -> None:
    try:
        frames = list(alice.stream(TextSearch(id=0, text=payload)))
    except VitrineError as exc:  # a clear BAD_REQUEST when there are no words to look for
        assert exc.code is ErrorCode.BAD_REQUEST, exc
        return
    assert all(isinstance(frame, Batch) for frame in frames)


def test_sql_in_colour_specs_is_refused_by_the_parser() -> None:
    """The colour is parsed to numbers before anything is sent; on the wire it is floats."""
    for payload in [*SQL, NUL, "red'; DROP TABLE image_colours; --"]:
        with pytest.raises(ColourSpecError):
            parse_colour(payload)


def test_text_in_numeric_wire_fields_is_refused(server: ServerProcess) -> None:
    before = schema(server)
    sock = tls_socket(server)
    try:
        send_message(sock, {"type": "Hello", "id": 1, "protocol": PROTOCOL_VERSION})
        assert isinstance(read_response(sock), Welcome)
        send_message(sock, {"type": "Login", "id": 2, "name": "alice", "password": PASSWORD})
        assert isinstance(read_response(sock), Session)
        for request in (
            {"type": "ColourSearch", "id": 5, "hue": "0; DROP TABLE images"},
            {"type": "Checkout", "id": 5, "lines": [{"image_id": "1 OR 1=1", "quantity": 1}]},
            {"type": "Checkout", "id": 5, "lines": [{"image_id": 1, "quantity": "-1; --"}]},
            {"type": "GetImages", "id": 5, "image_ids": ["1) OR (1=1"]},
            {"type": "GetImage", "id": 5, "image_id": "1 UNION SELECT password_hash"},
        ):
            send_message(sock, request)
            reply = read_response(sock)
            assert isinstance(reply, Error) and reply.code is ErrorCode.BAD_REQUEST, reply
            assert reply.id == 5 and reply.message.startswith("Invalid message")
    finally:
        sock.close()
    assert schema(server) == before


def test_sql_in_cart_commands_is_refused_by_the_shell(
    server: ServerProcess, alice: ServerConnection, tmp_path: Path
) -> None:
    for command in ('add_to_cart "1\'; DROP TABLE orders; --"', 'update_cart 1 "2 OR 1=1"'):
        done = run_client(
            server,
            "login alice",
            command,
            config_dir=tmp_path / "client",
            password=PASSWORD,
        )
        assert done.returncode != 0
        assert "Traceback" not in done.stdout + done.stderr
        assert "RATE_LIMITED" not in done.stderr and "Error: argument" in done.stderr, done
    assert_no_server_error(server, tmp_path)


# --- a stolen disk or backup ---------------------------------------------------------------------


def test_a_stolen_data_dir_holds_no_password_token_or_image_bytes(
    server: ServerProcess, home: Path
) -> None:
    """What a thief of the data directory (or a backup of it) finds: Argon2id strings, token
    hashes and ciphertext; never a password, a usable resume token or a picture's bytes."""
    password = "zz-unique-password-41"
    conn = server.connect(home / "thief-victim")
    try:
        conn.call(CreateUser(id=0, name="victim41", password=password))
        token = conn.call(Login(id=0, name="victim41", password=password), Session).resume_token
        data = fresh()
        conn.call(UploadImage(id=0, filename="secret-photo.jpg", data=data, private=True))
    finally:
        conn.close()
    secrets = [password.encode(), token.encode(), data[200:264]]
    for path in server.data_dir.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for secret in secrets:
                assert secret not in content, path
