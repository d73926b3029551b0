"""The on-disk cache of prepared datasets.

Layout of ``<cache_dir>``::

    <key>/meta.json            what was built, from what, and per-file size + sha256
    <key>/x_train.npy ...      uint8 NHWC images, int64 labels (memory-mappable)
    downloads/<dataset>/...    published files, verified
    downloads/pins.json        sha256 of files without a published checksum
    .locks/<key>.lock          flock'd while <key> is being built

An entry is built in ``.tmp-<key>-*`` and renamed into place, so a reader
sees either no entry or a complete one.  ``meta.json`` carries a hash of its
own content, so hand edits are caught too.  Opening checks what is cheap
(meta hash, file sizes, npy headers); ``prepare`` and ``verify`` also hash
every byte.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mongotune.errors import DataError

from ._dataset import Dataset
from ._download import file_digests
from ._lock import file_lock
from ._prepare import write_arrays
from ._sources import load_raw, source_fingerprint
from ._spec import CACHE_FORMAT, DataSpec

Progress = Callable[[str, int, "int | None"], None]

META = "meta.json"
SPLITS = ("train", "val", "test")
DOWNLOADS = "downloads"


def default_cache_dir() -> Path:
    """``$MONGOTUNE_DATA_DIR``, else ``~/.cache/mongotune/data``."""
    env = os.environ.get("MONGOTUNE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mongotune" / "data"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return path.absolute()


def _canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def meta_hash(meta: dict) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in meta.items() if k != "meta_sha256"})).hexdigest()


def content_hash(files: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}:{files[name]['sha256']}\n".encode())
    return h.hexdigest()


def read_meta(path: Path) -> dict:
    """The meta.json of an entry, or DataError describing why it is unusable."""
    meta_path = path / META
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path.name}: {META} is missing") from None
    except (ValueError, OSError) as exc:
        raise DataError(f"{path.name}: {META} is unreadable ({exc})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path.name}: {META} is not an object")
    if meta.get("meta_sha256") != meta_hash(meta):
        raise DataError(f"{path.name}: {META} was modified (its hash does not match)")
    if meta.get("format") != CACHE_FORMAT:
        raise DataError(f"{path.name}: cache format {meta.get('format')} is not {CACHE_FORMAT}")
    return meta


def _npy_header(file: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of an .npy file, reading only its header."""
    with open(file, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported npy version {version}")
        if fortran:
            raise ValueError("Fortran-ordered array")
        return tuple(shape), np.dtype(dtype), fh.tell()


def required_files(meta: dict) -> list[str]:
    names = [f"{p}_{s}.npy" for s in SPLITS for p in ("x", "y")]
    for label in meta.get("extra_class_names", {}):
        names += [f"y_{s}__{label}.npy" for s in SPLITS]
    return names


def check_files(path: Path, meta: dict, *, full: bool,
                progress: Progress | None = None) -> str | None:
    """Why the files of an entry do not match its (already read) meta, or None."""
    files = meta.get("files")
    if not isinstance(files, dict):
        return f"{META} lists no files"
    missing = [n for n in required_files(meta) if n not in files]
    if missing:
        return f"{META} lacks {', '.join(missing)}"
    total = sum(int(info.get("bytes", 0)) for info in files.values())
    done = 0
    for name, info in sorted(files.items()):
        file = path / name
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            return f"{name} is missing"
        if size != info.get("bytes"):
            return f"{name} has {size} bytes, expected {info.get('bytes')} (truncated?)"
        try:
            shape, dtype, offset = _npy_header(file)
        except Exception as exc:  # whatever a mangled header makes numpy raise
            return f"{name} has a bad .npy header ({type(exc).__name__}: {exc})"
        if list(shape) != info.get("shape") or str(dtype) != info.get("dtype"):
            return f"{name} holds {dtype}{list(shape)}, expected {info.get('dtype')}{info.get('shape')}"
        if offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != size:
            return f"{name} size does not match its header"
        if full:
            def sub(_stage: str, d: int, _t: int | None, base: int = done) -> None:
                if progress is not None:
                    progress("verify", base + d, total)

            digest = file_digests(file, ("sha256",), progress=sub, stage="verify")["sha256"]
            if digest != info.get("sha256"):
                return f"{name} content hash mismatch (corrupt)"
        done += size
    if content_hash(files) != meta.get("content_hash"):
        return "content hash mismatch"
    return None


def check_entry(path: Path, spec: DataSpec, *, full: bool,
                progress: Progress | None = None) -> str | None:
    """Why the entry at ``path`` cannot be used for ``spec``, or None if it can.

    Always checks meta.json (its own hash, key, format), the presence, size
    and .npy header of every file, and whether user data (folder, npz)
    changed since the build; ``full`` also hashes every file.
    """
    if not path.is_dir():
        return "not built"
    try:
        meta = read_meta(path)
    except DataError as exc:
        return str(exc)
    if meta.get("key") != spec.cache_key():
        return f"{META} belongs to {meta.get('key')!r}"
    problem = check_files(path, meta, full=full, progress=progress)
    if problem is not None:
        return problem
    fingerprint = source_fingerprint(spec)
    recorded = (meta.get("source") or {}).get("fingerprint")
    if fingerprint is not None and recorded is not None and fingerprint != recorded:
        return f"the source {spec.source} changed since the cache was built"
    return None


def open_entry(path: Path, spec: DataSpec) -> Dataset:
    """Memory-map the arrays of a checked entry."""
    meta = read_meta(path)

    def arr(name: str) -> np.ndarray:
        return np.load(path / name, mmap_mode="r", allow_pickle=False)

    x = {s: arr(f"x_{s}.npy") for s in SPLITS}
    labels = {"fine": {s: arr(f"y_{s}.npy") for s in SPLITS}}
    names = {"fine": list(meta["class_names"])}
    for label, label_names in meta.get("extra_class_names", {}).items():
        labels[label] = {s: arr(f"y_{s}__{label}.npy") for s in SPLITS}
        names[label] = list(label_names)
    primary = spec.label_mode if spec.label_mode in labels else "fine"
    y = labels.pop(primary)
    class_names = names.pop(primary)
    return Dataset(
        spec=spec,
        x_train=x["train"], y_train=y["train"],
        x_val=x["val"], y_val=y["val"],
        x_test=x["test"], y_test=y["test"],
        class_names=class_names,
        extra_labels=labels,
        extra_class_names=names,
        meta=meta,
        path=path,
    )


def build_id(path: Path) -> str | None:
    try:
        return json.loads((path / META).read_text()).get("build_id")
    except (OSError, ValueError, AttributeError):
        return None


def _cleanup_stale(cache_dir: Path, key: str) -> None:
    """Leftovers of builds of ``key`` that died (we hold its lock, so none is live)."""
    for pattern in (f".tmp-{key}-*", f".trash-{key}-*"):
        for stale in cache_dir.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def build_entry(spec: DataSpec, cache_dir: Path, progress: Progress | None = None) -> Path:
    """Build the entry of ``spec`` in a temp dir and rename it into place.

    The caller holds the entry's lock.
    """
    key = spec.cache_key()
    final = cache_dir / key
    _cleanup_stale(cache_dir, key)
    raw = load_raw(spec, cache_dir, progress)
    tmp = cache_dir / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        summary = write_arrays(raw, spec, tmp, progress)
        class_names, extra_names, source = raw.class_names, raw.extra_class_names, raw.source
        del raw
        files = {}
        npys = sorted(tmp.glob("*.npy"))
        total = sum(f.stat().st_size for f in npys)
        done = 0
        for file in npys:
            base = done

            def sub(_stage: str, d: int, _t: int | None, base: int = base) -> None:
                if progress is not None:
                    progress("hash", base + d, total)

            digest = file_digests(file, ("sha256",), progress=sub, stage="hash")["sha256"]
            shape, dtype, _ = _npy_header(file)
            size = file.stat().st_size
            files[file.name] = {"bytes": size, "sha256": digest,
                                "shape": list(shape), "dtype": str(dtype)}
            done += size
        import cv2

        meta = {
            "format": CACHE_FORMAT,
            "key": key,
            "name": spec.name,
            "spec": {**spec.to_dict(), "label_mode": "fine"},
            "build_id": uuid.uuid4().hex,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "class_names": list(class_names),
            "extra_class_names": {k: list(v) for k, v in extra_names.items()},
            **summary,
            "preprocessing": {
                "size": spec.size, "channels": spec.channels,
                "interpolation": spec.interpolation, "val_fraction": spec.val_fraction,
                "seed": spec.seed, "dtype": "uint8", "layout": "NHWC",
                "scaling": "none (uint8 0..255; scale inside the model)",
                "resize": f"cv2.resize (OpenCV {cv2.__version__})",
            },
            "source": source,
            "files": files,
            "content_hash": content_hash(files),
        }
        meta["meta_sha256"] = meta_hash(meta)
        (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
        trash = None
        if final.exists():
            trash = cache_dir / f".trash-{key}-{uuid.uuid4().hex[:8]}"
            os.rename(final, trash)
        os.rename(tmp, final)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def build_locked(spec: DataSpec, cache_dir: Path, *, seen: str | None, force: bool,
                 progress: Progress | None = None) -> Dataset:
    """Build ``spec`` under its lock, unless another process built it meanwhile.

    ``seen`` is the build id found before waiting for the lock (None if there
    was no entry); an entry with a different id was built while we waited.
    """
    key = spec.cache_key()
    path = cache_dir / key

    def on_wait() -> None:
        if progress is not None:
            progress("wait for lock", 0, None)

    with file_lock(cache_dir / ".locks" / f"{key}.lock", on_wait=on_wait):
        now = build_id(path)
        if now is not None and now != seen and check_entry(path, spec, full=False) is None:
            return open_entry(path, spec)
        build_entry(spec, cache_dir, progress)
    return open_entry(path, spec)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def list_entries(cache_dir: Path) -> list[dict]:
    out = []
    if not cache_dir.is_dir():
        return out
    for path in sorted(cache_dir.iterdir()):
        if not path.is_dir() or path.name.startswith(".") or path.name == DOWNLOADS:
            continue
        entry = {"key": path.name, "name": path.name.split("-", 1)[0], "size": None,
                 "shapes": {}, "bytes": _dir_bytes(path), "created": None,
                 "path": str(path), "status": "ok"}
        try:
            meta = read_meta(path)
        except DataError as exc:
            entry["status"] = f"corrupt: {exc}"
            out.append(entry)
            continue
        spec = meta.get("spec") or {}
        files = meta.get("files") or {}
        entry.update(
            name=meta.get("name"), size=spec.get("size"), created=meta.get("created"),
            shapes={s: files[f"x_{s}.npy"]["shape"] for s in SPLITS if f"x_{s}.npy" in files},
            classes=len(meta.get("class_names", [])),
            spec=spec,
        )
        problem = (check_files(path, meta, full=False) if meta.get("key") == path.name
                   else "directory name does not match its key")
        if problem is not None:
            entry["status"] = f"corrupt: {problem}"
        out.append(entry)
    return out


def list_downloads(cache_dir: Path) -> list[dict]:
    root = cache_dir / DOWNLOADS
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(folder.iterdir()):
            if file.is_file():
                out.append({"name": folder.name, "file": file.name, "bytes": file.stat().st_size,
                            "partial": file.name.endswith(".part"), "path": str(file)})
    return out
