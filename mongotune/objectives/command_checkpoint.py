"""A command trial's checkpoint directory, ``$MONGOTUNE_CHECKPOINT_DIR``, kept in the study's artifact store.

Before the command starts, the trial's last checkpoint (one tar archive,
``checkpoint.tar``) is unpacked into ``TRIAL_DIR/checkpoint`` and the command
sees ``MONGOTUNE_RESUMED=1``; it is an empty directory and ``0`` otherwise.
While the command runs, the directory is packed and uploaded every
``checkpoint_every`` seconds when its files changed, and once more when the
command ends (a worker stopping hands the trial back with its latest state).

The archive comes from the database: it is unpacked with tarfile's ``data``
filter (no absolute paths, no ``..``, no links leaving the directory, no
devices), and packed from regular files and directories only.

The curve continues from the last reading seen before the snapshot: a command
should print a step's reading before it writes that step's checkpoint, so a
step it runs again after a resume is already on the curve and kept once.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import threading
from pathlib import Path

log = logging.getLogger("mongotune.command")

ARCHIVE = "checkpoint.tar"


def _signature(root: Path) -> tuple:
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            out.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    return tuple(out)


def _pack(root: Path, dest: Path) -> None:
    with tarfile.open(dest, "w") as tar:
        for p in sorted(root.rglob("*")):
            if p.is_symlink() or not (p.is_file() or p.is_dir()):
                continue
            tar.add(p, arcname=str(p.relative_to(root)), recursive=False)


def _unpack(archive: Path, root: Path) -> None:
    try:
        with tarfile.open(archive, "r") as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, EOFError) as exc:
        raise ValueError(f"the checkpoint archive cannot be unpacked: {exc}") from None


class CheckpointDir:
    """``$MONGOTUNE_CHECKPOINT_DIR`` of one command trial (see the module docstring)."""

    def __init__(self, ctx, trial_dir: str, every_s: float, step):
        self.cp = getattr(ctx, "checkpoints", None)
        self.dir = Path(trial_dir) / "checkpoint"
        self.work = Path(trial_dir) / ".checkpoint-upload"
        self.every_s, self.step = max(1.0, float(every_s)), step  # step(): the last reading's step
        self.resumed = False
        self.uploaded: tuple = ()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def restore(self) -> dict:
        """Unpack the trial's last checkpoint, if any; the variables the command gets."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        if self.cp is not None:
            got = self.cp.restore(self.work, lambda ref, paths: _unpack(paths[ARCHIVE], self.dir))
            shutil.rmtree(self.work, ignore_errors=True)
            if got is None:  # an archive refused half-way leaves nothing behind
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir.mkdir(parents=True)
            self.resumed = got is not None
            self.uploaded = _signature(self.dir) if self.resumed else ()
        return {"MONGOTUNE_CHECKPOINT_DIR": str(self.dir), "MONGOTUNE_RESUMED": "1" if self.resumed else "0"}

    def start(self) -> None:
        if self.cp is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True, name="cmd-checkpoint")
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.upload()

    def finish(self) -> None:
        """The command has ended: stop the interval uploads, then upload what it left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
            self.upload()

    def upload(self) -> None:
        with self._lock:
            try:
                sig = _signature(self.dir)
                if not sig or sig == self.uploaded:
                    return
                self.work.mkdir(parents=True, exist_ok=True)
                _pack(self.dir, self.work / ARCHIVE)
                if self.cp.save(int(self.step() or 0), {ARCHIVE: self.work / ARCHIVE}, {}):
                    self.uploaded = sig
            except Exception as exc:  # noqa: BLE001 - the command goes on; the next interval tries again
                log.warning("checkpoint directory not uploaded: %s: %s", type(exc).__name__, exc)
            finally:
                shutil.rmtree(self.work, ignore_errors=True)
