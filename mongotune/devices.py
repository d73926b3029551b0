"""What accelerator a worker process has, and how much memory it may use."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess


_CPU_WORDS = ("none", "cpu", "-1")


def cuda_visible_devices(gpu: str) -> str:
    """``CUDA_VISIBLE_DEVICES`` for a worker's ``--gpu``: an index (``0``), a list of them (``0,1``), a device
    UUID (``GPU-...``, ``MIG-...``), or ``none``/``cpu``/``-1`` for the CPU (``""``).  ConfigError otherwise."""
    import re

    from .errors import ConfigError

    text = gpu.strip() if isinstance(gpu, str) else ""
    if text.lower() in _CPU_WORDS:
        return ""
    items = text.split(",")
    if text and all(re.fullmatch(r"\d{1,3}|(?:GPU|MIG)-[0-9A-Za-z/-]+", i.strip()) for i in items):
        return ",".join(i.strip() for i in items)
    raise ConfigError(f"--gpu {gpu!r}: give a GPU index (0, 1, ...), a comma-separated list of them, a GPU-/MIG- "
                      "UUID, or none for the CPU")


@functools.lru_cache(maxsize=1)
def gpu_memory_bytes() -> int | None:
    """Total memory of the first visible NVIDIA GPU (from ``nvidia-smi``), or None without one.

    Used for the memory guard's budget only; whether the backend can use the
    GPU at all is ``has_gpu``'s question.
    """
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


@functools.lru_cache(maxsize=1)
def backend_gpus() -> int:
    """How many GPUs the Keras backend itself can use in this process.

    This, not ``nvidia-smi``, decides "auto" mixed precision and XLA: a
    CPU-only TensorFlow (or JAX, or PyTorch) build on a machine with a GPU
    cannot use it, and must not switch to float16 for it.
    """
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return len(tf.config.list_physical_devices("GPU"))
        if backend == "jax":
            import jax

            return sum(1 for d in jax.devices() if d.platform == "gpu")
        if backend == "torch":
            import torch

            return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a backend that cannot list devices has none we can use
        return 0
    return 0


def has_gpu() -> bool:
    """Does the Keras backend have a GPU to train on?"""
    return backend_gpus() > 0


_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30,
          "kb": 10**3, "mb": 10**6, "gb": 10**9}


def parse_bytes(text: str) -> int:
    """``"8GiB"``, ``"512MiB"``, ``"1e9"`` -> bytes."""
    import re

    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read {text!r} as a size (e.g. 8GiB, 512MiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def device_memory_bytes() -> int:
    """The memory a trial may fill: the GPU's, else the host's available RAM.

    ``MONGOTUNE_MEMORY_LIMIT`` (e.g. ``12GiB``) caps it, for workers that share
    a device with other work.
    """
    limit = os.environ.get("MONGOTUNE_MEMORY_LIMIT")
    if limit:
        return parse_bytes(limit)
    gpu = gpu_memory_bytes()
    if gpu:
        return gpu
    import psutil

    return int(psutil.virtual_memory().available)
