"""A command trial's processes: started in their own session, dying with the worker, swept at the end.

The child leads its own process group and gets SIGKILL from the kernel when
the worker dies (``die_with_parent``); a small guard process (``Guard``) kills
its group and every process that carries the trial's run token should the
worker die first.  ``terminate_tree`` ends a trial's processes: SIGTERM, then
SIGKILL after a grace period.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import subprocess
import sys
import time

from ..errors import TrialFailure

log = logging.getLogger("mongotune.command")


def _run_token_of(proc) -> str | None:
    try:
        return proc.environ().get("MONGOTUNE_RUN_TOKEN")
    except Exception:  # noqa: BLE001 - gone, zombie or not ours: not part of the tree
        return None


def _tree(pid: int | None, token: str | None):
    """The processes of one trial: ``pid`` (a running child) with its descendants, and carriers of its run token."""
    import psutil

    found = {}
    if pid is not None:
        try:
            root = psutil.Process(pid)
            found[root.pid] = root
            for p in root.children(recursive=True):
                found[p.pid] = p
        except psutil.Error:
            pass
    if token:
        me = os.getuid()
        for p in psutil.process_iter(["uids"]):
            try:
                if p.pid in found or p.info["uids"] is None or p.info["uids"].real != me:
                    continue
            except (KeyError, AttributeError):
                continue
            if _run_token_of(p) == token:
                found[p.pid] = p
    return list(found.values())


def _live(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_gone(procs, timeout: float) -> list:
    """Wait until none of ``procs`` is alive (zombies count as gone); return those still alive."""
    end = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if _live(p)]
        if not alive or time.monotonic() >= end:
            return alive
        time.sleep(0.05)


def _signal_all(proc: subprocess.Popen, others, sig: int) -> None:
    import psutil

    try:
        os.killpg(proc.pid, sig)  # the child leads its own session and process group
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
    for p in others:
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass


def terminate_tree(proc: subprocess.Popen, token: str | None, grace_s: float) -> None:
    """SIGTERM the child's whole tree, SIGKILL whatever is left after ``grace_s``; reap the child.

    The tree is the child's process group, its descendants, and every process
    of this user whose environment carries the trial's run token (found again
    after the TERM, since a dying parent hands its children to init).
    """
    def tree():  # a reaped child's pid may belong to someone else by now: only a running one is searched
        return [p for p in _tree(proc.pid if proc.poll() is None else None, token) if p.pid != proc.pid]

    others = tree()
    _signal_all(proc, others, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    end = time.monotonic() + grace_s
    alive = _wait_gone(others, max(0.0, end - time.monotonic()))
    again = [p for p in tree() if _live(p)]
    left = {p.pid: p for p in alive + again}
    if proc.poll() is None or left:
        _signal_all(proc, list(left.values()), signal.SIGKILL)
        _wait_gone(list(left.values()), 5.0)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent
        proc.kill()
        proc.wait()


_PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(sig: int = signal.SIGKILL):
    """A ``preexec_fn``: the kernel sends ``sig`` to the child when the thread that started it ends,
    however its process ends (SIGKILL and the OOM killer included).  None where there is no ``prctl``.

    The thread that starts the child must live as long as the child does (``run_command`` waits for it).
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def arm() -> None:  # in the child, between fork and exec
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent was gone before the call above
            os.kill(os.getpid(), sig)

    return arm


# Run as `python -I -S -c _GUARD_CODE`; reads "TOKEN\n", then "PGID\n", then "done\n" on its stdin. If the pipe
# closes before "done" (the worker died), it SIGKILLs the process group and every process of this user whose
# environment carries MONGOTUNE_RUN_TOKEN=TOKEN, until none has been seen three times in a row.
_GUARD_CODE = r"""
import os, signal, sys, time
data = b""
while True:
    try:
        chunk = os.read(0, 4096)
    except InterruptedError:
        continue
    if not chunk:
        break
    data += chunk
words = data.decode("ascii", "replace").split()
if not words or words[-1] == "done":
    sys.exit(0)
mark = b"MONGOTUNE_RUN_TOKEN=" + words[0].encode()
pgid = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
me, uid = os.getpid(), os.getuid()

def sweep():
    if pgid:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    hit = 0
    try:
        names = os.listdir("/proc")
    except OSError:
        names = []
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            if os.stat("/proc/" + name).st_uid != uid:
                continue
            with open("/proc/" + name + "/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        if mark in env:
            try:
                os.kill(int(name), signal.SIGKILL)
                hit += 1
            except OSError:
                pass
    return hit

end, quiet = time.monotonic() + 10, 0
while quiet < 3 and time.monotonic() < end:
    quiet = 0 if sweep() else quiet + 1
    time.sleep(0.1)
"""


class Guard:
    """A small process, in its own session, that ends the trial's processes if this process dies first.

    The child itself dies with the worker (``die_with_parent``); the guard takes the rest: whatever the child
    started, in its process group or out of it (anything that carries the trial's run token).  A trial that
    ends normally tells the guard so (``release``) after ``terminate_tree``.
    """

    def __init__(self, token: str):
        env = {k: os.environ[k] for k in ("PATH", "LD_LIBRARY_PATH") if k in os.environ}
        try:
            self.proc: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _GUARD_CODE], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True, env=env)
        except OSError as exc:
            log.warning("no watchdog for this trial's processes (%s): should this worker be killed, what the "
                        "command started may outlive it", exc)
            self.proc = None
        self._send(f"{token}\n")

    def _send(self, text: str) -> None:
        if self.proc is None or self.proc.stdin is None or self.proc.stdin.closed:
            return
        try:
            self.proc.stdin.write(text.encode())
            self.proc.stdin.flush()
        except OSError:  # the guard is gone: the child still dies with this process
            pass

    def watch(self, pgid: int) -> None:
        self._send(f"{pgid}\n")

    def release(self) -> None:
        """The trial's processes are gone: the guard leaves without doing anything."""
        if self.proc is None:
            return
        self._send("done\n")
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - it exits as soon as it reads "done"
            self.proc.kill()
            self.proc.wait()


def start(argv: list[str], cwd: str, env: dict, token: str) -> tuple[subprocess.Popen, Guard]:
    """The child in its own session, dying with this thread, and its guard."""
    guard = Guard(token)
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                                preexec_fn=die_with_parent())
    except OSError as exc:
        guard.release()
        raise TrialFailure("exec", f"cannot run {argv[0]!r}: {exc.strerror or exc}") from None
    except subprocess.SubprocessError as exc:  # the preexec_fn failed in the child
        guard.release()
        raise TrialFailure("exec", f"cannot run {argv[0]!r}: {exc}") from None
    guard.watch(proc.pid)
    return proc, guard
