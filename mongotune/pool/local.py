"""Local worker processes: one per GPU, or N on the CPU.

``launch --workers K`` and ``workers/run-pool.sh`` use this to start a pool
on the machine they run on.  Each worker is a separate ``mongotune worker``
process so that ``CUDA_VISIBLE_DEVICES`` is set before TensorFlow loads.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .. import paths


def visible_gpus() -> list[str]:
    """GPU indices from ``nvidia-smi -L`` (empty when there is no NVIDIA GPU)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


def worker_env(gpu: str | None, cpu_share: int) -> dict:
    """Environment of one worker: its GPU pinned, or a fair share of the CPU threads."""
    env = os.environ.copy()
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
        threads = str(max(1, cpu_share))
        for var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
            env.setdefault(var, threads)
        env.setdefault("TF_NUM_INTEROP_THREADS", "1")
    return env


class LocalPool:
    def __init__(self, url: str, count: int, *, study: str | None = None, gpus: list[str] | None = None,
                 log_dir: str | Path | None = None, extra_args: list[str] | None = None):
        self.url = url
        self.count = count
        self.study = study
        self.gpus = visible_gpus() if gpus is None else gpus
        self.log_dir = Path(log_dir or paths.logs_dir())
        self.extra_args = extra_args or []
        self.procs: list[subprocess.Popen] = []
        self.log_paths: list[Path] = []

    def start(self) -> "LocalPool":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        share = max(1, (os.cpu_count() or 1) // max(1, self.count))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for i in range(self.count):
            gpu = self.gpus[i % len(self.gpus)] if self.gpus else None
            cmd = [sys.executable, "-m", "mongotune", "worker", "--mongo", self.url,
                   "--gpu", gpu if gpu is not None else "none", *self.extra_args]
            if self.study:
                cmd += ["--study", self.study]
            log_path = self.log_dir / f"worker-{stamp}-{i}.log"
            with open(log_path, "ab") as out:
                self.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL, env=worker_env(gpu, share)))
            self.log_paths.append(log_path)
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

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
