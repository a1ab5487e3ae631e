"""Settings given as `VITRINE_*` variables: a bad path is blamed on the variable, in the words
the syntax errors use, while the sentences for a typed flag stay as they were; and the model
cache is the operator's to place (`--cache-dir`, `VITRINE_CACHE_DIR`)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import WEIGHTS
from tests.servers import PYTHON, ROOT, ServerProcess
from tests.test_crash_safety import one_line_error
from util import config as cfg

needs_weights = pytest.mark.skipif(not WEIGHTS, reason="VITRINE_WEIGHTS not set")

#: Variables that would otherwise leak into the children from the developer's shell.
SETTINGS = ("VITRINE_DATA_DIR", "VITRINE_TLS_CERT", "VITRINE_TLS_KEY", "VITRINE_CA_FILE",
            "VITRINE_CONFIG_DIR", "VITRINE_CLIENT_DATA_DIR", "VITRINE_CACHE_DIR")  # fmt: skip


def run(program: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`program` run once to its end (a refused start ends at once)."""
    base = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    return subprocess.run(
        [PYTHON, str(ROOT / program), *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a directory\n")
    return path


@pytest.mark.parametrize("check", [False, True], ids=["start", "check"])
def test_a_data_dir_from_the_variable_is_blamed_on_it(a_file: Path, check: bool) -> None:
    more = ["--check"] if check else []
    done = run("server.py", "--port", "0", *more, env={"VITRINE_DATA_DIR": str(a_file)})
    assert done.returncode == 2, done.stderr
    assert one_line_error(done) == (
        f"vitrine: VITRINE_DATA_DIR={a_file} is not a directory; "
        "choose another VITRINE_DATA_DIR or --data-dir."
    )
    typed = run("server.py", "--port", "0", *more, "--data-dir", str(a_file), env={})
    assert (
        one_line_error(typed) == f"vitrine: {a_file} is not a directory; choose another --data-dir."
    )


def test_a_data_dir_that_cannot_be_made_names_the_variable(a_file: Path) -> None:
    done = run("server.py", "--port", "0", env={"VITRINE_DATA_DIR": str(a_file / "under")})
    assert done.returncode == 2, done.stderr
    assert one_line_error(done) == (
        f"vitrine: cannot use VITRINE_DATA_DIR={a_file / 'under'} as the data directory: Not a "
        "directory; choose another VITRINE_DATA_DIR or --data-dir, or fix its permissions."
    )


def test_tls_files_from_the_variables_are_blamed_on_them(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    env = {"VITRINE_TLS_CERT": str(missing), "VITRINE_TLS_KEY": str(missing)}
    done = run("server.py", "--port", "0", "--data-dir", str(tmp_path / "srv"), env=env)
    assert done.returncode == 1, done.stderr
    assert one_line_error(done) == (
        f"vitrine: cannot read the TLS certificate VITRINE_TLS_CERT={missing}: No such file or "
        "directory; check VITRINE_TLS_CERT and VITRINE_TLS_KEY."
    )
    # half from the variable, half typed: each named as it was given
    done = run("server.py", "--port", "0", "--data-dir", str(tmp_path / "srv"),
               "--tls-key", str(missing), env={"VITRINE_TLS_CERT": str(missing)})  # fmt: skip
    assert one_line_error(done).endswith("; check VITRINE_TLS_CERT and --tls-key."), done.stderr
    half = run("server.py", "--data-dir", str(tmp_path / "srv"), env={"VITRINE_TLS_KEY": "k"})
    assert half.returncode == 2
    last = half.stderr.strip().splitlines()[-1]
    assert (
        last == "server.py: error: --tls-cert and VITRINE_TLS_KEY go together: give both or neither"
    )


def test_check_names_tls_files_from_the_variables_as_a_start_does(tmp_path: Path) -> None:
    """`--check` applies the start's TLS refusals in the start's words, variables included."""
    missing = tmp_path / "missing.pem"
    env = {"VITRINE_TLS_CERT": str(missing), "VITRINE_TLS_KEY": str(missing)}
    done = run("server.py", "--check", "--data-dir", str(tmp_path / "srv"), env=env)
    assert done.returncode == 1, done.stderr
    assert (
        f"cannot read the TLS certificate VITRINE_TLS_CERT={missing}: No such file or "
        "directory; check VITRINE_TLS_CERT and VITRINE_TLS_KEY." in done.stdout
    ), done.stdout
    typed = run("server.py", "--check", "--data-dir", str(tmp_path / "srv"),
                "--tls-cert", str(missing), "--tls-key", str(missing), env={})  # fmt: skip
    assert f"cannot read the TLS certificate {missing}: No such file or directory; check " \
        "--tls-cert and --tls-key." in typed.stdout, typed.stdout  # fmt: skip


def test_a_ca_file_from_the_variable_is_blamed_on_it(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    home = ["--config-dir", str(tmp_path / "c"), "--data-dir", str(tmp_path / "d")]
    done = run("client.py", "--server", "127.0.0.1:9", *home, "whoami",
               env={"VITRINE_CA_FILE": str(missing)})  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"vitrine: cannot use VITRINE_CA_FILE={missing}: No such file or directory"
    )
    typed = run("client.py", "--server", "127.0.0.1:9", *home, "--ca-file", str(missing),
                "whoami", env={})  # fmt: skip
    assert (
        typed.stderr.strip()
        == f"vitrine: cannot use --ca-file {missing}: No such file or directory"
    )


def test_a_config_dir_from_the_variable_is_blamed_on_it(
    shared_server: ServerProcess, a_file: Path, tmp_path: Path
) -> None:
    argv = ["--server", shared_server.address, "--data-dir", str(tmp_path / "d"),
            "--trust-new-server", "whoami"]  # fmt: skip
    done = run("client.py", *argv, env={"VITRINE_CONFIG_DIR": str(a_file)})
    assert done.returncode == 2, done.stderr
    assert f"The config directory {a_file} is not a directory (is VITRINE_CONFIG_DIR a file?)" in (
        done.stderr
    )
    typed = run("client.py", "--config-dir", str(a_file), *argv, env={})
    assert "(is --config-dir a file?)" in typed.stderr, typed.stderr


def test_a_cart_folder_from_the_variable_is_blamed_on_it(
    shared_server: ServerProcess, a_file: Path, tmp_path: Path
) -> None:
    """The client's data directory is where carts are kept; one that cannot hold them is
    blamed on the setting that chose it, VITRINE_CLIENT_DATA_DIR or --data-dir."""
    config = ["--server", shared_server.address, "--config-dir", str(tmp_path / "c"),
              "--trust-new-server"]  # fmt: skip
    password = {"VITRINE_PASSWORD": "pw-for-carts-1"}
    made = run("client.py", *config, "--data-dir", str(tmp_path / "d"), "create_user carter",
               env=password)  # fmt: skip
    assert made.returncode == 0, made.stderr
    done = run("client.py", *config, "login carter", "clear_cart",
               env={**password, "VITRINE_CLIENT_DATA_DIR": str(a_file)})  # fmt: skip
    assert done.returncode != 0
    assert (
        f"(carts are kept under VITRINE_CLIENT_DATA_DIR={a_file}; choose another "
        "VITRINE_CLIENT_DATA_DIR or --data-dir)." in done.stderr
    ), done.stderr
    typed = run("client.py", *config, "--data-dir", str(a_file), "login carter", "clear_cart",
                env=password)  # fmt: skip
    assert f"(carts are kept under --data-dir {a_file}; choose another --data-dir)." in (
        typed.stderr
    ), typed.stderr


def test_a_typed_flag_wins_and_is_the_one_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit test of the mechanism: the variable is named only when its value was used."""
    monkeypatch.setenv("VITRINE_DATA_DIR", "/from/env")
    monkeypatch.setenv("VITRINE_CACHE_DIR", "/cache/env")
    parser = argparse.ArgumentParser()
    cfg.add_option(parser, "--data-dir", default="/default", type=Path, help="h")
    cfg.add_option(parser, "--cache-dir", default="/default", type=Path, help="h")
    args = parser.parse_args(["--data-dir", "/typed"])
    cfg.settle(parser, args)
    assert args.data_dir == Path("/typed") and args.cache_dir == Path("/cache/env")
    assert cfg.setting(args, "--data-dir") == cfg.Setting("--data-dir")
    assert cfg.setting(args, "--cache-dir") == cfg.Setting("--cache-dir", "VITRINE_CACHE_DIR")


def test_help_names_the_cache_dir_and_its_variable() -> None:
    done = run("server.py", "--help", env={"COLUMNS": "200"})
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    entry = text[text.rindex("--cache-dir CACHE_DIR") :].split(" --", 1)[0]
    assert "model" in entry and entry.endswith("(env VITRINE_CACHE_DIR)"), entry


def cached_models(folder: Path) -> list[Path]:
    return sorted(folder.glob("mobilenet_v2_*.tflite"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    """A server given --cache-dir, once its model is ready (converted: the folder was new)."""
    root = tmp_path_factory.mktemp("cache-flag")
    cache = root / "model-cache"
    env = {"VITRINE_CACHE_DIR": str(root / "not-this-one")}  # the flag wins
    process = ServerProcess(root / "srv", ["--cache-dir", str(cache)], env=env).start()
    try:
        process.wait_for_log("image model ready", timeout=300)
        yield process, cache
    finally:
        process.stop()


@needs_weights
def test_the_server_caches_its_model_in_cache_dir(converted: tuple[ServerProcess, Path]) -> None:
    process, cache = converted
    assert f"cache: {cache})" in process.log()
    assert len(cached_models(cache)) == 1
    assert not (cache.parent / "not-this-one").exists()


@needs_weights
def test_the_server_uses_vitrine_cache_dir(
    converted: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    """A model cached there is loaded, not converted again."""
    cache = tmp_path / "env-cache"
    cache.mkdir()
    (model,) = cached_models(converted[1])
    shutil.copy(model, cache / model.name)
    process = ServerProcess(tmp_path / "srv", env={"VITRINE_CACHE_DIR": str(cache)}).start()
    try:
        log = process.wait_for_log("image model ready", timeout=300)
    finally:
        process.stop()
    assert f"cache: {cache})" in log and "converting" not in log, log
