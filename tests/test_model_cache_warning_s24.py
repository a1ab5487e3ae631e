"""A model cache that cannot be used is said once, by the model, naming the setting (session 24).

The server used to try the cache folder at start, to warn naming `VITRINE_CACHE_DIR` or
`--cache-dir`, and the model warned again when it could not write the converted file there,
naming only the path: two WARNING lines for one problem. Now only the model, which alone knows
whether it needs to write at all, warns, in the words of the setting that gave the path; search
by image still works (the model runs from memory). Real servers, real TLS, the real model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from models.embeddings import Embedder, cached_model_path, weights_key
from protocol.catalog import Filters
from tests.servers import ServerProcess
from tests.test_images_server import unique, upload
from tests.test_similarity_server import READY_TIMEOUT_S, photo, search, wait_until_ready, weights
from util import config as cfg

PASSWORD = "correct horse battery"


def warnings_about(log: str, text: str) -> list[str]:
    return [line for line in log.splitlines() if " WARNING " in line and text in line]


def search_finds_its_upload(process: ServerProcess, home: Path) -> None:
    conn = process.user_connection(home, unique("cache"), PASSWORD)
    try:
        wait_until_ready(conn, photo(3))
        tag = unique("cached")
        image_id = upload(conn, photo(4), tags=[tag]).image_id
        items, _ = search(conn, data=photo(4), filters=Filters(tags=[tag]))
        assert [item.id for item in items] == [image_id]
    finally:
        conn.close()


@pytest.mark.parametrize("from_env", [False, True], ids=["flag", "variable"])
def test_an_unusable_cache_is_one_warning_naming_the_setting(
    tmp_path: Path, from_env: bool
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    bad = a_file / "cache"  # can never be made: a regular file is in the way
    args, env = (
        ([], {"VITRINE_CACHE_DIR": str(bad)}) if from_env else (["--cache-dir", str(bad)], {})
    )
    process = ServerProcess(tmp_path / "srv", args, env={"VITRINE_WEIGHTS": weights(), **env})
    process.start()
    try:
        search_finds_its_upload(process, tmp_path / "c")
        process.wait_for_log("image model ready", timeout=READY_TIMEOUT_S)
    finally:
        assert process.stop() == 0
    log = process.log()
    given = f"VITRINE_CACHE_DIR={bad}" if from_env else f"--cache-dir {bad}"
    lines = warnings_about(log, str(bad))
    assert len(lines) == 1, log
    assert f"cannot use {given} as the model cache (Not a directory)" in lines[0], log
    assert "search by image still works" in lines[0], lines[0]
    assert not warnings_about(log, "cannot cache the model"), log


def test_a_read_only_cache_holding_the_model_is_only_read(tmp_path: Path) -> None:
    held = cached_model_path(cfg.default_cache_dir(), weights_key(weights()))
    if not held.is_file():  # what the first server with these weights converts and keeps
        Embedder(weights(), cfg.default_cache_dir())
    cache = tmp_path / "read-only"
    cache.mkdir()
    shutil.copy(held, cache / held.name)
    cache.chmod(0o555)
    process = ServerProcess(
        tmp_path / "srv", ["--cache-dir", str(cache)], env={"VITRINE_WEIGHTS": weights()}
    ).start()
    try:
        search_finds_its_upload(process, tmp_path / "c")
        log = process.wait_for_log("image model ready", timeout=READY_TIMEOUT_S)
    finally:
        assert process.stop() == 0
        cache.chmod(0o755)
    assert "converting" not in log and "model cache" not in log, log
    assert sorted(p.name for p in cache.iterdir()) == [held.name]
