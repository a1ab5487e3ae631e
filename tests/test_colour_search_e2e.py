"""search_by_color end to end: the real client.py against the real server.py.

Pictures of known hue (a coloured card on white, so the backdrop is no colour), uploaded by
two users, searched by name, by hex and by degrees across 0, with privacy, deletes, filters,
batches and `more`, --json (score, match, palette), show_image's palette and every bad input.
"""

from __future__ import annotations

import colorsys
import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from shell.listing import MATCH_MARK
from tests.servers import PYTHON, ROOT, ServerProcess, create_users, json_lines, run_client
from tests.servers import LoggedInShell as Shell
from util.colour_spec import NAMES

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("colour-e2e")).start()
    create_users(process, tmp_path_factory.mktemp("accounts"), ("alice", "bob"), PASSWORD)
    yield process
    process.stop()


def card(
    hue: float, path: Path, lightness: float = 0.5, saturation: float = 0.85, share: float = 0.5
) -> Path:
    """A card of one hue covering about `share` of a white picture."""
    rgb = tuple(round(v * 255) for v in colorsys.hls_to_rgb(hue / 360, lightness, saturation))
    img = Image.new("RGB", (200, 200), (250, 250, 250))
    side = round(200 * share**0.5)
    img.paste(Image.new("RGB", (side, side), rgb), ((200 - side) // 2, (200 - side) // 2))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    path.write_bytes(buf.getvalue())
    return path


def upload(shell: Shell, path: Path, *flags: str) -> int:
    code, out, err = shell(f'add_image "{path}" --json ' + " ".join(flags))
    assert code == 0, err
    (row,) = json_lines(out)
    return int(row["id"])


@pytest.fixture(scope="module")
def shop(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """alice's public cards, her deleted one and bob's private one, all tagged e2e-colour."""
    folder = tmp_path_factory.mktemp("cards")
    alice = Shell(server, "alice", tmp_path_factory.mktemp("alice"))
    bob = Shell(server, "bob", tmp_path_factory.mktemp("bob"))
    ids = {
        "red350": upload(
            alice,
            card(350, folder / "r350.png", lightness=0.42),
            "--tags e2e-colour,warm",
            "--quantity 2",
        ),
        "red10": upload(alice, card(10, folder / "r10.png", share=0.3), "--tags e2e-colour"),
        "green": upload(alice, card(120, folder / "g.png"), "--tags e2e-colour", "--quantity 1"),
        "blue": upload(
            alice, card(210, folder / "b.png", lightness=0.56, saturation=1.0), "--tags e2e-colour"
        ),
        "grey": upload(alice, card(0, folder / "grey.png", saturation=0.0), "--tags e2e-colour"),
        "deleted": upload(alice, card(355, folder / "del.png"), "--tags e2e-colour"),
        "private": upload(bob, card(5, folder / "priv.png"), "--tags e2e-colour", "--private"),
    }
    code, _, err = alice(f"delete_image {ids['deleted']}")
    assert code == 0, err
    return ids


@pytest.fixture
def alice(server: ServerProcess, tmp_path: Path) -> Shell:
    return Shell(server, "alice", tmp_path / "alice")


@pytest.fixture
def bob(server: ServerProcess, tmp_path: Path) -> Shell:
    return Shell(server, "bob", tmp_path / "bob")


def found(shell: Shell, command: str) -> list[dict]:
    code, out, err = shell(command + " --tags e2e-colour --json")
    assert code == 0, err
    return json_lines(out)


def test_by_name_across_zero_degrees(alice: Shell, shop: dict[str, int]) -> None:
    rows = found(alice, "search_by_color red")
    assert [r["id"] for r in rows] == [shop["red350"], shop["red10"]]  # the larger card first
    first = rows[0]
    assert first["score"] > rows[1]["score"]
    assert first["match"]["share"] == pytest.approx(0.5, abs=0.05)
    assert abs((first["match"]["hue"] - 350 + 180) % 360 - 180) <= 3
    assert first["match"]["hex"].startswith("#")
    assert first["palette"] and first["palette"][0]["hex"] == first["match"]["hex"]


def test_by_degrees_across_zero(alice: Shell, shop: dict[str, int]) -> None:
    for hue in ("0", "360", "355"):
        ids = {r["id"] for r in found(alice, f"search_by_color {hue}")}
        assert ids == {shop["red350"], shop["red10"]}, hue
    assert {r["id"] for r in found(alice, "search_by_color 120")} == {shop["green"]}
    assert found(alice, "search_by_color 10 --tolerance 5") == [
        r for r in found(alice, "search_by_color 10 --tolerance 5") if r["id"] == shop["red10"]
    ]
    narrow = {r["id"] for r in found(alice, "search_by_color 10 --tolerance 5")}
    assert narrow == {shop["red10"]}


def test_by_hex(alice: Shell, shop: dict[str, int]) -> None:
    assert [r["id"] for r in found(alice, "search_by_color #1e90ff")] == [shop["blue"]]
    assert [r["id"] for r in found(alice, "search_by_color #1E90FF")] == [shop["blue"]]
    # the same hue far lighter is not that colour
    assert found(alice, "search_by_color #cfe8ff") == []


def test_privacy_and_deletes(alice: Shell, bob: Shell, shop: dict[str, int]) -> None:
    for shell, mine in ((alice, False), (bob, True)):
        ids = {r["id"] for r in found(shell, "search_by_color red")}
        assert shop["deleted"] not in ids
        assert (shop["private"] in ids) == mine
    assert shop["grey"] not in {r["id"] for r in found(alice, "search_by_color 0 --tolerance 180")}


def test_filters(alice: Shell, shop: dict[str, int]) -> None:
    code, out, err = alice("search_by_color red --tags e2e-colour,warm --json")
    assert code == 0, err
    assert [r["id"] for r in json_lines(out)] == [shop["red350"]]
    code, out, err = alice("search_by_color red --tags e2e-colour --in-stock --json")
    assert code == 0, err
    assert [r["id"] for r in json_lines(out)] == [shop["red350"]]
    code, out, err = alice("search_by_color red --tags no-such-tag-anywhere --json")
    assert code == 0, err
    assert json_lines(out) == [] and "Nothing found" in err
    # a larger minimum share leaves out the smaller card
    code, out, err = alice("search_by_color red --tags e2e-colour --min-share 0.4 --json")
    assert [r["id"] for r in json_lines(out)] == [shop["red350"]]
    # written as listings write them: a share as a percentage, a hue with its degree sign
    code, out, err = alice(
        "search_by_color 355° --tolerance 20° --tags e2e-colour --min-share 40% --json"
    )
    assert code == 0, err
    assert [r["id"] for r in json_lines(out)] == [shop["red350"]]


def test_table_batches_and_more(alice: Shell, shop: dict[str, int]) -> None:
    code, out, err = alice("search_by_color red --tags e2e-colour --no-images")
    assert code == 0, err
    assert "score" in out and "match" in out
    assert "#" in out and "%" in out  # the matching colour's hex and share
    assert f"% {MATCH_MARK}" in out  # and the colour that matched is marked in the palette
    assert "End of images of red" in out
    code, out, err = alice("search_by_color 360 --tags e2e-colour --no-images")
    assert code == 0 and "End of images of hue 0°" in out, out  # not "images of 360"
    code, out, err = alice(
        "search_by_color red --tags e2e-colour --batch 1 --json", "more --json", "more --json"
    )
    assert code == 0, err
    assert [r["id"] for r in json_lines(out)] == [shop["red350"], shop["red10"]]
    assert "type more for up to 1 more" in err and "Already at the end" in err


def test_show_image_json_has_the_palette(alice: Shell, shop: dict[str, int]) -> None:
    code, out, err = alice(f"show_image {shop['green']} --json --no-images")
    assert code == 0, err
    (row,) = json_lines(out)
    (colour,) = row["palette"]
    assert abs(colour["hue"] - 120) <= 3 and colour["share"] == pytest.approx(0.5, abs=0.05)
    code, out, err = alice(f"show_image {shop['green']} --no-images")
    assert code == 0 and f"{colour['hex']} {round(colour['share'] * 100)}%" in out
    # the hex shown finds its image even with no tolerance at all
    exact = found(alice, f"search_by_color '{colour['hex']}' --tolerance 0")
    assert shop["green"] in [r["id"] for r in exact]
    code, out, err = alice(f"show_image {shop['red350']} --json --no-images")
    (red,) = json_lines(out)[0]["palette"]
    assert red["hue"] != round(red["hue"])  # 350.11: a hue that 8 bits do not make exact
    exact = found(alice, f"search_by_color '{red['hex']}' --tolerance 0")
    assert shop["red350"] in [r["id"] for r in exact]


@pytest.mark.parametrize(
    ("command", "says"),
    [
        ("search_by_color 400", "hue 400 is out of range"),
        ("search_by_color -5", "out of range"),
        ("search_by_color -inf", "unknown colour '-inf'"),
        ("search_by_color -.5", "out of range"),
        ("search_by_color teal", "unknown colour 'teal'"),
        ("search_by_color #12345", "malformed hex colour"),
        ("search_by_color #zzzzzz", "malformed hex colour"),
        ("search_by_color #808080", "#808080 is a grey (or white or black) and has no hue"),
        ("search_by_color red --tolerance -3", "tolerance must be a number of degrees"),
        (
            "search_by_color red --tolerance -5°",
            "tolerance must be a number of degrees, 0 or more "
            "(180 or more takes any hue), not -5°.",
        ),
        (
            "search_by_color red --min-share 150%",
            "min-share must be a fraction of the picture from 0 to 1 (or 0% to 100%), not 150%.",
        ),
        ("search_by_color red --tolerance -1e3", "tolerance must be a number of degrees"),
        ("search_by_color red --tolerance wide", "tolerance must be a number"),
        ("search_by_color red --min-share 2", "min-share must be a fraction"),
        ("search_by_color red --min-share 140%", "min-share must be a fraction"),
        ("search_by_color red --min-share lots%", "min-share must be a number"),
    ],
)
def test_bad_input_says_what_is_accepted(alice: Shell, command: str, says: str) -> None:
    code, _out, err = alice(command)
    assert code != 0
    assert says in err, err
    if "tolerance" not in says and "min-share" not in says:
        assert f"a name ({', '.join(NAMES)})" in err
        assert "#rrggbb" in err and "0 to 360" in err


def test_a_server_without_colours_stores_and_finds_everything_else(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """`--no-colours`: uploads keep an empty palette and colour search answers UNAVAILABLE (it
    would miss every image), but the image is stored, shown and browsable like any other."""
    process = ServerProcess(tmp_path_factory.mktemp("no-colours"), ["--no-colours"]).start()
    try:
        home = tmp_path_factory.mktemp("no-colours-home")
        done = run_client(process, "create_user carol", config_dir=home, password=PASSWORD)
        assert done.returncode == 0, done.stderr
        carol = Shell(process, "carol", home)
        image_id = upload(carol, card(120, home / "g.png"), "--tags plain")
        code, out, err = carol(f"show_image {image_id} --json --no-images")
        assert code == 0, err
        (row,) = json_lines(out)
        assert row["palette"] == []  # present and empty, so scripts need no KeyError guard
        code, out, err = carol("search_by_color green --tags plain")
        assert code != 0 and "UNAVAILABLE" in err and "--no-colours" in err, err
        code, out, err = carol("browse_by_tags plain --json --no-images")
        assert code == 0, err
        assert [r["id"] for r in json_lines(out)] == [image_id]
    finally:
        process.stop()


def shown_palette(shell: Shell, image_id: int) -> list[dict]:
    """The palette `show_image --json` gives, as a script reads it."""
    code, out, err = shell(f"show_image {image_id} --json --no-images")
    assert code == 0, err
    (row,) = json_lines(out)
    return row["palette"]


def palette_hues(shell: Shell, image_id: int) -> list[int]:
    return [round(c["hue"]) for c in shown_palette(shell, image_id)]


def test_images_stored_under_no_colours_get_their_colours_at_the_next_start(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A shop that turns colours on finds what it uploaded meanwhile: the next start computes
    the missing colours in the background. A grey picture is computed once, finds none, and is
    not waited for again; another owner's upload of the same bytes gets the colours too (copied
    once computed, or extracted when it comes first)."""
    home = tmp_path_factory.mktemp("colours-later-home")
    data_dir = tmp_path_factory.mktemp("colours-later")
    process = ServerProcess(data_dir, ["--no-colours"]).start()
    try:
        green_card, grey_card = card(120, home / "g.png"), card(0, home / "grey.png", saturation=0)
        create_users(process, home, ("carol", "dave"), PASSWORD)
        carol, dave = Shell(process, "carol", home), Shell(process, "dave", home)
        green = upload(carol, green_card, "--tags e2e-colour")
        grey = upload(carol, grey_card, "--tags e2e-colour")
        # not "no dominant colours": none were computed
        code, out, err = carol(f"show_image {green} --no-images")
        assert code == 0 and "not computed yet" in out and "no dominant colours" not in out, out
        code, out, err = carol(f"show_image {green} --json --no-images")
        assert code == 0, err
        assert json_lines(out)[0]["colours_pending"] is True, out
        process.stop()
        checked = subprocess.run(
            [PYTHON, "server.py", "--check", "--data-dir", str(data_dir)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "live images without colours computed: 2" in checked.stdout, checked.stdout

        process.extra_args = []
        process.restart()
        copied = upload(dave, green_card, "--tags e2e-colour")
        assert palette_hues(dave, copied) == [120]
        process.wait_for_log("colour backfill done: 2 images", timeout=60)
        assert palette_hues(carol, green) == [120]
        assert palette_hues(carol, grey) == []
        code, out, err = carol(f"show_image {grey} --json --no-images")
        assert code == 0, err
        assert json_lines(out)[0]["colours_pending"] is False, out  # computed: it has none
        assert {r["id"] for r in found(carol, "search_by_color green")} == {green, copied}

        process.stop()
        process.restart()
        log = process.settled_log(home)
        assert "colour backfill" not in log, log  # nothing waits: the grey one was done
    finally:
        process.stop()


def test_a_tolerance_of_minus_zero_reads_as_zero(alice: Shell, shop: dict[str, int]) -> None:
    code, out, err = alice("search_by_color red --tolerance -0 --tags e2e-colour --no-images")
    assert code == 0, err
    assert "within 0°" in out and "-0°" not in out, out
