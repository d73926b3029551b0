"""A study's artifact store: named objects (checkpoints, models) with checksums, on a directory or GridFS.

One small interface, ``ArtifactStore``: ``put(key, src)``, ``get(key, dest)``,
``delete(key)``, ``list(prefix)``, ``info(key)``.  Every object carries its
SHA-256 and size, written when it is stored and checked on every ``get``;
an object whose bytes do not match is never handed out (``ArtifactCorrupt``).

Two backends:

* ``DirectoryStore``: ``ROOT/STUDY/objects/KEY``, next to a hidden sidecar
  ``.NAME.json`` holding its checksum.  An object is written to a temporary
  file in the same directory, synced and renamed into place, then its sidecar
  the same way: a write cut off at any point leaves either nothing under the
  key or bytes whose checksum does not match.  ``STUDY`` goes through
  ``safepath.study_dir`` and every key's path must resolve inside the study's
  directory.
* ``GridFSStore``: the bucket ``artifacts`` of the study's own database,
  file name ``STUDY/KEY``, the checksum in its metadata.  GridFS writes the
  chunks first and the file document last, so an upload cut off is invisible;
  its chunks are garbage for ``orphans``/``gc``.  No shared filesystem is
  needed between hosts.  On the embedded server GridFS writes at about 2 MB/s
  (bench/bench_artifacts.py), so a study there defaults to the directory.

Keys are checked (``check_key``): segments of letters, digits, ``_``, ``-``,
``.`` joined by ``/``, each starting with a letter or digit; a key from the
database is never used as a path otherwise.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .. import safepath
from ..errors import ConfigError

KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,99}){0,7}$")
BUCKET = "artifacts"
KINDS = ("auto", "local", "gridfs")
CHUNK = 1 << 20
READ_BATCH = 16  # GridFS chunks (about 1 MB each) per query


class ArtifactError(Exception):
    """An object that cannot be stored or read."""


class ArtifactMissing(ArtifactError):
    """No complete object under that key."""


class ArtifactCorrupt(ArtifactError):
    """The object's bytes do not match its checksum (a write cut off, a disk error, tampering)."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str
    created: datetime.datetime | None = None


class ArtifactStore(Protocol):
    kind: str

    def put(self, key: str, src: Path) -> ObjectInfo: ...
    def get(self, key: str, dest: Path) -> ObjectInfo: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str = "") -> list[ObjectInfo]: ...
    def info(self, key: str) -> ObjectInfo | None: ...


def check_key(key) -> str:
    if not isinstance(key, str) or not KEY.match(key):
        raise ArtifactError(f"bad artifact key {key!r}")
    return key


def check_kind(kind) -> str:
    """A study's ``artifact_store`` setting: auto (GridFS on a real MongoDB, the worker's directory on the
    embedded server), local or gridfs; anything else is a ``ConfigError``."""
    kind = "auto" if kind is None else kind
    if kind not in KINDS:
        raise ConfigError(f"unknown artifact store {kind!r}; choose from: {', '.join(KINDS)}")
    return kind


