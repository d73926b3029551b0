"""Where mongotune keeps things on the local disk.

Everything lives under ``$MONGOTUNE_HOME`` (default ``~/.mongotune``):

* ``db/``         the embedded MongoDB-compatible server's SQLite database
* ``artifacts/``  per-trial artifacts (params, history, TensorBoard, models)
* ``logs/``       logs of worker processes started by ``launch --workers``

The dataset cache is separate (see ``mongotune.data.default_cache_dir``).
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("MONGOTUNE_HOME") or Path.home() / ".mongotune").expanduser()


def embedded_db_dir() -> Path:
    return home() / "db"


def artifacts_dir() -> Path:
    return Path(os.environ.get("MONGOTUNE_ARTIFACTS") or home() / "artifacts").expanduser()


def logs_dir() -> Path:
    return home() / "logs"
