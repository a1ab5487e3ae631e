"""Why search by image is unavailable, as the client is told it (QA, session 22).

A server given VITRINE_WEIGHTS that names a missing or corrupt file answered exactly as one
given no weights at all: "it has no image model. Start the server with VITRINE_WEIGHTS=...",
which sent an operator who had set it looking for a setting they had made. Now the sentence
says the weights given could not be loaded and points at the server's log, which names the
file and the cause; the client is still told no path and no exception (docs/security.md: any
logged-in user can ask). Real servers, real TLS; the corrupt file is a few random bytes.
A failure that is not the file's (a broken TensorFlow) blames neither the file nor the setting,
and with no weights given only a failed download gets the advice to set them (review).
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
import urllib.error
from pathlib import Path

import pytest

from protocol.catalog import ImageSearch
from protocol.errors import ErrorCode, VitrineError
from service.similarity import KERAS_WEIGHTS_NAME, cached_weights_file, model_failure
from tests.servers import ROOT, ServerProcess, run_client
from tests.test_images_server import error_of, upload
from tests.test_similarity_server import MISSING_WEIGHTS, READY_TIMEOUT_S, photo, weights

PASSWORD = "correct horse battery"


def settled_error(process: ServerProcess, home: Path) -> VitrineError:
    """The UNAVAILABLE a search by image gets once the model's load has failed (a corrupt file
    takes TensorFlow's import to find out; until then the answer is "still loading")."""
    conn = process.user_connection(home, "carol", PASSWORD)
    try:
        upload(conn, photo(7))  # uploads work without a model
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            error = error_of(conn, ImageSearch(id=0, data=photo(7)))
            assert error.code == ErrorCode.UNAVAILABLE, error
            if "still loading" not in error.message:
                return error
            assert time.monotonic() < deadline, process.log()
            time.sleep(0.5)
    finally:
        conn.close()