def file_sha256(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def _copy_hashing(src, dest_fh) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    while block := src.read(CHUNK):
        h.update(block)
        size += len(block)
        dest_fh.write(block)
    return h.hexdigest(), size


def _atomic_write(dest: Path, src) -> tuple[str, int]:
    """Copy the stream ``src`` (or what the callable ``src(out)`` writes) to ``dest`` through a synced
    temporary file in its directory; (sha256, size)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as out:
            digest = src(out) if callable(src) else _copy_hashing(src, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return digest


def _verified(info: ObjectInfo, digest: tuple[str, int]) -> ObjectInfo:
    if digest != (info.sha256, info.size):
        raise ArtifactCorrupt(f"artifact {info.key}: checksum or size does not match ({digest[1]} bytes read, "
                              f"{info.size} recorded)")
    return info


class DirectoryStore:
    """Objects as files under ``ROOT/STUDY/objects`` (see the module docstring)."""

    kind = "local"

    def __init__(self, root: str | Path, study: str):
        try:
            self.base = safepath.study_dir(root, study) / "objects"
        except ConfigError as exc:
            raise ArtifactError(str(exc)) from None

    def _path(self, key: str) -> Path:
        path = self.base / check_key(key)
        if safepath.inside(path, [self.base]) is None:
            raise ArtifactError(f"artifact {key} resolves outside {self.base}")
        return path

    @staticmethod
    def _meta(path: Path) -> Path:
        return path.parent / f".{path.name}.json"

    def put(self, key: str, src: Path) -> ObjectInfo:
        path = self._path(key)
        with open(src, "rb") as fh:
            sha, size = _atomic_write(path, fh)
        info = ObjectInfo(key, size, sha, datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None))
        meta = json.dumps({"key": key, "size": size, "sha256": sha, "created": info.created.isoformat()})
        _atomic_write(self._meta(path), io.BytesIO(meta.encode()))
        return info

    def info(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            meta = json.loads(self._meta(path).read_text())
            created = datetime.datetime.fromisoformat(meta["created"]) if meta.get("created") else None
            return ObjectInfo(key, int(meta["size"]), str(meta["sha256"]), created)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def get(self, key: str, dest: Path) -> ObjectInfo:
        info = self.info(key)
        if info is None:
            raise ArtifactMissing(f"no artifact {key}")
        try:
            with open(self._path(key), "rb") as fh:
                return _verified(info, _atomic_write(Path(dest), fh))
        except FileNotFoundError:
            raise ArtifactMissing(f"no artifact {key}") from None
        except ArtifactCorrupt:
            Path(dest).unlink(missing_ok=True)
            raise

    def delete(self, key: str) -> None:
        path = self._path(key)
        self._meta(path).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        parent = path.parent
        while parent != self.base and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def sweep(self, older_than_s: float) -> tuple[int, int]:
        """Delete what writes cut off left (temporary files, data without a checksum) older than
        ``older_than_s``: (files, bytes)."""
        if not self.base.is_dir() or safepath.inside(self.base, [self.base.parent]) is None:
            return 0, 0
        cutoff, n, size = time.time() - older_than_s, 0, 0
        for p in list(self.base.rglob("*")):
            stray = ".tmp-" in p.name or (not p.name.startswith(".") and not self._meta(p).exists())
            if p.is_file() and not p.is_symlink() and stray and p.stat().st_mtime < cutoff:
                size += p.stat().st_size
                p.unlink(missing_ok=True)
                n += 1
        return n, size

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        if not self.base.is_dir() or safepath.inside(self.base, [self.base.parent]) is None:
            return []
        out = []
        for meta in self.base.rglob(".*.json"):
            key = str(meta.parent.relative_to(self.base) / meta.name[1:-5]).removeprefix("./")
            if KEY.match(key) and key.startswith(prefix) and (info := self.info(key)) is not None:
                out.append(info)
        return sorted(out, key=lambda i: i.key)


class GridFSStore:
    """Objects in the ``artifacts`` GridFS bucket of the study's database (see the module docstring)."""

    kind = "gridfs"

    def __init__(self, db, study: str):
        import gridfs

        try:
            self.study = safepath.check_study_name(study)
        except ConfigError as exc:
            raise ArtifactError(str(exc)) from None
        self.db = db
        self.bucket = gridfs.GridFSBucket(db, BUCKET)
        self.files = db[f"{BUCKET}.files"]
        self.chunks = db[f"{BUCKET}.chunks"]

    def _name(self, key: str) -> str:
        return f"{self.study}/{check_key(key)}"

    def _docs(self, key: str) -> list[dict]:
        docs = list(self.files.find({"filename": self._name(key)}))
        return sorted(docs, key=lambda d: (d.get("uploadDate") or datetime.datetime.min, str(d["_id"])))

    @staticmethod
    def _info(doc: dict) -> ObjectInfo | None:
        meta = doc.get("metadata") or {}
        if not isinstance(meta.get("key"), str) or not isinstance(meta.get("sha256"), str):
            return None
        return ObjectInfo(meta["key"], int(doc.get("length") or 0), meta["sha256"], doc.get("uploadDate"))

    def put(self, key: str, src: Path) -> ObjectInfo:
        sha, size = file_sha256(src)
        old = [d["_id"] for d in self._docs(key)]
        with open(src, "rb") as fh:
            fid = self.bucket.upload_from_stream(self._name(key), fh, chunk_size_bytes=CHUNK - 1024,
                                                 metadata={"study": self.study, "key": key, "sha256": sha})
        for oid in old:  # the new one is complete: the earlier versions go
            self._delete_id(oid)
        doc = self.files.find_one({"_id": fid})
        return ObjectInfo(key, size, sha, (doc or {}).get("uploadDate"))

    def info(self, key: str) -> ObjectInfo | None:
        docs = self._docs(key)
        return self._info(docs[-1]) if docs else None

    def get(self, key: str, dest: Path) -> ObjectInfo:
        docs = self._docs(key)
        info = self._info(docs[-1]) if docs else None
        if info is None:
            raise ArtifactMissing(f"no artifact {key}")
        try:
            return _verified(info, _atomic_write(Path(dest), lambda out: self._read_chunks(docs[-1], out)))
        except ArtifactCorrupt:
            Path(dest).unlink(missing_ok=True)
            raise

    def _read_chunks(self, doc: dict, out) -> tuple[str, int]:
        """The file's chunks in order, READ_BATCH per query (the embedded server answers a query in one
        reply, which must stay under its 48 MB message limit); (sha256, size).  A chunk missing is corrupt."""
        size, chunk = int(doc.get("length") or 0), int(doc.get("chunkSize") or 1)
        count, h, got = -(-size // chunk), hashlib.sha256(), 0
        for first in range(0, count, READ_BATCH):
            wanted = list(range(first, min(first + READ_BATCH, count)))
            chunks = sorted(self.chunks.find({"files_id": doc["_id"], "n": {"$gte": first, "$lt": wanted[-1] + 1}}),
                            key=lambda c: c.get("n", -1))
            if [c.get("n") for c in chunks] != wanted:
                raise ArtifactCorrupt(f"artifact {doc.get('filename')}: chunks missing")
            for c in chunks:
                data = bytes(c["data"])
                h.update(data)
                out.write(data)
                got += len(data)
        return h.hexdigest(), got

    def _delete_id(self, oid) -> None:
        import gridfs.errors

        try:
            self.bucket.delete(oid)
        except gridfs.errors.NoFile:
            pass

    def delete(self, key: str) -> None:
        for doc in self._docs(key):
            self._delete_id(doc["_id"])

    def sweep(self, older_than_s: float) -> tuple[int, int]:
        """Delete the chunks of uploads cut off (no file document) begun more than ``older_than_s`` ago, in the
        whole bucket (a chunk does not say its study): (chunks, bytes)."""
        import bson  # here: Study.validate imports this module, and launch's fast errors come before pymongo

        files = {d["_id"] for d in self.files.find({}, projection=["_id"])}
        cutoff = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=older_than_s)
        stray = {c["files_id"] for c in self.chunks.find({}, projection=["files_id"])} - files
        old = [f for f in stray if isinstance(f, bson.ObjectId) and f.generation_time < cutoff]
        n = size = 0
        for fid in old:
            for c in self.chunks.find({"files_id": fid}, projection=["data"]):
                n, size = n + 1, size + len(c.get("data") or b"")
            self.chunks.delete_many({"files_id": fid})
        return n, size

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        out = {}
        for doc in self.files.find({"metadata.study": self.study}):
            info = self._info(doc)
            if info is not None and KEY.match(info.key) and info.key.startswith(prefix) \
                    and doc.get("filename") == f"{self.study}/{info.key}":
                out[info.key] = info
        return sorted(out.values(), key=lambda i: i.key)


def on_embedded(db) -> bool:
    """Whether ``db`` is served by the embedded server (mongoeco), whose GridFS writes slowly."""
    try:
        return db.client.admin.command("hello").get("gitVersion") == "mongoeco"
    except Exception:  # noqa: BLE001 - a server that does not answer hello: treat as real MongoDB
        return False


def open_store(kind: str | None, db, study: str, local_root: str | Path) -> ArtifactStore:
    """The study's store: ``gridfs``, ``local`` (the directory ``local_root``), or ``auto``."""
    kind = check_kind(kind)
    if kind == "auto":
        kind = "local" if on_embedded(db) else "gridfs"
    return GridFSStore(db, study) if kind == "gridfs" else DirectoryStore(local_root, study)


def copy_object(src: ArtifactStore, dst: ArtifactStore, key: str, workdir: Path) -> ObjectInfo:
    """Copy one object between stores through a verified local file."""
    tmp = Path(workdir) / f"copy-{uuid.uuid4().hex[:8]}"
    try:
        src.get(key, tmp)
        return dst.put(key, tmp)
    finally:
        tmp.unlink(missing_ok=True)
