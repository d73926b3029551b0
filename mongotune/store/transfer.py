"""Studies that travel: one archive holds a study, its trials and its artifact store's objects.

``export_study`` writes a tar archive (through a temporary file renamed into
place, so a failed export leaves nothing):

* ``manifest.json``: the format and version, the study's name, the counts, the
  SHA-256 of every other member;
* ``study.bson``: the study document (its coordinator's lease cleared);
* ``trials.bson``: the trial documents, as the server returned them (raw BSON),
  so an import stores the very same bytes;
* ``artifacts/KEY``: each object of the study's artifact store (unless
  ``artifacts=False``), fetched verified.

Nothing in flight travels as running: a running trial is exported queued
(owner, lease, worker and booking cleared, ``requeues`` noting ``export``),
with its checkpoint pointer, so the target resumes it from its checkpoint.

``import_study`` checks the archive first (a tar file of exactly these members,
the manifest's format, the study's and the trials' checksums, every artifact
key), refuses a name the target already has, then writes the artifacts (each
checked against the manifest as it is stored), the trials and last the study
document (workers take trials only of studies that exist); if anything fails,
what it wrote is removed again.  ``copy_study`` is an export into a
temporary file and an import of it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import bson
from bson.raw_bson import RawBSONDocument

from .. import safepath
from ..errors import ConfigError, StudyNotFound, UserError
from .artifacts import ArtifactError, ArtifactStore, check_key, open_store
from .studies import exp_key_of
from .trialdoc import _REQUEUED, RUNNING

FORMAT, VERSION = "mongotune-study", 1
MANIFEST, STUDY, TRIALS, ART = "manifest.json", "study.bson", "trials.bson", "artifacts/"


class TransferError(UserError):
    """An archive that is not one, a study name taken at the target."""


@dataclass
class Summary:
    study: str
    trials: int = 0
    requeued: int = 0  # running trials exported as queued
    artifacts: int = 0
    artifact_bytes: int = 0
    keys: list[str] = field(default_factory=list, repr=False)


def _raw(coll):
    return coll.with_options(codec_options=coll.codec_options.with_options(document_class=RawBSONDocument))


def _trial_bytes(doc: RawBSONDocument) -> tuple[bytes, bool]:
    """A trial's BSON as stored, or, for a running one, as queued again; (bytes, requeued)."""
    if doc.get("state") != RUNNING:
        return bytes(doc.raw), False
    plain = bson.decode(doc.raw)
    plain.update(_REQUEUED)
    plain.setdefault("requeues", []).append({"reason": "export", "token": None})
    return bson.encode(plain), True


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o600
    tar.addfile(info, io.BytesIO(data))


def export_study(db, jobs, name: str, dest: Path, local_root: Path | None) -> Summary:
    """Write study ``name`` (its trials in ``jobs``, and unless ``local_root`` is None its artifact store's
    objects, the local directory store under that root) to the archive ``dest``."""
    study = _raw(db.studies).find_one({"_id": name})
    if study is None:
        raise StudyNotFound(f"no study named {name!r}")
    plain = bson.decode(study.raw)
    store = None if local_root is None else study_store(db, name, plain.get("artifact_store"), local_root)
    plain["coordinator"] = None
    docs = sorted(_raw(jobs).find({"exp_key": exp_key_of(name)}), key=lambda d: d.get("tid") or 0)
    summary, trials = Summary(name), []
    for d in docs:
        data, requeued = _trial_bytes(d)
        trials.append(data)
        summary.requeued += requeued
    summary.trials = len(trials)
    dest = Path(dest)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        members = {STUDY: bson.encode(plain), TRIALS: b"".join(trials)}
        with tarfile.open(tmp, "w") as tar, tempfile.TemporaryDirectory() as work:
            for key in [i.key for i in store.list()] if store is not None else []:
                path = Path(work) / "obj"
                info = store.get(key, path)
                tar.add(path, arcname=ART + key)
                members[ART + key] = info.sha256
                summary.artifacts += 1
                summary.artifact_bytes += info.size
            for member in (STUDY, TRIALS):
                _add(tar, member, members[member])
            sums = {k: v if isinstance(v, str) else hashlib.sha256(v).hexdigest() for k, v in members.items()}
            manifest = {"format": FORMAT, "version": VERSION, "study": name, "trials": summary.trials,
                        "artifacts": summary.artifacts, "sha256": sums}
            _add(tar, MANIFEST, json.dumps(manifest, indent=1).encode())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return summary


@dataclass
class Archive:
    manifest: dict
    study: dict
    trials: list[bytes]
    artifacts: dict[str, str]  # key -> sha256


def _not_archive(path, why: str) -> TransferError:
    return TransferError(f"{path} is not a mongotune study archive: {why}")


def _member(tar: tarfile.TarFile, name: str, path) -> bytes:
    try:
        fh = tar.extractfile(name)
    except KeyError:
        fh = None
    if fh is None:
        raise _not_archive(path, f"it has no {name}")
    return fh.read()


def _checked_names(tar: tarfile.TarFile, manifest: dict, path) -> dict[str, str]:
    sums = manifest.get("sha256")
    if not isinstance(sums, dict):
        raise _not_archive(path, "the manifest has no checksums")
    arts = {}
    for m in tar.getmembers():
        if m.name in (MANIFEST, STUDY, TRIALS):
            continue
        if not m.isfile() or not m.name.startswith(ART):
            raise _not_archive(path, f"unexpected member {m.name!r}")
        try:
            key = check_key(m.name[len(ART):])
        except ArtifactError as exc:
            raise _not_archive(path, str(exc)) from None
        if not isinstance(sums.get(m.name), str):
            raise _not_archive(path, f"no checksum for {m.name}")
        arts[key] = sums[m.name]
    return arts


