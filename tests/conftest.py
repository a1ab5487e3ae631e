"""Shared fixtures: real servers in temporary directories."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.servers import ServerProcess

# No per-example deadline anywhere: CI runs a thousand tests on two cores beside real servers,
# and one example starved for 200 ms would fail a property that holds.
settings.register_profile("vitrine", deadline=None)
settings.load_profile("vitrine")

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
WEIGHTS = os.environ.get("VITRINE_WEIGHTS")
DATASET = SHARED / "datasets" / "clothing-small"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A fresh server of its own, for tests that restart, kill or exhaust it."""
    process = ServerProcess(tmp_path / "server").start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the many tests that only need a working server and their own users."""
    process = ServerProcess(tmp_path_factory.mktemp("shared-server")).start()
    yield process
    process.stop()


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    path = tmp_path / "client"
    path.mkdir()
    return path
