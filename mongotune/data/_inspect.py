"""PNG pictures of a dataset, to look at before training on it.

* ``samples.png``: the first few training images of each class.
* ``resize_compare.png``: the same native images resized to the target size
  by each OpenCV interpolation and by TensorFlow's ``tf.image.resize``, side
  by side, shown pixel for pixel (no smoothing by the plot itself).  The
  TensorFlow results are rounded and clipped to uint8, which is what storing
  them would do; ``resize_compare.json`` says how far each method is from
  OpenCV's area interpolation and how many TensorFlow values left [0, 255].
* ``label_distribution.png``: images per class in train, val and test.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mongotune.errors import DataError

from ._prepare import transform_image
from ._sources import load_raw
from ._spec import INTERPOLATIONS, DataSpec

Progress = Callable[[str, int, "int | None"], None]

MAX_CLASS_ROWS = 20
COMPARE_IMAGES = 5
TF_METHODS = ("bilinear", "bicubic", "area", "lanczos3", "nearest")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _show(ax, img: np.ndarray) -> None:
    if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _samples(ds, out: Path, per_class: int) -> Path:
    rows = min(ds.num_classes, MAX_CLASS_ROWS)
    fig = _figure(1.0 * per_class + 1.8, 1.0 * rows + 0.6)
    title = f"{ds.spec.cache_key()}: first {per_class} training images per class"
    if rows < ds.num_classes:
        title += f" (first {rows} of {ds.num_classes} classes)"
    fig.suptitle(title, fontsize=9)
    y = np.asarray(ds.y_train)
    for r in range(rows):
        idx = np.flatnonzero(y == r)[:per_class]
        for c in range(per_class):
            ax = fig.add_subplot(rows, per_class, r * per_class + c + 1)
            if c < len(idx):
                _show(ax, np.asarray(ds.x_train[idx[c]]))
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(ds.class_names[r], rotation=0, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(left=0.16, right=0.99, top=0.94, bottom=0.01, wspace=0.05, hspace=0.08)
    path = out / "samples.png"
    fig.savefig(path)
    return path


def _tf_resizer() -> tuple[str, Callable[[np.ndarray, int, str], np.ndarray]] | None:
    """``(label, resize)`` using TensorFlow if it imports, else Keras; None if neither."""
    from .._quiet import native_stderr_silenced

    try:
        with native_stderr_silenced():  # TF's native start-up and device probing write to fd 2
            import tensorflow as tf

            tf.config.list_physical_devices()

        def resize(batch: np.ndarray, size: int, method: str) -> np.ndarray:
            with native_stderr_silenced():
                return tf.image.resize(tf.convert_to_tensor(batch, tf.float32), (size, size),
                                       method=method).numpy()

        return f"tf.image.resize (TF {tf.__version__})", resize
    except Exception:  # pragma: no cover - TF is a dependency, this is a fallback
        pass
    try:  # pragma: no cover
        import keras

        def resize(batch: np.ndarray, size: int, method: str) -> np.ndarray:
            return np.asarray(keras.ops.image.resize(batch.astype("float32"), (size, size),
                                                     interpolation=method))

        return f"keras.ops.image.resize (Keras {keras.__version__})", resize
    except Exception:  # pragma: no cover
        return None


def _compare(spec: DataSpec, raw, out: Path, compare_tf: bool) -> list[Path]:
    size = spec.size or 128
    y = np.asarray(raw.y_train)
    picks = []
    for cls in np.unique(y)[:COMPARE_IMAGES]:
        picks.append(int(np.flatnonzero(y == cls)[0]))
    originals = [np.asarray(raw.x_train[i]) for i in picks]
    columns: list[tuple[str, list[np.ndarray]]] = [
        (f"original\n{originals[0].shape[0]}x{originals[0].shape[1]}", originals)]
    for interp in INTERPOLATIONS:
        columns.append((f"cv2 {interp}",
                        [transform_image(im, size, interp, None) for im in originals]))
    stats: dict = {"size": size, "reference": "cv2 area", "methods": {}}
    tf_label = None
    if compare_tf:
        resizer = _tf_resizer()
        if resizer is not None:
            tf_label, resize = resizer
            same_shape = len({im.shape for im in originals}) == 1
            for method in TF_METHODS:
                if same_shape:
                    floats = list(resize(np.stack(originals), size, method))
                else:
                    floats = [resize(im[None], size, method)[0] for im in originals]
                outside = sum(int(((f < 0) | (f > 255)).sum()) for f in floats)
                images = [np.clip(np.rint(f), 0, 255).astype(np.uint8) for f in floats]
                columns.append((f"tf {method}", images))
                stats["methods"][f"tf {method}"] = {"values_outside_0_255": outside}
    reference = columns[1][1]
    for label, images in columns[1:]:
        diff = np.mean([np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()
                        for a, b in zip(images, reference)])
        stats["methods"].setdefault(label, {})["mean_abs_diff_vs_cv2_area"] = round(float(diff), 3)
    stats["tensorflow"] = tf_label or "not compared"

    n_rows, n_cols = len(originals), len(columns)
    height = 1.6 * n_rows + 0.9
    fig = _figure(1.6 * n_cols, height)
    versus = tf_label or ("TensorFlow (not available)" if compare_tf else "TensorFlow (not compared)")
    fig.suptitle(f"{spec.name}: resized to {size}x{size}, OpenCV (cv2.resize) vs {versus}; "
                 "pixels shown unsmoothed", fontsize=9)
    for c, (label, images) in enumerate(columns):
        for r, img in enumerate(images):
            ax = fig.add_subplot(n_rows, n_cols, r * n_cols + c + 1)
            _show(ax, img)
            if r == 0:
                ax.set_title(label, fontsize=8)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.7 / height, bottom=0.01,
                        wspace=0.05, hspace=0.05)
    png = out / "resize_compare.png"
    fig.savefig(png)
    js = out / "resize_compare.json"
    js.write_text(json.dumps(stats, indent=1))
    return [png, js]


def _distribution(ds, out: Path) -> Path:
    k = ds.num_classes
    long_names = max(len(n) for n in ds.class_names) > 3
    fig = _figure(max(6.0, 0.12 * k + 3), 6.0 + (0.6 if long_names else 0.0))
    fig.suptitle(f"{ds.spec.cache_key()}: images per class", fontsize=9)
    splits = (("train", ds.y_train), ("val", ds.y_val), ("test", ds.y_test))
    for i, (split, y) in enumerate(splits):
        counts = np.bincount(np.asarray(y), minlength=k)[:k]
        ax = fig.add_subplot(3, 1, i + 1)
        ax.bar(np.arange(k), counts, color=("tab:blue", "tab:orange", "tab:green")[i])
        ax.set_ylabel(f"{split}\n(n={len(y)})", fontsize=8)
        ax.tick_params(labelsize=7)
        if k <= 20:
            ax.set_xticks(np.arange(k))
            rotate = 45 if long_names and i == 2 else 0
            ax.set_xticklabels(ds.class_names if i == 2 else [""] * k, rotation=rotate,
                               ha="right" if rotate else "center", fontsize=7)
        else:
            ax.set_xticks([])
        ax.set_xlim(-0.6, k - 0.4)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.93, bottom=0.16 if long_names else 0.07,
                        hspace=0.25)
    path = out / "label_distribution.png"
    fig.savefig(path)
    return path


def inspect(spec: DataSpec, out: Path, *, cache_dir: Path, progress: Progress | None = None,
            per_class: int = 8, compare_tf: bool = True) -> list[Path]:
    from . import prepare

    if per_class < 1:
        raise DataError("inspect: per_class must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = prepare(spec, cache_dir, progress=progress)
    written = [_samples(ds, out, per_class)]
    if progress is not None:
        progress("inspect", 1, 3)
    raw = load_raw(spec, cache_dir, progress)
    written += _compare(spec, raw, out, compare_tf)
    if progress is not None:
        progress("inspect", 2, 3)
    written.append(_distribution(ds, out))
    if progress is not None:
        progress("inspect", 3, 3)
    return written