def read_archive(path: Path) -> Archive:
    """The archive at ``path``, every member checked (``TransferError`` says what is wrong)."""
    try:
        tar = tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as exc:
        raise _not_archive(path, str(exc) or type(exc).__name__) from None
    with tar:
        try:
            manifest = json.loads(_member(tar, MANIFEST, path))
        except ValueError:
            raise _not_archive(path, "its manifest is not JSON") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise _not_archive(path, "its manifest names another format")
        if manifest.get("version") != VERSION:
            raise _not_archive(path, f"version {manifest.get('version')!r}; this mongotune reads {VERSION}")
        arts = _checked_names(tar, manifest, path)
        blobs = {name: _member(tar, name, path) for name in (STUDY, TRIALS)}
        for name, data in blobs.items():
            if hashlib.sha256(data).hexdigest() != manifest["sha256"].get(name):
                raise _not_archive(path, f"{name} does not match its checksum")
        try:
            study = bson.decode(blobs[STUDY])
            bson.decode_all(blobs[TRIALS])
        except (bson.errors.BSONError, ValueError) as exc:
            raise _not_archive(path, f"bad BSON: {exc}") from None
    return Archive(manifest, study, _split_bson(blobs[TRIALS]), arts)


def _split_bson(data: bytes) -> list[bytes]:
    """Concatenated BSON documents, each as its own bytes (the stored bytes, not a re-encoding)."""
    out, i = [], 0
    while i < len(data):
        n = int.from_bytes(data[i:i + 4], "little")
        out.append(data[i:i + n])
        i += n
    return out


def _renamed(arch: Archive, name: str) -> tuple[dict, list]:
    """The study document and trial documents under ``name`` (raw bytes kept when the name is the same)."""
    study = dict(arch.study)
    if name == study.get("_id"):
        return study, [RawBSONDocument(b) for b in arch.trials]
    study.update(_id=name, name=name, exp_key=exp_key_of(name))
    trials = []
    for raw in arch.trials:
        doc = bson.decode(raw)
        doc.update(_id=bson.ObjectId(), exp_key=exp_key_of(name))
        trials.append(doc)
    return study, trials


def study_store(db, name: str, kind, local_root: Path) -> ArtifactStore:
    """The artifact store of study ``name`` (its ``artifact_store`` setting ``kind``); TransferError if none."""
    try:
        return open_store(kind, db, name, local_root)
    except ArtifactError as exc:
        raise TransferError(f"study {name!r}: {exc}") from None


def import_study(db, jobs, path: Path, local_root: Path, *, as_name: str | None = None) -> Summary:
    """Import the archive at ``path`` as study ``as_name`` (default: its own name); its artifacts go to the
    study's store at the target (``local_root`` for a directory store).  All or nothing (see the module
    docstring)."""
    arch = read_archive(Path(path))
    name = as_name or arch.study.get("_id")
    try:
        safepath.check_study_name(name)
    except ConfigError as exc:
        raise TransferError(str(exc)) from None
    if db.studies.count_documents({"_id": name}, limit=1) or jobs.count_documents({"exp_key": exp_key_of(name)},
                                                                                     limit=1):
        raise TransferError(f"a study named {name!r} already exists at the target; import it --as another name")
    study, trials = _renamed(arch, name)
    summary = Summary(name, trials=len(trials))
    store = study_store(db, name, study.get("artifact_store"), local_root) if arch.artifacts else None
    try:
        _put_artifacts(path, arch, store, summary)
        if trials:
            jobs.insert_many(trials, ordered=True)
        db.studies.insert_one(study)
    except BaseException:
        _undo(db, jobs, name, store, summary)
        raise
    return summary


def _put_artifacts(path: Path, arch: Archive, store: ArtifactStore | None, summary: Summary) -> None:
    if store is None:
        return
    with tarfile.open(path, "r:") as tar, tempfile.TemporaryDirectory() as work:
        for key, sha in arch.artifacts.items():
            tmp = Path(work) / "obj"
            with tar.extractfile(ART + key) as src, open(tmp, "wb") as out:
                while block := src.read(1 << 20):
                    out.write(block)
            info = store.put(key, tmp)
            summary.keys.append(key)
            if info.sha256 != sha:
                raise TransferError(f"{path}: artifact {key} does not match its checksum")
            summary.artifacts += 1
            summary.artifact_bytes += info.size


def _undo(db, jobs, name: str, store: ArtifactStore | None, summary: Summary) -> None:
    """Remove what a failed import wrote (best effort: the error that stopped it is what the user sees)."""
    try:
        db.studies.delete_one({"_id": name})
        jobs.delete_many({"exp_key": exp_key_of(name)})
        for key in summary.keys if store is not None else []:
            store.delete(key)
    except Exception:  # noqa: BLE001
        pass


def copy_study(src, dst, name: str, local_root: Path, *, as_name: str | None = None,
               artifacts: bool = True) -> Summary:
    """Copy study ``name`` from ``src`` to ``dst``, each ``(db, jobs)``: an export then an import."""
    (sdb, sjobs), (ddb, djobs) = src, dst
    target = as_name or name
    if ddb.studies.count_documents({"_id": target}, limit=1):
        raise TransferError(f"a study named {target!r} already exists at the target; copy it --as another name")
    with tempfile.TemporaryDirectory() as work:
        archive = Path(work) / "study.tar"
        if sdb.studies.count_documents({"_id": name}, limit=1) == 0:
            raise StudyNotFound(f"no study named {name!r} at the source")
        export_study(sdb, sjobs, name, archive, local_root if artifacts else None)
        return import_study(ddb, djobs, archive, local_root, as_name=as_name)
