"""Shared fixtures: a real MongoDB-wire server process for the whole session.

By default the embedded server (mongoeco over SQLite) is started as a child
process on a free port.  Set ``MONGOTUNE_TEST_MONGO`` to the URL of a real
MongoDB (e.g. ``mongodb://root:secret@127.0.0.1:27017/?authSource=admin``) to
run the same tests against it; each test then uses its own database.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# the test-only objective kinds (`synthetic`) run only where this is set; every worker the tests start
# inherits it (mongotune.objectives.TEST_SWITCH)
os.environ["MONGOTUNE_TEST_OBJECTIVES"] = "1"


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory):
    """A running server: yields an object with ``.base`` (URL without a db)."""
    external = os.environ.get("MONGOTUNE_TEST_MONGO")
    if external:
        yield _External(external)
        return
    from mongotune.store.embedded import start_server

    server = start_server(tmp_path_factory.mktemp("embedded-db"), port=0)
    server.base = f"mongodb://{server.host}:{server.port}"
    try:
        yield server
    finally:
        server.stop()


class _External:
    def __init__(self, url):
        self.url = url
        self.base = url.split("?")[0].rstrip("/")
        if self.base.count("/") > 2:  # drop a database path
            self.base = self.base.rsplit("/", 1)[0]
        self.query = ("?" + url.split("?", 1)[1]) if "?" in url else ""


@pytest.fixture
def mongo_url(mongo_server):
    """``mongodb://host:port/<fresh db>`` unique to one test."""
    db = "t_" + uuid.uuid4().hex[:12]
    return f"{mongo_server.base}/{db}{getattr(mongo_server, 'query', '')}"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Keep every test's mongotune state (artifacts, logs, embedded db) in tmp.

    A command run without --mongo starts a background embedded server in that
    home (on its private Unix socket there, no TCP port); it is stopped when
    the test ends, and stops itself after 5 idle minutes should that fail.
    """
    home = tmp_path / "mongotune-home"
    monkeypatch.setenv("MONGOTUNE_HOME", str(home))
    monkeypatch.setenv("MONGOTUNE_DATA_DIR", str(tmp_path / "data-cache"))
    monkeypatch.delenv("MONGOTUNE_SERVER_PORT", raising=False)  # TCP only where a test asks for it
    monkeypatch.setenv("MONGOTUNE_SERVER_IDLE", "300")
    yield
    if (home / "db" / "server.lock").exists():
        from mongotune.store.local_server import stop_server

        stop_server(home / "db", force=True)
