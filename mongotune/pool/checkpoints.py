"""A trial's checkpoints: saved to the study's artifact store, pointed at by the trial, restored on any worker.

An objective gets one ``TrialCheckpoints`` as ``ctx.checkpoints``:

* ``save(step, files, state)`` uploads the files under a new prefix
  (``trial-NNNNN/ckpt-STEP-LEASE/``), then points the trial at it (one
  conditional write under the lease, ``TrialStore.record_checkpoint``), then
  deletes the checkpoint it replaced.  A save cut off at any point leaves the
  previous pointer, which names complete objects.
* ``restore(dest)`` downloads the pointed-at checkpoint into ``dest``, every
  file checked against the checksum the pointer recorded and the store's own,
  and carries the curve of the run that wrote it into this run
  (``TrialStore.resume_curve``); None when there is none, or when any file is
  missing or does not match (the trial then starts again, logged).
* ``discard()``, once the trial's result is recorded: its objects and pointer go.

The pointer comes from the database: its prefix and file names are checked as
artifact keys before they name anything, and the ``state`` it carries is the
objective's to validate.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from ..store.artifacts import ArtifactError, ArtifactStore, check_key
from ..store.trialdoc import Lease, TrialStore

log = logging.getLogger("mongotune.checkpoints")

FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class TrialCheckpoints:
    """Checkpoints of the trial held under ``lease`` (see the module docstring)."""

    def __init__(self, store: ArtifactStore, trials: TrialStore, lease: Lease, retry):
        self.store, self.trials, self.lease, self.retry = store, trials, lease, retry
        self.current: dict | None = None  # the pointer of the latest complete checkpoint (restored or saved)
        self.restored: dict | None = None
        self.seconds = 0.0  # time spent saving, for the result
        self.saves = 0

    @property
    def kind(self) -> str:
        return self.store.kind

    def _prefix(self, step: int) -> str:
        self.saves += 1  # every save a prefix of its own: a pointer always names what it recorded
        return f"trial-{int(self.lease.tid):05d}/ckpt-{int(step):05d}-{self.lease.token[:12]}-{self.saves}"

    def save(self, step: int, files: dict[str, Path], state: dict | None = None) -> bool:
        """Store ``files`` (name -> local path) and ``state`` as the trial's checkpoint at ``step``; False when
        the lease is gone (the objects just written are deleted again)."""
        t0 = time.monotonic()
        prefix = self._prefix(step)
        entries = {}
        for name, path in files.items():
            if not FILE_NAME.match(name):
                raise ArtifactError(f"bad checkpoint file name {name!r}")
            info = self.store.put(f"{prefix}/{name}", Path(path))
            entries[name] = {"sha256": info.sha256, "size": info.size}
        ref = {"prefix": prefix, "step": int(step), "lease": self.lease.token[:12], "attempt": self.lease.attempt,
               "store": self.store.kind, "files": entries, "state": state or {}}
        held, previous = self.retry.call(lambda: self.trials.record_checkpoint(self.lease, ref), "record a checkpoint")
        if not held:
            self._delete(ref)
            return False
        self.current = ref
        if previous and previous.get("prefix") != prefix:
            self._delete(previous)
        self.seconds += time.monotonic() - t0
        return True

    def restore(self, dest: Path, apply=None) -> dict | None:
        """The trial's last complete checkpoint downloaded and verified into ``dest`` (its pointer, with
        ``paths``: name -> local file), handed to ``apply(ref, paths)`` (which raises ValueError for a
        checkpoint it cannot use), then the curve carried on; None when there is none that can be used."""
        ref = self.retry.call(lambda: self.trials.checkpoint_of(self.lease), "read the checkpoint")
        if not ref:
            return None
        try:
            paths = self._download(ref, Path(dest))
            if apply is not None:
                apply(ref, paths)
        except (ArtifactError, OSError, TypeError, ValueError, AttributeError) as exc:
            log.warning("trial %s: checkpoint not used, the trial starts again: %s", self.lease.tid, exc)
            return None
        if not self.retry.call(lambda: self.trials.resume_curve(self.lease, ref), "continue the curve"):
            return None
        self.current = self.restored = ref
        log.info("trial %s: resumed from the checkpoint of step %s (attempt %s, %s store)", self.lease.tid,
                 ref.get("step"), ref.get("attempt"), self.store.kind)
        return {**ref, "paths": paths}

    def _download(self, ref: dict, dest: Path) -> dict[str, Path]:
        prefix = check_key(ref.get("prefix"))
        if not isinstance(ref.get("step"), int) or not isinstance(ref.get("files"), dict) or not ref["files"]:
            raise ArtifactError("the checkpoint pointer is malformed")
        dest.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, entry in ref["files"].items():
            if not FILE_NAME.match(str(name)) or not isinstance(entry, dict):
                raise ArtifactError(f"bad checkpoint file name {name!r}")
            info = self.store.get(f"{prefix}/{name}", dest / name)
            if (info.sha256, info.size) != (entry.get("sha256"), entry.get("size")):
                raise ArtifactError(f"{prefix}/{name} is not the file the checkpoint recorded")
            paths[name] = dest / name
        return paths

    def _delete(self, ref: dict) -> None:
        try:
            prefix = check_key(ref.get("prefix"))
            for name in ref.get("files") or {}:
                if FILE_NAME.match(str(name)):
                    self.store.delete(f"{prefix}/{name}")
        except (ArtifactError, OSError) as exc:
            log.warning("trial %s: could not delete checkpoint %s: %s", self.lease.tid, ref.get("prefix"), exc)
        except Exception as exc:  # noqa: BLE001 - the database is away: gc deletes it later
            log.warning("trial %s: could not delete checkpoint %s: %s: %s", self.lease.tid, ref.get("prefix"),
                        type(exc).__name__, exc)

    def discard(self) -> None:
        """The trial is over: its latest checkpoint's objects and pointer go."""
        ref = self.current
        if ref is None:
            return
        self._delete(ref)
        try:
            self.trials.forget_checkpoint(self.lease.exp_key, self.lease.tid, ref["prefix"])
        except Exception as exc:  # noqa: BLE001 - a dangling pointer names nothing; gc clears it
            log.warning("trial %s: checkpoint pointer left: %s", self.lease.tid, type(exc).__name__)
        self.current = None
