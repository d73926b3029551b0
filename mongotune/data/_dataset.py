"""The ``Dataset`` handed to training code: memory-mapped arrays plus metadata."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

import numpy as np

from ._spec import DataSpec


@dataclass(eq=False)
class Dataset:
    """Train/validation/test arrays of one prepared cache.

    ``x_*`` are uint8 (N, H, W, C) arrays memory-mapped read-only from the
    cache (scale to [0, 1] inside the model); ``y_*`` are int64 (N,).
    ``extra_labels`` holds other label sets of the same images, e.g.
    ``{'coarse': {'train': ..., 'val': ..., 'test': ...}}`` for CIFAR-100.
    """

    spec: DataSpec
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    extra_labels: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    extra_class_names: dict[str, list[str]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    path: pathlib.Path = field(default_factory=pathlib.Path)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        h, w, c = self.x_train.shape[1:]
        return int(h), int(w), int(c)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of ``'train'``, ``'val'`` or ``'test'``."""
        if name not in ("train", "val", "test"):
            raise KeyError(name)
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(getattr(self, 'y_' + s))}" for s in ("train", "val", "test"))
        return (f"Dataset({self.spec.cache_key()!r}, {sizes}, input_shape={self.input_shape}, "
                f"classes={self.num_classes}, path='{self.path}')")
