"""What accelerator a worker process has, and how much memory it may use."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess


@functools.lru_cache(maxsize=1)
def gpu_memory_bytes() -> int | None:
    """Total memory of the first visible NVIDIA GPU, or None without one."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return None
    if shutil.which("nvidia-smi") is None:
        return None
    cmd = ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"]
    if visible:
        cmd.append(f"--id={visible.split(',')[0]}")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
        return int(float(out[0])) * 1024 * 1024 if out else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def has_gpu() -> bool:
    return gpu_memory_bytes() is not None


def device_memory_bytes() -> int:
    """The memory a trial may fill: the GPU's, else the host's available RAM."""
    gpu = gpu_memory_bytes()
    if gpu:
        return gpu
    import psutil

    return int(psutil.virtual_memory().available)
