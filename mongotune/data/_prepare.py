"""Resizing, channel conversion and the stratified splits.

Everything here is deterministic: the same raw data and the same
:class:`DataSpec` give byte-identical arrays.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mongotune.errors import DataError

from ._sources import TEST_SPLIT_FRACTION, TEST_SPLIT_SEED, RawData
from ._spec import DataSpec

Progress = Callable[[str, int, "int | None"], None]

RESIZE_CHUNK = 1024


def cv2_flag(interpolation: str) -> int:
    import cv2

    return {
        "area": cv2.INTER_AREA,
        "linear": cv2.INTER_LINEAR,
        "cubic": cv2.INTER_CUBIC,
        "lanczos": cv2.INTER_LANCZOS4,
        "nearest": cv2.INTER_NEAREST,
    }[interpolation]


def transform_image(img: np.ndarray, size: int | None, interpolation: str,
                    channels: int | None) -> np.ndarray:
    """One (H, W, C) uint8 image -> (size, size, channels) uint8."""
    import cv2

    c_in = img.shape[2]
    c_out = channels or c_in
    work = img
    if c_in == 3 and c_out == 1:  # fewer pixels to resize if we convert first
        work = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)[..., None]
    if size is not None and work.shape[:2] != (size, size):
        src = np.ascontiguousarray(work[..., 0] if work.shape[2] == 1 else work)
        resized = cv2.resize(src, (size, size), interpolation=cv2_flag(interpolation))
        work = resized[..., None] if resized.ndim == 2 else resized
    if work.shape[2] == 1 and c_out == 3:
        work = np.repeat(work, 3, axis=2)
    return work


def output_shape(images: np.ndarray | Sequence[np.ndarray], spec: DataSpec,
                 dataset: str) -> tuple[int, int, int]:
    first = images[0]
    channels = spec.channels or first.shape[-1]
    if spec.size is not None:
        return spec.size, spec.size, channels
    shapes = {tuple(im.shape[:2]) for im in images} if isinstance(images, list) else {first.shape[:2]}
    if len(shapes) > 1:
        raise DataError(f"{dataset}: images differ in size ({len(shapes)} sizes); pass --size")
    h, w = first.shape[:2]
    return h, w, channels


def transform_into(
    out: np.ndarray,
    images: np.ndarray | Sequence[np.ndarray],
    index: np.ndarray,
    size: int | None,
    interpolation: str,
    channels: int | None,
    *,
    progress: Progress | None = None,
    stage: str = "resize",
    threads: int | None = None,
) -> None:
    """``out[i] = transform(images[index[i]])`` for every i, on a few threads.

    cv2.resize releases the GIL, so threads scale with cores; each chunk
    writes a disjoint slice of ``out`` (which may be a memmap).
    """
    n = len(index)
    if progress is not None:
        progress(stage, 0, n)
    if n == 0:
        return

    def work(lo: int) -> int:
        hi = min(lo + RESIZE_CHUNK, n)
        for i in range(lo, hi):
            out[i] = transform_image(images[index[i]], size, interpolation, channels)
        return hi - lo

    workers = threads or min(4, os.cpu_count() or 1)
    done = 0
    if workers == 1 or n <= RESIZE_CHUNK:
        for lo in range(0, n, RESIZE_CHUNK):
            done += work(lo)
            if progress is not None:
                progress(stage, done, n)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for count in pool.map(work, range(0, n, RESIZE_CHUNK)):
            done += count
            if progress is not None:
                progress(stage, done, n)


def resize_batch(images: np.ndarray, size: int, interpolation: str = "area",
                 channels: int | None = None, threads: int | None = None) -> np.ndarray:
    """Resize an (N, H, W, C) batch in memory; the function the cache uses."""
    cv2_flag(interpolation)  # KeyError early for an unknown name
    c = channels or images.shape[-1]
    out = np.empty((len(images), size, size, c), dtype=np.uint8)
    transform_into(out, images, np.arange(len(images)), size, interpolation, channels,
                   threads=threads)
    return out


# --- splits ------------------------------------------------------------------


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of ``y`` into (keep, held_out), stratified by label.

    The held-out count is ``round(len(y) * fraction)``, shared out over the
    classes by largest remainder so that every class contributes its share;
    every class keeps at least one member.  Both index arrays are sorted, so
    the original order of the images is preserved within a split.
    """
    y = np.asarray(y)
    n = len(y)
    if n == 0 or fraction <= 0:
        return np.arange(n), np.arange(0)
    classes, counts = np.unique(y, return_counts=True)
    ideal = counts * fraction
    take = np.floor(ideal).astype(np.int64)
    remaining = int(round(n * fraction)) - int(take.sum())
    if remaining > 0:
        # Largest remainders first; ties go to the lower class (stable sort).
        order = np.argsort(-(ideal - take), kind="stable")
        take[order[:remaining]] += 1
    take = np.minimum(take, counts - 1)
    rng = np.random.default_rng(seed)
    held = []
    for cls, k in zip(classes, take):
        members = np.flatnonzero(y == cls)
        if k > 0:
            held.append(rng.permutation(members)[:k])
        else:
            rng.permutation(members)  # same draws per class whatever its share
    held_idx = np.sort(np.concatenate(held)) if held else np.arange(0)
    mask = np.ones(n, dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


def plan_splits(raw: RawData, spec: DataSpec) -> dict:
    """Index arrays into the raw train/test pools for train, val and test.

    Returns ``{split: (pool, index)}`` where pool is ``"train"`` or ``"test"``.
    """
    y = raw.y_train
    if raw.x_test is None:
        pool_idx, test_idx = stratified_split(y, TEST_SPLIT_FRACTION, TEST_SPLIT_SEED)
        test = ("train", test_idx)
    else:
        pool_idx = np.arange(len(y))
        test = ("test", np.arange(len(raw.y_test)))
    keep, val = stratified_split(y[pool_idx], spec.val_fraction, spec.seed)
    plan = {"train": ("train", pool_idx[keep]), "val": ("train", pool_idx[val]), "test": test}
    if len(plan["train"][1]) == 0:
        raise DataError(f"{spec.name}: no training images left after the validation split")
    return plan


def write_arrays(raw: RawData, spec: DataSpec, folder: Path,
                 progress: Progress | None = None) -> dict:
    """Write x/y .npy files of every split into ``folder``; returns a summary."""
    plan = plan_splits(raw, spec)
    pools_x = {"train": raw.x_train, "test": raw.x_test}
    pools_y = {"train": raw.y_train, "test": raw.y_test}
    pools_extra = {"train": raw.extra_train, "test": raw.extra_test}
    shape = output_shape(raw.x_train, spec, spec.name)
    if raw.x_test is not None and spec.size is None:
        test_shape = output_shape(raw.x_test, spec, spec.name)
        if test_shape != shape:
            raise DataError(f"{spec.name}: test images {test_shape} differ from train {shape}; pass --size")
    sizes = {}
    for split, (pool, index) in plan.items():
        x_path = folder / f"x_{split}.npy"
        out = np.lib.format.open_memmap(x_path, mode="w+", dtype=np.uint8,
                                        shape=(len(index), *shape))
        transform_into(out, pools_x[pool], index, spec.size, spec.interpolation, spec.channels,
                       progress=progress, stage=f"resize {split}")
        out.flush()
        del out
        np.save(folder / f"y_{split}.npy", np.asarray(pools_y[pool], dtype=np.int64)[index])
        for label, values in pools_extra[pool].items():
            np.save(folder / f"y_{split}__{label}.npy", np.asarray(values, dtype=np.int64)[index])
        sizes[split] = int(len(index))
    native = raw.x_train[0].shape
    return {
        "splits": sizes,
        "image_shape": list(shape),
        "native_shape": [int(v) for v in native],
        "test_split": ("official" if raw.x_test is not None else
                       f"carved: {TEST_SPLIT_FRACTION:g} of the data, stratified, seed {TEST_SPLIT_SEED}"),
    }