def corrupt_weights(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "broken.weights.h5"
    path.write_bytes(os.urandom(64))
    return str(path)


@pytest.mark.parametrize("kind", ["missing", "corrupt"])
def test_weights_given_but_unloadable_are_told_apart_from_none(kind: str, tmp_path: Path) -> None:
    weights = MISSING_WEIGHTS if kind == "missing" else corrupt_weights(tmp_path / "w")
    env = {"VITRINE_WEIGHTS": weights, "VITRINE_CACHE_DIR": str(tmp_path / "cache")}
    process = ServerProcess(tmp_path / "srv", env=env).start()
    try:
        message = settled_error(process, tmp_path / "c").message
        assert "could not be loaded" in message and "server's log says why" in message, message
        assert "VITRINE_WEIGHTS" in message and "--weights" in message, message
        assert "it has no image model" not in message, message
        # the file and the exception are the operator's, in the log; the user sees neither
        assert weights not in message and "broken" not in message, message
        assert "Error" not in message and "signature" not in message, message
    finally:
        process.stop()
    log = process.log()
    assert "search by image is unavailable" in log
    assert weights in log
    cause = "FileNotFoundError" if kind == "missing" else "OSError"
    assert cause in log, log
    # the log's advice fits too: not "start the server with VITRINE_WEIGHTS" to one who did
    assert "could not be loaded" in log and "Start the server with VITRINE_WEIGHTS" not in log


def test_the_shell_shows_the_sentence_for_a_corrupt_file(tmp_path: Path) -> None:
    weights = corrupt_weights(tmp_path / "w")
    env = {"VITRINE_WEIGHTS": weights, "VITRINE_CACHE_DIR": str(tmp_path / "cache")}
    process = ServerProcess(tmp_path / "srv", env=env).start()
    try:
        settled_error(process, tmp_path / "c")
        query = tmp_path / "q.jpg"
        query.write_bytes(photo(8))
        done = run_client(
            process, "login carol", f'search_by_image "{query}"',
            config_dir=tmp_path / "c", password=PASSWORD,
        )  # fmt: skip
        assert done.returncode != 0
        assert "Error (UNAVAILABLE)" in done.stderr and "could not be loaded" in done.stderr
        assert weights not in done.stderr + done.stdout
    finally:
        process.stop()


def offline(tmp_path: Path) -> dict[str, str]:
    """No weights given (empty counts as unset), and every download through a proxy on a
    closed port: what a server without internet access meets."""
    return {
        "VITRINE_WEIGHTS": "",
        "VITRINE_CACHE_DIR": str(tmp_path / "cache"),
        "KERAS_HOME": str(tmp_path / "keras"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
        "NO_PROXY": "",
        "no_proxy": "",
    }


def test_no_weights_configured_keeps_the_advice_to_set_them(tmp_path: Path) -> None:
    """Keras' own download is tried, which cannot succeed offline, and the sentence still says
    how to provide weights."""
    process = ServerProcess(tmp_path / "srv", env=offline(tmp_path)).start()
    try:
        message = settled_error(process, tmp_path / "c").message
        assert "it has no image model" in message and "VITRINE_WEIGHTS=" in message, message
        assert "could not be loaded" not in message, message
    finally:
        assert process.stop() == 0
    log = process.log()
    assert "Start the server with VITRINE_WEIGHTS" in log
    # what Keras' get_file raises offline, which `model_failure` recognises
    assert "search by image is unavailable: Exception: URL fetch failure on https://" in log, log


def broken_tensorflow(folder: Path) -> str:
    """A directory to put first on PYTHONPATH whose `tensorflow` fails to import as a broken
    installation does (a missing shared library): the weights file is good, TensorFlow is not."""
    package = folder / "tensorflow"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        'raise ImportError("libtensorflow_framework.so.2: cannot open shared object file")\n'
    )
    return str(folder)


def with_a_broken_tensorflow(tmp_path: Path, env: dict[str, str]) -> tuple[str, str]:
    """The answer to search by image, and the log, of a server (with `env`) whose TensorFlow
    import fails: the neutral sentence, whatever was given."""
    env = {**env, "PYTHONPATH": os.pathsep.join([broken_tensorflow(tmp_path / "py"), str(ROOT)])}
    process = ServerProcess(tmp_path / "srv", env=env).start()
    try:
        message = settled_error(process, tmp_path / "c").message
    finally:
        process.stop()
    log = process.log()
    assert "the image model failed to load" in message, message
    assert "server's log says why" in message, message
    assert "search by image is unavailable" in log and "libtensorflow_framework" in log, log
    assert "The image model failed to load" in log, log
    return message, log


def test_a_model_that_fails_for_another_reason_does_not_blame_the_weights(
    tmp_path: Path,
) -> None:
    """Until session 22's review every failure with weights given was the file's: a broken
    TensorFlow got "fix or replace that file", sending the operator to a file that is fine."""
    env = {
        "VITRINE_WEIGHTS": weights(),
        "VITRINE_CACHE_DIR": str(tmp_path / "cache"),  # empty: the model must be converted
    }
    message, log = with_a_broken_tensorflow(tmp_path, env)
    assert "could not be loaded" not in message and "replace" not in message, message
    assert "VITRINE_WEIGHTS" not in message, message
    assert "fix or replace" not in log and "Start the server with VITRINE_WEIGHTS" not in log


def test_with_no_weights_a_failure_other_than_the_download_does_not_ask_for_them(
    tmp_path: Path,
) -> None:
    """Review (session 22): with no weights given every failure got "Start the server with
    VITRINE_WEIGHTS ... or give it internet access", and no traceback for an ImportError. A
    broken TensorFlow is neither cured by weights nor by a network."""
    message, log = with_a_broken_tensorflow(tmp_path, offline(tmp_path))
    assert "VITRINE_WEIGHTS" not in message and "internet" not in message, message
    assert "it has no image model" not in message, message
    assert "Traceback" in log, log  # the cause is not the operator's setting: show where
    assert "Start the server with VITRINE_WEIGHTS" not in log, log


def keras_fetch_failure() -> Exception:
    """Shaped as keras.utils.get_file raises it offline: a bare Exception raised inside its
    `except urllib.error.URLError`, so the URLError is only its context."""
    try:
        try:
            raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
        except urllib.error.URLError as e:
            # as Keras raises it: no `from`, so the URLError is the context, not the cause
            raise Exception(f"URL fetch failure on https://x/w.h5: {e.errno} -- {e.reason}")  # noqa: B904
    except Exception as exc:
        return exc
    raise AssertionError("unreachable")


def wrapped(exc: BaseException) -> RuntimeError:
    """`exc` as the cause of another exception, as a library re-raising it would chain it."""
    outer = RuntimeError("could not build the model")
    outer.__cause__ = exc
    return outer


@pytest.mark.parametrize(
    ("exc", "with_file", "without"),
    [
        (FileNotFoundError("model weights not found: /w.weights.h5"), "weights file", "other"),
        (
            OSError("Unable to synchronously open file (file signature not found)"),
            "weights file",
            "other",
        ),
        (PermissionError(13, "Permission denied", "/w.weights.h5"), "weights file", "other"),
        (ValueError("A total of 104 objects could not be loaded."), "weights file", "other"),
        (OSError(28, "No space left on device", "/cache/model.tflite"), "other", "other"),
        (ImportError("libtensorflow_framework.so.2: cannot open shared object"), "other", "other"),
        (MemoryError(), "other", "other"),
        (TypeError("unexpected keyword argument"), "other", "other"),
        # the download's own failures, which only a run without weights makes
        (keras_fetch_failure(), "other", "download"),
        (wrapped(keras_fetch_failure()), "other", "download"),
        (urllib.error.URLError("no host"), "weights file", "download"),
        (ConnectionResetError(104, "Connection reset by peer"), "weights file", "download"),
        (TimeoutError("The read operation timed out"), "weights file", "download"),
    ],
)
def test_only_failures_about_the_file_or_the_download_are_blamed_on_them(
    exc: BaseException, with_file: str, without: str
) -> None:
    """The exceptions are those measured with real files and offline (see `model_failure`).
    (An OSError with no file named is taken for the weights file's when one was given: h5py's
    own carry none; with weights given there is no download.)"""
    assert model_failure(exc, "/w.weights.h5") == with_file
    assert model_failure(exc, None) == without


def chained(*links: BaseException) -> BaseException:
    """``links[0]`` with each next one as the context of the one before, as nested handlers
    chain them (``links[0]`` raised while handling ``links[1]``, and so on)."""
    for outer, inner in itertools.pairwise(links):
        outer.__context__ = inner
    return links[0]


@pytest.mark.parametrize(
    "exc",
    [
        # a broken pipe or a timeout two links down is not the download's (session 22's
        # second review: the whole chain was looked at)
        chained(RuntimeError("model"), ValueError("bad"), BrokenPipeError(32, "Broken pipe")),
        chained(RuntimeError("model"), KeyError("x"), TimeoutError("timed out")),
        # Keras' words without the URLError it raises them for
        Exception("URL fetch failure on https://x/w.h5 is what the log said"),
    ],
)
def test_a_network_error_far_from_the_download_is_not_the_download(exc: BaseException) -> None:
    assert model_failure(exc, None) == "other"


def h5py_truncated(path: Path) -> OSError:
    """What h5py raises for a file cut short, measured: no filename, no path in the text."""
    import h5py

    try:
        h5py.File(path, "r")
    except OSError as exc:
        assert exc.filename is None and str(path) not in str(exc), exc
        return exc
    raise AssertionError(f"{path} opened")


def truncated_download(keras_home: Path) -> Path:
    """A download of the ImageNet weights killed midway: Keras' cache holds the first 100 KB
    under the final name, which it trusts at every later start."""
    path = keras_home / "models" / KERAS_WEIGHTS_NAME
    path.parent.mkdir(parents=True)
    with open(weights(), "rb") as f:
        path.write_bytes(f.read(100_000))
    return path


def test_a_damaged_cached_download_is_told_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Session 22's second review: h5py's "truncated file" for Keras' cached download was
    "the log says why", with no word of the file to delete."""
    keras_home = tmp_path / "keras"
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    elsewhere = tmp_path / "elsewhere.h5"
    with open(weights(), "rb") as f:
        elsewhere.write_bytes(f.read(100_000))
    # no cached download: the same failure is not the cache's
    assert cached_weights_file() is None
    assert model_failure(h5py_truncated(elsewhere), None) == "other"

    cached = truncated_download(keras_home)
    exc = h5py_truncated(cached)
    assert cached_weights_file() == str(cached.resolve())
    assert model_failure(exc, None) == "cached download"
    assert model_failure(exc, "/w.weights.h5") == "weights file"  # given: the file's
    # Keras' ValueError for a file of other weights
    other = ValueError(f"Layer count mismatch when loading weights from file {cached}.")
    assert model_failure(other, None) == "cached download"
    # not a failure about a file at all: a broken TensorFlow is not the cache's
    assert model_failure(ImportError("libtensorflow_framework.so.2"), None) == "other"
    # a whole download is not blamed for an OSError of the conversion (a full /tmp) or a
    # ValueError of a shape check: deleting it on our word would cost a download for nothing
    shutil.copyfile(weights(), cached)
    assert model_failure(OSError(28, "No space left on device"), None) == "other"
    assert model_failure(ValueError("unexpected embedding shape"), None) == "other"


def test_a_server_with_a_truncated_cached_download_says_to_delete_it(tmp_path: Path) -> None:
    """No VITRINE_WEIGHTS, offline, HOME holding what a killed download leaves."""
    home = tmp_path / "home"
    cached = truncated_download(home / ".keras")
    env = {**offline(tmp_path), "HOME": str(home)}
    del env["KERAS_HOME"]
    process = ServerProcess(tmp_path / "srv", env=env).start()
    try:
        message = settled_error(process, tmp_path / "c").message
        assert str(cached) not in message and ".keras" not in message, message
        assert "the model weights Keras downloaded earlier are damaged" in message, message
        assert "internet" not in message, message  # Keras would trust the partial file again
    finally:
        process.stop()
    log = process.log()
    assert "truncated file" in log, log
    assert f"The ImageNet weights Keras downloaded earlier, {cached}, are damaged" in log, log
    assert "delete that file" in log and "VITRINE_WEIGHTS=" in log, log
