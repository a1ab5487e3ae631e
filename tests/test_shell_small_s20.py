"""Two small shell faults: `login -bad` refused with argparse's "required" instead of the
sentence create_user gives, and the client's data directories (which name the accounts used on
each server) created readable by every local user. Real server, real client.py processes.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ROOT, ServerProcess, client_argv, run_client
from tests.test_images_server import jpeg, upload

PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("s20-small-server")).start()
    process.user_connection(tmp_path_factory.mktemp("s20-small-admin"), "admin", PASSWORD).close()
    yield process
    process.stop()


# --- login with a dashed name ---------------------------------------------------------------------


def test_login_with_a_dashed_name_says_a_name_cannot_start_with_a_dash(
    shop: ServerProcess, tmp_path: Path
) -> None:
    """No password in the environment and no terminal: had the name got through, asking for
    the password would fail and say so."""
    done = run_client(shop, "login -bad", config_dir=tmp_path / "client")
    assert done.returncode == 1, done
    said = " ".join(done.stderr.split())
    assert "login has no option -bad, and a name cannot start with '-'" in said, said
    assert "required" not in said and "password" not in said.lower(), said
    assert "Traceback" not in done.stdout + done.stderr


def test_login_after_double_dash_still_gets_the_name_rule(
    shop: ServerProcess, tmp_path: Path
) -> None:
    done = run_client(shop, "login -- -bad", config_dir=tmp_path / "client")
    assert done.returncode == 1, done
    assert "Invalid user name" in done.stderr and "password" not in done.stderr.lower()


def test_login_with_a_good_name_still_logs_in(shop: ServerProcess, tmp_path: Path) -> None:
    done = run_client(shop, "login admin", config_dir=tmp_path / "client", password=PASSWORD)
    assert done.returncode == 0, done
    assert "Logged in as admin" in done.stdout + done.stderr


# --- owner-only data directories ------------------------------------------------------------------


def client_with_umask_022(shop: ServerProcess, config_dir: Path, data_dir: Path, *commands: str):
    """client.py as a user with the usual umask, under which a plain mkdir gives 0755."""
    env = {**os.environ, "VITRINE_PASSWORD": PASSWORD}
    return subprocess.run(
        client_argv(shop, config_dir, *commands, data_dir=data_dir),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        umask=0o022,
    )


def modes(top: Path) -> dict[str, int]:
    """Every directory and file under `top` (itself included), relative name -> permission bits."""
    found = {".": top.stat().st_mode & 0o777}
    for path in top.rglob("*"):
        found[str(path.relative_to(top))] = path.stat().st_mode & 0o777
    return found


@pytest.fixture(scope="module")
def image_for_sale(shop: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> int:
    seller = shop.user_connection(tmp_path_factory.mktemp("s20-small-seller"), "seller", PASSWORD)
    image = upload(seller, jpeg(8101), title="For sale", quantity=5, price_cents=250).image_id
    seller.close()
    return image


def test_every_directory_a_fresh_client_makes_is_owner_only(
    shop: ServerProcess, tmp_path: Path, image_for_sale: int
) -> None:
    """Levels missing above the data and config directories too (as XDG asks, 0700): a 0755
    `carts/<server>/` let any local user list which accounts are used on which server."""
    shop.user_connection(tmp_path / "made", "buyer", PASSWORD).close()
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    data_dir, config_dir = home / "share" / "vitrine" / "client", home / "config" / "vitrine"
    done = client_with_umask_022(
        shop, config_dir, data_dir, "login buyer", f"add_to_cart {image_for_sale}"
    )
    assert done.returncode == 0, done
    cart = data_dir / "carts"
    (server_dir,) = cart.iterdir()
    assert (server_dir / "buyer.json").is_file()
    made = modes(home)
    del made["."]  # the test's own
    directories = {name for name in made if (home / name).is_dir()}
    assert {"share", "share/vitrine", "config", "config/vitrine"} <= directories
    assert {name: made[name] for name in directories} == dict.fromkeys(directories, 0o700)
    files = set(made) - directories
    assert {name: made[name] for name in files} == dict.fromkeys(files, 0o600)


def test_loose_cart_directories_left_by_an_older_client_are_tightened(
    shop: ServerProcess, tmp_path: Path, image_for_sale: int
) -> None:
    """The carts folder is Vitrine's own, so it is made owner-only again; the data directory a
    person named with --data-dir is theirs and keeps its mode."""
    shop.user_connection(tmp_path / "made", "buyer2", PASSWORD).close()
    data_dir, config_dir = tmp_path / "data", tmp_path / "config"
    done = client_with_umask_022(shop, config_dir, data_dir, "login buyer2", "view_cart")
    assert done.returncode == 0, done
    (server_dir,) = (data_dir / "carts").iterdir()
    data_dir.chmod(0o755)
    (data_dir / "carts").chmod(0o755)
    server_dir.chmod(0o755)
    done = client_with_umask_022(
        shop, config_dir, data_dir, "login buyer2", f"add_to_cart {image_for_sale}"
    )
    assert done.returncode == 0, done
    assert (data_dir / "carts").stat().st_mode & 0o777 == 0o700
    assert server_dir.stat().st_mode & 0o777 == 0o700
    assert data_dir.stat().st_mode & 0o777 == 0o755
