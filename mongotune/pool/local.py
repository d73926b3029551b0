"""Local worker processes: one per GPU, or N on the CPU.

``launch --workers K`` uses this to start a pool on the machine it runs on.
Each worker is a separate ``mongotune worker`` process so that
``CUDA_VISIBLE_DEVICES`` is set before TensorFlow loads.  The MongoDB URL
reaches the workers through a file only the user can read
(``MONGOTUNE_MONGO_FILE``), never on their command lines or in their
environment, so a password in it never shows in ``ps``.

The workers end when the process that started them ends, however it ends
(SIGKILL and the OOM killer included): each holds the read end of a pipe
whose write end only this process has (``LIFELINE_ENV`` names the
descriptor); when the pipe closes, the worker stops as on SIGTERM, handing
its trial back.  This works whichever thread calls ``start``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from .. import paths

SECRET_ENV = ("MONGOTUNE_MONGO", "MONGOTUNE_MONGO_PASSWORD", "MONGOTUNE_MONGO_PASSWORD_FILE")
LIFELINE_ENV = "MONGOTUNE_LIFELINE_FD"  # a worker's end of the pipe to the process that started it


def visible_gpus() -> list[str]:
    """GPU indices from ``nvidia-smi -L`` (empty when there is no NVIDIA GPU)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


def worker_env(gpu: str | None, cpu_share: int, url_file: str | None = None) -> dict:
    """Environment of one worker: its GPU pinned, or a fair share of the CPU threads."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    if url_file:
        env["MONGOTUNE_MONGO_FILE"] = url_file
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
        threads = str(max(1, cpu_share))
        for var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
            env.setdefault(var, threads)
        env.setdefault("TF_NUM_INTEROP_THREADS", "1")
    return env


def write_secret(text: str, directory: Path | None = None) -> Path:
    """``text`` in a new file readable by this user only; the caller deletes it."""
    directory = directory or paths.home() / "run"
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    path = directory / f"mongo-{uuid.uuid4().hex}.url"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


class LocalPool:
    def __init__(self, url: str, count: int, *, study: str | None = None, gpus: list[str] | None = None,
                 log_dir: str | Path | None = None, extra_args: list[str] | None = None,
                 allow_user_code: bool = False, allowed_roots: list[str] | None = None):
        self.url = url
        self.count = count
        self.study = study
        self.gpus = visible_gpus() if gpus is None else gpus
        self.log_dir = Path(log_dir or paths.logs_dir())
        self.extra_args = list(extra_args or [])
        if allow_user_code:
            self.extra_args.append("--allow-user-code")
        for root in allowed_roots or []:
            self.extra_args += ["--allow-root", str(root)]
        self.procs: list[subprocess.Popen] = []
        self.log_paths: list[Path] = []
        self.url_file: Path | None = None
        self._lifeline: int | None = None  # the write end; the kernel closes it when this process ends

    def start(self) -> "LocalPool":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.url_file = write_secret(self.url)
        share = max(1, (os.cpu_count() or 1) // max(1, self.count))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        read_end, self._lifeline = os.pipe()  # neither end is inherited unless passed on
        try:
            for i in range(self.count):
                gpu = self.gpus[i % len(self.gpus)] if self.gpus else None
                cmd = [sys.executable, "-m", "mongotune", "worker", "--gpu", gpu if gpu is not None else "none",
                       *self.extra_args]
                if self.study:
                    cmd += ["--study", self.study]
                log_path = self.log_dir / f"worker-{stamp}-{i}.log"
                env = {**worker_env(gpu, share, str(self.url_file)), LIFELINE_ENV: str(read_end)}
                with open(log_path, "ab") as out:
                    self.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                                       stdin=subprocess.DEVNULL, pass_fds=(read_end,), env=env))
                self.log_paths.append(log_path)
        finally:
            os.close(read_end)
        return self

    def alive(self) -> int:
        return sum(1 for p in self.procs if p.poll() is None)

    def stop(self, timeout: float = 30.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if self.url_file is not None:
            self.url_file.unlink(missing_ok=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
