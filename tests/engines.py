"""A real server's search-by-image engine, ready as its thread leaves it before a backfill."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from service.app import close_services, open_services
from service.context import ServerConfig
from service.similarity import SimilarityEngine, engine_of
from tests.rows import add_users
from tests.test_similarity_server import weights


@contextlib.contextmanager
def ready_engine(data_dir: Path) -> Iterator[SimilarityEngine]:
    """Services on `data_dir` with the model loaded and the index open, and a user alice, so
    that a test can run the backfill's passes itself, one at a time, instead of racing its
    thread."""
    services = open_services(ServerConfig(data_dir=data_dir, weights=weights()))
    engine = engine_of(services)
    assert engine is not None
    try:
        engine._load_model()
        engine._open_index()
        engine.state = "ready"
        add_users(services.db.conn, "alice")
        yield engine
    finally:
        engine.stop()
        close_services(services)
