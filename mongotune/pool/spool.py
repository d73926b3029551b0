"""Finished results waiting for the database: a worker's spool.

A worker writes a finished result to a file here before it tries the
database, so not even a crash of the waiting worker loses it: the next worker
that looks at the spool (at its start, then every ``SPOOL_RETRY_S``) delivers
it.  A file is claimed with a lock the kernel drops when its holder dies, and
deleted only once the database has the result: a kill at any point of a
delivery leaves it for the next flush.  The directory may be shared by the
workers of several hosts.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path

from .. import paths
from ..store import decode, encode
from ..store.trialdoc import Lease, TrialStore

log = logging.getLogger("mongotune.worker")

SPOOL_RETRY_S = 30.0  # how often a worker looks for spooled results nobody is delivering
SPOOL_DIR_ENV = "MONGOTUNE_SPOOL_DIR"  # where finished results wait for the database (default $MONGOTUNE_HOME/spool)
SPOOL_PAUSE_ENV = "MONGOTUNE_TEST_SPOOL_PAUSE"  # tests only: wait at this point of spooling, to be killed there


def spool_dir(configured: str | None) -> Path:
    """The spool: ``configured``, else ``$MONGOTUNE_SPOOL_DIR``, else ``$MONGOTUNE_HOME/spool``."""
    return Path(configured or os.environ.get(SPOOL_DIR_ENV) or paths.home() / "spool")


class Spool:
    """The results of one worker on their way to the database, through ``dir``."""

    def __init__(self, dir: Path, trials: TrialStore, retry):
        self.dir, self.trials, self.retry = dir, trials, retry
        self.checked = -1e9  # when the last flush looked (monotonic)

    def due(self) -> bool:
        return time.monotonic() - self.checked > SPOOL_RETRY_S

    def _path(self, lease: Lease) -> Path:
        safe = lease.exp_key.replace(":", "_").replace("/", "_")
        return self.dir / f"{safe}-{lease.tid}-{lease.token}.json"

    def _hook(self, point: str) -> None:
        """Tests kill a worker at a chosen point of spooling (``MONGOTUNE_TEST_SPOOL_PAUSE=POINT``): it
        leaves ``paused-POINT`` in the spool and waits there."""
        if os.environ.get(SPOOL_PAUSE_ENV) == point:
            (self.dir / f"paused-{point}").touch()
            time.sleep(3600)

    def deliver(self, lease: Lease, result: dict, extra: dict) -> bool:
        """Write a finished result, kept on disk (and locked by this worker) until the database has it;
        False: someone else finished the trial first."""
        path = self._path(lease)
        fd = _write(path, {"exp_key": lease.exp_key, "tid": lease.tid, "token": lease.token,
                           "attempt": lease.attempt, "result": encode(result), "extra": encode(extra)})
        try:
            self._hook("spooled")
            ok = self.retry.call(lambda: self.trials.finish(lease, result, extra), "report result")
            path.unlink(missing_ok=True)
        finally:
            if fd is not None:
                os.close(fd)
        return ok

    def flush(self) -> int:
        """Deliver the spooled results that no live worker is delivering (this host's earlier workers', or
        any worker's on a spool they share); return how many were taken.  No error escapes: a file that
        could not be delivered stays for the next flush."""
        self.checked = time.monotonic()
        if not self.dir.is_dir():
            return 0
        _adopt_old_claims(self.dir)
        delivered = 0
        for path in sorted(self.dir.glob("*.json")):
            try:
                delivered += self._flush_one(path)
            except Exception as exc:  # noqa: BLE001 - the file stays for the next flush
                log.error("spooled result %s not delivered (%s: %s); trying again later", path.name,
                          type(exc).__name__, exc)
        return delivered

    def _flush_one(self, path: Path) -> int:
        fd = _claim(path)
        if fd is None:
            return 0  # delivered meanwhile, or another live worker is delivering it
        try:
            self._hook("claimed")
            try:
                lease, result, extra = _read_held(fd)
            except (ValueError, KeyError, TypeError, ArithmeticError) as exc:
                bad = path.with_name(path.name + ".unreadable")
                log.warning("unreadable spooled result %s (%s): kept as %s", path.name, exc, bad.name)
                os.replace(path, bad)
                return 0
            ok = self.retry.call(lambda: self.trials.finish(lease, result, extra), "report result")
            self._hook("delivered")
            path.unlink(missing_ok=True)
            log.info("trial %s: spooled result %s", lease.tid, "delivered" if ok else
                     "dropped (the trial was finished by another worker)")
            return int(ok)
        finally:
            os.close(fd)


def _read_held(fd: int) -> tuple[Lease, dict, dict]:
    held = json.loads(_read_fd(fd))
    lease = Lease(None, int(held["tid"]), held["exp_key"], held["token"], int(held.get("attempt", 1)))
    return lease, decode(held["result"]), decode(held.get("extra") or {})


def _write(path: Path, doc: dict) -> int | None:
    """``doc`` durably at ``path`` (written aside, fsynced, renamed into place), locked by this process:
    the open descriptor (close it to unlock), or None when the spool cannot be written (logged)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        log.warning("cannot spool a result to %s (%s); delivering it from memory", path, exc)
        return None
    try:
        data = memoryview(json.dumps(doc).encode())
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
        fcntl.flock(fd, fcntl.LOCK_EX)  # no flush elsewhere takes it while this worker delivers it
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return fd
    except OSError as exc:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        log.warning("cannot spool a result to %s (%s); delivering it from memory", path, exc)
        return None


def _claim(path: Path) -> int | None:
    """An open descriptor of ``path`` holding its lock, or None: gone, or locked by a live process."""
    try:
        fd = os.open(path, os.O_RDWR)  # for writing: NFS grants an exclusive lock only to a writer
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino != os.stat(path).st_ino:  # delivered and removed while we waited
            raise FileNotFoundError(path)
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    return fd


def _read_fd(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _adopt_old_claims(spool: Path) -> None:
    """Files an earlier mongotune claimed by renaming them to ``NAME.json.PID`` and never delivered (its
    worker died): back to ``NAME.json`` once that process is gone."""
    for old in spool.glob("*.json.[0-9]*"):
        pid = old.suffix[1:]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except OSError:
            continue
        try:
            os.replace(old, old.with_suffix(""))
        except OSError:
            pass
