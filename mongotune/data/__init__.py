"""Datasets for mongotune: download, verify, resize, split, cache, memory-map.

``prepare(spec)`` builds (once per host, under a file lock) a cache of uint8
NHWC arrays for a :class:`DataSpec`; ``load(spec)`` opens it memory-mapped
once per process and hands the same :class:`Dataset` to every trial.  The
page cache is shared, so K workers on one host hold one copy of the pixels.

Library code never prints: long steps report through an optional
``progress(stage, done, total)`` callable, and user mistakes raise
:class:`mongotune.errors.DataError` with a one-line message.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mongotune.errors import DataError

from ._spec import DATASETS, INTERPOLATIONS, NATIVE_SHAPES, DataSpec

# ``_cache`` and ``Dataset`` need numpy: imported where used, so that checking a DataSpec (what a launch does
# before anything heavy) costs nothing
if TYPE_CHECKING:  # pragma: no cover
    from ._dataset import Dataset

Progress = Callable[[str, int, "int | None"], None]

__all__ = [
    "DataSpec",
    "Dataset",
    "DataError",
    "INTERPOLATIONS",
    "available_datasets",
    "clear_memo",
    "default_cache_dir",
    "fetch",
    "inspect",
    "list_cached",
    "list_downloads",
    "load",
    "native_shape",
    "prepare",
    "verify",
]

_MEMO: dict[tuple[str, str, str], Dataset] = {}
_MEMO_LOCK = threading.RLock()


def available_datasets() -> list[str]:
    """Names accepted by ``DataSpec.name``."""
    return list(DATASETS)


def default_cache_dir() -> Path:
    """``$MONGOTUNE_DATA_DIR``, else ``~/.cache/mongotune/data``."""
    from . import _cache

    return _cache.default_cache_dir()


def prepare(spec: DataSpec, cache_dir: str | os.PathLike | None = None,
            progress: Progress | None = None, force: bool = False) -> Dataset:
    """Make sure the cache of ``spec`` exists and is intact; return it opened.

    An existing entry is verified in full (every byte hashed); a missing,
    half-written or corrupt one is (re)built under an exclusive lock, so
    processes racing on one host build it once.  ``force`` rebuilds anyway.
    """
    from . import _cache

    if not isinstance(spec, DataSpec):
        raise TypeError(f"prepare() needs a DataSpec, got {type(spec).__name__}")
    root = _cache.resolve_cache_dir(cache_dir)
    path = root / spec.cache_key()
    seen = _cache.build_id(path)
    if not force and seen is not None:
        if _cache.check_entry(path, spec, full=True, progress=progress) is None:
            return _cache.open_entry(path, spec)
    return _cache.build_locked(spec, root, seen=seen, force=force, progress=progress)


def fetch(spec: DataSpec, cache_dir: str | os.PathLike | None = None,
          progress: Progress | None = None) -> None:
    """Make sure ``spec`` can be prepared here, without preparing it.

    Nothing to do when its cache is already built; otherwise the source files
    are downloaded (or, with ``source``, found and verified).  A launch calls
    this before it writes a study, so that a missing download fails at once
    with one line rather than in every trial.
    """
    from . import _cache

    if not isinstance(spec, DataSpec):
        raise TypeError(f"fetch() needs a DataSpec, got {type(spec).__name__}")
    root = _cache.resolve_cache_dir(cache_dir)
    if _cache.check_entry(root / spec.cache_key(), spec, full=False) is None:
        return
    from ._sources import ensure_files

    ensure_files(spec, root, progress)


def native_shape(name: str) -> tuple[int, int, int] | None:
    """(height, width, channels) of a named dataset's images; None where they vary (folder, npz)."""
    return NATIVE_SHAPES.get(name)


def load(spec: DataSpec, cache_dir: str | os.PathLike | None = None,
         progress: Progress | None = None) -> Dataset:
    """The :class:`Dataset` of ``spec``, opened once per process.

    Later calls with the same cache key (and label mode) return the very same
    object, whose arrays are read-only memory maps.  Opening checks sizes and
    headers only (cheap); a missing or broken cache is prepared first.
    """
    from . import _cache

    if not isinstance(spec, DataSpec):
        raise TypeError(f"load() needs a DataSpec, got {type(spec).__name__}")
    root = _cache.resolve_cache_dir(cache_dir)
    key = (str(root), spec.cache_key(), spec.label_mode)
    with _MEMO_LOCK:
        ds = _MEMO.get(key)
        if ds is None:
            path = root / spec.cache_key()
            if _cache.check_entry(path, spec, full=False) is None:
                ds = _cache.open_entry(path, spec)
            else:
                ds = prepare(spec, root, progress=progress)
            _MEMO[key] = ds
        return ds


def clear_memo() -> None:
    """Forget the datasets ``load`` opened (their arrays stay valid)."""
    with _MEMO_LOCK:
        _MEMO.clear()


def verify(spec: DataSpec, cache_dir: str | os.PathLike | None = None,
           progress: Progress | None = None) -> dict:
    """Hash every file of the cache of ``spec``; return its meta or raise DataError."""
    from . import _cache

    root = _cache.resolve_cache_dir(cache_dir)
    path = root / spec.cache_key()
    problem = _cache.check_entry(path, spec, full=True, progress=progress)
    if problem is not None:
        raise DataError(f"{spec.cache_key()}: {problem}; run `mongotune data prepare` to (re)build it")
    return _cache.read_meta(path)


def list_cached(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """One dict per prepared entry: key, name, size, shapes, bytes, created,
    classes, path and status ('ok' or 'corrupt: why')."""
    from . import _cache

    return _cache.list_entries(_cache.resolve_cache_dir(cache_dir))


def list_downloads(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """The downloaded source files (``.part`` ones included) with their sizes."""
    from . import _cache

    return _cache.list_downloads(_cache.resolve_cache_dir(cache_dir))


def __getattr__(name: str):
    if name == "Dataset":
        from ._dataset import Dataset

        return Dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def inspect(spec: DataSpec, out_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
            progress: Progress | None = None, *, per_class: int = 8, compare_tf: bool = True) -> list[Path]:
    """Write PNGs to look at (samples per class, resize methods compared,
    label distribution); returns their paths.  See ``_inspect``."""
    from . import _cache
    from ._inspect import inspect as _inspect

    return _inspect(spec, Path(out_dir), cache_dir=_cache.resolve_cache_dir(cache_dir),
                    progress=progress, per_class=per_class, compare_tf=compare_tf)
