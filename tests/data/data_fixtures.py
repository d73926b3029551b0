"""Writers of small IDX, CIFAR, image-folder and npz sources for the data
pipeline tests, and helpers that point the checksum table at them.

(A plain module rather than conftest.py: several conftest.py files in the
test tree would shadow each other under the name ``conftest``.)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mongotune.data import _sources
from mongotune.data._sources import REMOTE, RemoteFile


def md5_of(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


# --- IDX (MNIST / Fashion-MNIST) ---------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array, written independently of the library."""
    assert array.dtype == np.uint8
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def imbalanced_labels(rng, counts) -> np.ndarray:
    y = np.concatenate([np.full(c, k) for k, c in enumerate(counts)]).astype(np.uint8)
    return rng.permutation(y)


@dataclass
class Arrays:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


IDX_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def make_idx_dir(folder: Path, seed: int = 0, gz: bool = True) -> Arrays:
    """A hand-download folder with the four (small) IDX files."""
    rng = np.random.default_rng(seed)
    y_train = imbalanced_labels(rng, [30, 40, 50, 60, 70, 80, 90, 100, 110, 120])  # 750
    y_test = imbalanced_labels(rng, [10] * 10)
    x_train = rng.integers(0, 256, (len(y_train), 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, (len(y_test), 28, 28), dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in zip(IDX_NAMES, (x_train, y_train, x_test, y_test)):
        blob = idx_bytes(arr)
        if gz:
            (folder / name).write_bytes(gzip.compress(blob, mtime=0))
        else:
            (folder / name.removesuffix(".gz")).write_bytes(blob)
    return Arrays(x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64))


def trust_fixture(monkeypatch, dataset: str, folder: Path, urls: dict[str, tuple[str, ...]] | None = None):
    """Point REMOTE[dataset] at the md5s of the fixture files in ``folder``."""
    files = []
    for rf in REMOTE[dataset]:
        path = folder / rf.filename
        files.append(RemoteFile(rf.filename, (urls or {}).get(rf.filename, ()),
                                md5=md5_of(path) if path.exists() else None))
    monkeypatch.setitem(REMOTE, dataset, tuple(files))


# --- CIFAR --------------------------------------------------------------------------


def _py2_style_pickle(obj) -> bytes:
    # The published batches were pickled by Python 2 with numpy.core; mimic that.
    blob = pickle.dumps(obj, protocol=2)
    return blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def make_cifar_tar(path: Path, kind: str, seed: int = 0, extract_to: Path | None = None) -> dict:
    """A tiny cifar-10/100-python.tar.gz with the published layout."""
    rng = np.random.default_rng(seed)
    layout = _sources.CIFAR_LAYOUT[kind]
    n_classes = 10 if kind == "cifar10" else 20  # 20 fine classes keep cifar100 small
    members: dict[str, bytes] = {}
    train_x, train_fine, train_coarse = [], [], []
    for i, member in enumerate(layout["train"]):
        n = 60
        fine = rng.permutation(np.arange(n) % n_classes)
        x = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        coarse = fine // 4
        batch = {b"batch_label": f"training batch {i + 1}".encode(), b"data": x}
        if kind == "cifar10":
            batch[b"labels"] = [int(v) for v in fine]
        else:
            batch[b"fine_labels"] = [int(v) for v in fine]
            batch[b"coarse_labels"] = [int(v) for v in coarse]
        members[member] = _py2_style_pickle(batch)
        train_x.append(x)
        train_fine.append(fine)
        train_coarse.append(coarse)
    n = 40
    fine = rng.permutation(np.arange(n) % n_classes)
    xt = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
    batch = {b"data": xt}
    if kind == "cifar10":
        batch[b"labels"] = [int(v) for v in fine]
        meta = {b"label_names": [f"class{k}".encode() for k in range(n_classes)]}
    else:
        batch[b"fine_labels"] = [int(v) for v in fine]
        batch[b"coarse_labels"] = [int(v) for v in fine // 4]
        meta = {b"fine_label_names": [f"fine{k}".encode() for k in range(n_classes)],
                b"coarse_label_names": [f"coarse{k}".encode() for k in range(n_classes // 4)]}
    members[layout["test"][0]] = _py2_style_pickle(batch)
    members[layout["meta"]] = _py2_style_pickle(meta)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"{layout['folder']}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    if extract_to is not None:
        folder = extract_to / layout["folder"]
        folder.mkdir(parents=True, exist_ok=True)
        for name, blob in members.items():
            (folder / name).write_bytes(blob)

    def nhwc(x):
        return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)

    return {
        "x_train": nhwc(np.concatenate(train_x)), "y_train": np.concatenate(train_fine),
        "coarse_train": np.concatenate(train_coarse),
        "x_test": nhwc(xt), "y_test": fine, "coarse_test": fine // 4,
        "members": members,
    }


# --- image folder and npz ---------------------------------------------------------------


def make_folder(root: Path, seed: int = 0, split: bool = False, sizes=((20, 24),)) -> dict:
    """class_name/*.png (and .jpg) images; with ``split`` a train/ and test/ level."""
    rng = np.random.default_rng(seed)
    classes = {"cat": 12, "dog": 18, "emu": 9}
    out = {"train": {}, "test": {}}
    for part, scale in (("train", 1), ("test", 0)) if split else (("train", 1),):
        base = root / part if split else root
        for name, count in classes.items():
            folder = base / name
            folder.mkdir(parents=True, exist_ok=True)
            n = count if scale else 3
            images = []
            for i in range(n):
                h, w = sizes[i % len(sizes)]
                img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # RGB
                cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
                images.append(img)
            out[part][name] = images
    (root / ("train" if split else "") / "cat" / "notes.txt").write_text("not an image")
    return out


def make_npz(path: Path, seed: int = 0, with_test: bool = True, n: int = 300,
             shape=(16, 16), dtype=np.uint8) -> dict:
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 5).astype(np.int64)
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    arrays = {"x": x.astype(dtype) / (255.0 if np.issubdtype(dtype, np.floating) else 1), "y": y}
    if with_test:
        arrays["x_test"] = rng.integers(0, 256, (50, *shape), dtype=np.uint8)
        arrays["y_test"] = rng.permutation(np.arange(50) % 5)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return {"x": x, "y": y, **{k: v for k, v in arrays.items() if k.endswith("_test")}}


def resize_each(x: np.ndarray, size: int, interpolation: int) -> np.ndarray:
    """Reference resize: cv2.resize one image at a time, keeping a channel axis."""
    out = []
    for img in x:
        src = img[..., 0] if img.ndim == 3 and img.shape[2] == 1 else img
        r = cv2.resize(src, (size, size), interpolation=interpolation)
        out.append(r[..., None] if r.ndim == 2 else r)
    return np.stack(out)
