"""Fixtures shared by the data pipeline tests (helpers live in data_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mongotune import data


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Never touch ~/.cache, never use a proxy, start with an empty load memo."""
    monkeypatch.setenv("MONGOTUNE_DATA_DIR", str(tmp_path / "default-cache"))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    data.clear_memo()
    yield
    data.clear_memo()


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"
