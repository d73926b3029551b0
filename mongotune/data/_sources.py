"""Where raw images come from: downloads, hand-downloaded files, scikit-learn,
image folders and ``.npz`` files.

Every loader returns a :class:`RawData` of uint8 NHWC images at their native
size plus int64 labels; resizing and splitting happen in ``_prepare``.

Downloaded (and hand-downloaded) files are verified against the published
checksums in :data:`REMOTE`.  Files without a known checksum (uncompressed
IDX files, for example) are pinned on first use: the sha256 of the first copy
that loads cleanly is recorded in ``<cache>/downloads/pins.json`` and later
reads must match it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mongotune.errors import DataError

from ._download import check_digests, download, file_digests
from ._idx import read_idx
from ._lock import file_lock
from ._spec import DataSpec

Progress = Callable[[str, int, "int | None"], None]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: The fixed seed and fraction used to carve a test split for sources that have
#: none (digits, a folder or .npz without one).  Independent of DataSpec.seed,
#: so that changing the validation seed never moves images in or out of test.
TEST_SPLIT_SEED = 20200306
TEST_SPLIT_FRACTION = 0.2


@dataclass(frozen=True)
class RemoteFile:
    """One published file: its name, mirrors and checksums (None = unknown)."""

    filename: str
    urls: tuple[str, ...]
    md5: str | None
    sha256: str | None = None
    size: int | None = None  # bytes; only a hint for progress bars

    @property
    def expected(self) -> dict[str, str | None]:
        return {"md5": self.md5, "sha256": self.sha256}


def _mirrors(filename: str, *bases: str) -> tuple[str, ...]:
    return tuple(base + filename for base in bases)


_FASHION = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
_MNIST = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_TORONTO = ("https://www.cs.toronto.edu/~kriz/",)

#: Published files.  MD5s are the ones published by the dataset authors (and
#: used by torchvision); the sha256s are the ones Keras' loaders check.
REMOTE: dict[str, tuple[RemoteFile, ...]] = {
    "fashion_mnist": (
        RemoteFile("train-images-idx3-ubyte.gz", _mirrors("train-images-idx3-ubyte.gz", *_FASHION),
                   md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d", size=26421880),
        RemoteFile("train-labels-idx1-ubyte.gz", _mirrors("train-labels-idx1-ubyte.gz", *_FASHION),
                   md5="25c81989df183df01b3e8a0aad5dffbe", size=29515),
        RemoteFile("t10k-images-idx3-ubyte.gz", _mirrors("t10k-images-idx3-ubyte.gz", *_FASHION),
                   md5="bef4ecab320f06d8554ea6380940ec79", size=4422102),
        RemoteFile("t10k-labels-idx1-ubyte.gz", _mirrors("t10k-labels-idx1-ubyte.gz", *_FASHION),
                   md5="bb300cfdad3c16e7a12a480ee83cd310", size=5148),
    ),
    "mnist": (
        RemoteFile("train-images-idx3-ubyte.gz", _mirrors("train-images-idx3-ubyte.gz", *_MNIST),
                   md5="f68b3c2dcbeaaa9fbdd348bbdeb94873",
                   sha256="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                   size=9912422),
        RemoteFile("train-labels-idx1-ubyte.gz", _mirrors("train-labels-idx1-ubyte.gz", *_MNIST),
                   md5="d53e105ee54ea40749a09fcbcd1e9432",
                   sha256="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                   size=28881),
        RemoteFile("t10k-images-idx3-ubyte.gz", _mirrors("t10k-images-idx3-ubyte.gz", *_MNIST),
                   md5="9fb629c4189551a2d022fa330f9573f3",
                   sha256="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                   size=1648877),
        RemoteFile("t10k-labels-idx1-ubyte.gz", _mirrors("t10k-labels-idx1-ubyte.gz", *_MNIST),
                   md5="ec29112dd5afa0611ce80d1b7f02629c",
                   sha256="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                   size=4542),
    ),
    "cifar10": (
        RemoteFile("cifar-10-python.tar.gz", _mirrors("cifar-10-python.tar.gz", *_TORONTO),
                   md5="c58f30108f718f92721af3b95e74349a",
                   sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                   size=170498071),
    ),
    "cifar100": (
        RemoteFile("cifar-100-python.tar.gz", _mirrors("cifar-100-python.tar.gz", *_TORONTO),
                   md5="eb9058c3a382ffc7106e4002c42a8d85",
                   sha256="85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
                   size=169001437),
    ),
}

#: Layout of the CIFAR archives, and the md5 of each member, used when the
#: user points --source at an already extracted folder.
CIFAR_LAYOUT: dict[str, dict] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"),
        "test": ("test_batch",),
        "meta": "batches.meta",
        "members_md5": {
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        },
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ("train",),
        "test": ("test",),
        "meta": "meta",
        "members_md5": {
            "train": "16019d7e3df5f24257cddd939b257f8d",
            "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "meta": "7973b15100ade9c7d40fb424638fde48",
        },
    },
}

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


@dataclass
class RawData:
    """Native-size images of one source, before resizing and splitting.

    ``x_train`` is an (N, H, W, C) uint8 array, or a list of (H, W, C) arrays
    when images differ in size (image folders).  ``x_test`` is None when the
    source has no official test split; one is then carved out.
    """

    x_train: np.ndarray | list[np.ndarray]
    y_train: np.ndarray
    x_test: np.ndarray | list[np.ndarray] | None
    y_test: np.ndarray | None
    class_names: list[str]
    extra_train: dict[str, np.ndarray] = field(default_factory=dict)
    extra_test: dict[str, np.ndarray] = field(default_factory=dict)
    extra_class_names: dict[str, list[str]] = field(default_factory=dict)
    source: dict = field(default_factory=dict)


# --- pins: checksums recorded on first use -----------------------------------


class Pins:
    """sha256 of files that have no published checksum, recorded on first use."""

    def __init__(self, cache_dir: Path):
        self.path = cache_dir / "downloads" / "pins.json"
        self.lock = cache_dir / ".locks" / "pins.lock"
        self.pending: dict[str, str] = {}

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def check(self, key: str, path: Path, *, dataset: str) -> dict[str, str]:
        digests = file_digests(path)
        pinned = self._read().get(key)
        if pinned is None:
            self.pending[key] = digests["sha256"]
        elif pinned != digests["sha256"]:
            raise DataError(
                f"{dataset}: checksum mismatch for {path.name} (expected sha256 {pinned} "
                f"recorded on first use, got {digests['sha256']}); delete it or pass --source, "
                f"or remove its entry from {self.path} if the file changed on purpose"
            )
        return digests

    def commit(self) -> None:
        if not self.pending:
            return
        with file_lock(self.lock):
            data = self._read()
            data.update(self.pending)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".pins.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        self.pending.clear()


def _record(path: Path, digests: dict[str, str], origin: str) -> dict:
    return {"bytes": os.path.getsize(path), "md5": digests["md5"],
            "sha256": digests["sha256"], "origin": origin}


# --- obtaining the published files -------------------------------------------


def _offline_file(spec: DataSpec, rf: RemoteFile, pins: Pins) -> tuple[Path, dict]:
    """Find ``rf`` in the user's --source path and verify it."""
    src = Path(spec.source).expanduser()
    if not src.exists():
        raise DataError(f"{spec.name}: source path {src} does not exist")
    if src.is_file():
        if src.name != rf.filename and len(REMOTE[spec.name]) > 1:
            raise DataError(
                f"{spec.name}: --source must be a directory holding "
                f"{', '.join(r.filename for r in REMOTE[spec.name])}"
            )
        candidate = src
    else:
        candidate = src / rf.filename
    if candidate.is_file():
        digests = check_digests(candidate, rf.expected, dataset=spec.name,
                                hint=f"replace {candidate} with the published file")
        return candidate, _record(candidate, digests, str(candidate))
    # Uncompressed copies (gunzip'd by hand) have no published checksum: pin them.
    plain = src / rf.filename.removesuffix(".gz") if src.is_dir() else None
    if plain is not None and rf.filename.endswith(".gz") and plain.is_file():
        digests = pins.check(f"{spec.name}/{plain.name}", plain, dataset=spec.name)
        return plain, _record(plain, digests, str(plain))
    raise DataError(f"{spec.name}: {rf.filename} not found in {src}")


def _fetch_file(spec: DataSpec, rf: RemoteFile, cache_dir: Path, pins: Pins,
                progress: Progress | None) -> tuple[Path, dict]:
    """A published file from the download folder, downloading it if needed."""
    folder = cache_dir / "downloads" / spec.name
    dest = folder / rf.filename
    with file_lock(cache_dir / ".locks" / f"download-{spec.name}-{rf.filename}.lock"):
        if dest.is_file():
            if rf.md5 is None and rf.sha256 is None:
                digests = pins.check(f"{spec.name}/{rf.filename}", dest, dataset=spec.name)
            else:
                digests = check_digests(
                    dest, rf.expected, dataset=spec.name,
                    hint=f"delete {dest} or pass --source",
                )
            return dest, _record(dest, digests, rf.urls[0] if rf.urls else str(dest))
        digests = download(rf.urls, dest, dataset=spec.name, expected=rf.expected,
                           size_hint=rf.size, progress=progress)
        if rf.md5 is None and rf.sha256 is None:
            pins.check(f"{spec.name}/{rf.filename}", dest, dataset=spec.name)
        return dest, _record(dest, digests, rf.urls[0] if rf.urls else str(dest))


def _published_files(spec: DataSpec, cache_dir: Path, pins: Pins,
                     progress: Progress | None) -> dict[str, tuple[Path, dict]]:
    out = {}
    for rf in REMOTE[spec.name]:
        if spec.source is not None:
            out[rf.filename] = _offline_file(spec, rf, pins)
        else:
            out[rf.filename] = _fetch_file(spec, rf, cache_dir, pins, progress)
    return out


# --- MNIST and Fashion-MNIST ---------------------------------------------------


def _load_idx_dataset(spec: DataSpec, cache_dir: Path, pins: Pins,
                      progress: Progress | None) -> RawData:
    files = _published_files(spec, cache_dir, pins, progress)
    names = [rf.filename for rf in REMOTE[spec.name]]
    arrays = []
    for i, name in enumerate(names):
        path, _ = files[name]
        arrays.append(read_idx(path, dataset=spec.name))
        if progress is not None:
            progress("read", i + 1, len(names))
    x_train, y_train, x_test, y_test = arrays
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"{spec.name}: {split} images {x.shape} and labels {y.shape} do not match"
            )
    class_names = FASHION_CLASSES if spec.name == "fashion_mnist" else [str(i) for i in range(10)]
    for y in (y_train, y_test):
        if y.size and (y.min() < 0 or y.max() >= len(class_names)):
            raise DataError(f"{spec.name}: labels outside 0..{len(class_names) - 1}")
    return RawData(
        x_train=np.ascontiguousarray(x_train, dtype=np.uint8)[..., None],
        y_train=y_train.astype(np.int64),
        x_test=np.ascontiguousarray(x_test, dtype=np.uint8)[..., None],
        y_test=y_test.astype(np.int64),
        class_names=list(class_names),
        source={"kind": "offline" if spec.source else "download",
                "path": spec.source, "files": {n: rec for n, (_, rec) in files.items()}},
    )


# --- CIFAR ---------------------------------------------------------------------


class _Refused(pickle.UnpicklingError):
    pass


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of bytes, lists and numpy arrays) and
    refuses anything else, so a doctored file cannot run code."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise _Refused(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(blob: bytes, dataset: str, member: str) -> dict:
    try:
        obj = _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except _Refused as exc:
        raise DataError(f"{dataset}: {member} is not a CIFAR batch ({exc})") from exc
    except Exception as exc:  # any unpickling failure means a bad file
        raise DataError(f"{dataset}: {member} is truncated or corrupt ({exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{dataset}: {member} does not hold a CIFAR batch")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _read_cifar_members(path: Path, spec: DataSpec, wanted: set[str]) -> dict[str, bytes]:
    """Members of a CIFAR tar.gz, by base name."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted and base not in found:
                    fh = tar.extractfile(member)
                    assert fh is not None
                    found[base] = fh.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(
            f"{spec.name}: {path.name} is truncated or corrupt ({exc}); delete it or pass --source"
        ) from exc
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(f"{spec.name}: {path.name} lacks {', '.join(missing)}")
    return found


def _cifar_extracted_dir(spec: DataSpec) -> Path | None:
    """The extracted batches folder named by --source, if that is what it is."""
    layout = CIFAR_LAYOUT[spec.name]
    src = Path(spec.source).expanduser()
    for folder in (src, src / layout["folder"]):
        if folder.is_dir() and (folder / layout["meta"]).is_file():
            return folder
    return None


def _cifar_bytes(spec: DataSpec, cache_dir: Path, pins: Pins,
                 progress: Progress | None) -> tuple[dict[str, bytes], dict]:
    layout = CIFAR_LAYOUT[spec.name]
    wanted = set(layout["train"]) | set(layout["test"]) | {layout["meta"]}
    rf = REMOTE[spec.name][0]
    if spec.source is not None:
        src = Path(spec.source).expanduser()
        if not src.exists():
            raise DataError(f"{spec.name}: source path {src} does not exist")
        extracted = _cifar_extracted_dir(spec) if not (src / rf.filename).is_file() else None
        if extracted is not None and not src.is_file():
            blobs, records = {}, {}
            for name in sorted(wanted):
                member = extracted / name
                if not member.is_file():
                    raise DataError(f"{spec.name}: {name} not found in {extracted}")
                digests = check_digests(
                    member, {"md5": layout["members_md5"].get(name)}, dataset=spec.name,
                    hint=f"replace {member} with the published file",
                )
                blobs[name] = member.read_bytes()
                records[name] = _record(member, digests, str(member))
            return blobs, {"kind": "offline", "path": spec.source, "files": records}
    files = _published_files(spec, cache_dir, pins, progress)
    path, record = files[rf.filename]
    blobs = _read_cifar_members(path, spec, wanted)
    return blobs, {"kind": "offline" if spec.source else "download",
                   "path": spec.source, "files": {rf.filename: record}}


def _cifar_images(batch: dict, dataset: str, member: str) -> np.ndarray:
    data = np.asarray(batch.get("data"))
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{dataset}: {member} has images of shape {data.shape}, not (N, 3072)")
    return np.ascontiguousarray(
        data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    )


def _names(meta: dict, key: str) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]


def _load_cifar(spec: DataSpec, cache_dir: Path, pins: Pins,
                progress: Progress | None) -> RawData:
    layout = CIFAR_LAYOUT[spec.name]
    blobs, source = _cifar_bytes(spec, cache_dir, pins, progress)
    meta = _unpickle(blobs[layout["meta"]], spec.name, layout["meta"])

    def split(members: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        xs, labels = [], {}
        for member in members:
            batch = _unpickle(blobs[member], spec.name, member)
            x = _cifar_images(batch, spec.name, member)
            xs.append(x)
            keys = ("labels",) if spec.name == "cifar10" else ("fine_labels", "coarse_labels")
            for key in keys:
                if key not in batch:
                    raise DataError(f"{spec.name}: {member} has no {key!r}")
                y = np.asarray(batch[key], dtype=np.int64)
                if len(y) != len(x):
                    raise DataError(f"{spec.name}: {member} has {len(x)} images and {len(y)} labels")
                labels.setdefault(key, []).append(y)
        return np.concatenate(xs), {k: np.concatenate(v) for k, v in labels.items()}

    x_train, l_train = split(layout["train"])
    x_test, l_test = split(layout["test"])
    if spec.name == "cifar10":
        return RawData(x_train, l_train["labels"], x_test, l_test["labels"],
                       class_names=_names(meta, "label_names"), source=source)
    return RawData(
        x_train, l_train["fine_labels"], x_test, l_test["fine_labels"],
        class_names=_names(meta, "fine_label_names"),
        extra_train={"coarse": l_train["coarse_labels"]},
        extra_test={"coarse": l_test["coarse_labels"]},
        extra_class_names={"coarse": _names(meta, "coarse_label_names")},
        source=source,
    )


# --- scikit-learn digits -------------------------------------------------------


def _load_digits(spec: DataSpec, cache_dir: Path, pins: Pins,
                 progress: Progress | None) -> RawData:
    from sklearn.datasets import load_digits  # imported here: sklearn is slow to import

    bunch = load_digits()
    # Values are 0..16; map 16 to 255.
    x = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0))
    x = np.clip(x, 0, 255).astype(np.uint8)[..., None]
    y = np.asarray(bunch.target, dtype=np.int64)
    import sklearn

    return RawData(x, y, None, None, class_names=[str(i) for i in range(10)],
                   source={"kind": "sklearn", "path": None,
                           "files": {}, "sklearn": sklearn.__version__,
                           "sha256": hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()})


# --- image folders -------------------------------------------------------------


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _folder_layout(spec: DataSpec) -> tuple[dict[str, list[Path]], dict[str, list[Path]] | None]:
    root = Path(spec.source).expanduser()
    if not root.is_dir():
        raise DataError(f"folder: source {root} is not a directory")
    train_root, test_root = root, None
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_root, test_root = root / "train", root / "test"
    train = {d.name: _image_files(d) for d in _class_dirs(train_root)}
    if not train:
        raise DataError(f"folder: no class folders in {train_root} (expected CLASS_NAME/*.png|jpg)")
    empty = [name for name, files in train.items() if not files]
    if empty:
        raise DataError(f"folder: class folder(s) without .png/.jpg images in {train_root}: "
                        f"{', '.join(empty)}")
    test = None
    if test_root is not None:
        test = {d.name: _image_files(d) for d in _class_dirs(test_root)}
        unknown = sorted(set(test) - set(train))
        if unknown:
            raise DataError(f"folder: test classes not in train: {', '.join(unknown)}")
    return train, test


def source_fingerprint(spec: DataSpec) -> str | None:
    """A cheap stat-based fingerprint of user data (folder, npz); None for the
    others or when the source is not reachable from here."""
    if spec.name not in ("folder", "npz") or spec.source is None:
        return None
    path = Path(spec.source).expanduser()
    h = hashlib.sha256()
    try:
        if spec.name == "npz":
            st = path.stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        else:
            train, test = _folder_layout(spec)
            for tag, groups in (("train", train), ("test", test or {})):
                for name, files in sorted(groups.items()):
                    for f in files:
                        st = f.stat()
                        h.update(f"{tag}/{name}/{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    except (OSError, DataError):
        return None
    return h.hexdigest()


def _read_image(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"folder: cannot read image {path}")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise DataError(f"folder: {path} has unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return img[..., None]
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.shape[2] == 1:
        return img
    raise DataError(f"folder: {path} has {img.shape[2]} channels")


def _stack_or_list(images: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    shapes = {im.shape for im in images}
    return np.stack(images) if len(shapes) == 1 else images


def _load_folder(spec: DataSpec, cache_dir: Path, pins: Pins,
                 progress: Progress | None) -> RawData:
    train, test = _folder_layout(spec)
    class_names = sorted(train)
    index = {name: i for i, name in enumerate(class_names)}
    jobs = [("train", name, f) for name in class_names for f in train[name]]
    if test is not None:
        jobs += [("test", name, f) for name in sorted(test) for f in test[name]]
    images: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    labels: dict[str, list[int]] = {"train": [], "test": []}
    for i, (split, name, path) in enumerate(jobs):
        images[split].append(_read_image(path))
        labels[split].append(index[name])
        if progress is not None and (i % 256 == 0 or i + 1 == len(jobs)):
            progress("read", i + 1, len(jobs))
    # One channel count for all: grey if every image is grey, else RGB.
    all_images = images["train"] + images["test"]
    channels = 1 if all(im.shape[2] == 1 for im in all_images) else 3
    if channels == 3:
        for split in images:
            images[split] = [np.repeat(im, 3, axis=2) if im.shape[2] == 1 else im
                             for im in images[split]]
    x_train = _stack_or_list(images["train"])
    x_test = _stack_or_list(images["test"]) if test is not None and images["test"] else None
    y_test = np.asarray(labels["test"], dtype=np.int64) if x_test is not None else None
    return RawData(
        x_train, np.asarray(labels["train"], dtype=np.int64), x_test, y_test,
        class_names=class_names,
        source={"kind": "folder", "path": spec.source, "files": {},
                "images": len(jobs), "fingerprint": source_fingerprint(spec)},
    )


# --- .npz ------------------------------------------------------------------------


def _npz_images(x: np.ndarray, key: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[3] not in (1, 3, 4):
        raise DataError(f"npz: {key!r} must be (N, H, W) or (N, H, W, 1|3|4), got {x.shape}")
    if x.shape[3] == 4:
        x = x[..., :3]  # drop alpha
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"npz: {key!r} has integer values outside 0..255")
        return np.ascontiguousarray(x, dtype=np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        if x.size and not np.isfinite(x).all():
            raise DataError(f"npz: {key!r} has NaN or infinite values")
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise DataError(f"npz: {key!r} has values outside [0, 1] and [0, 255]")
        scale = 255.0 if hi <= 1.0 else 1.0  # floats in [0, 1] are scaled up
        return np.clip(np.rint(x * scale), 0, 255).astype(np.uint8)
    raise DataError(f"npz: {key!r} has unsupported dtype {x.dtype}")


def _npz_labels(y: np.ndarray, key: str, n: int) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"npz: {key!r} must be a 1-D integer array, got {y.dtype} {y.shape}")
    if len(y) != n:
        raise DataError(f"npz: {key!r} has {len(y)} labels for {n} images")
    if y.size and y.min() < 0:
        raise DataError(f"npz: {key!r} has negative labels")
    return y.astype(np.int64)


def _load_npz(spec: DataSpec, cache_dir: Path, pins: Pins,
              progress: Progress | None) -> RawData:
    path = Path(spec.source).expanduser()
    if not path.is_file():
        raise DataError(f"npz: source file {path} does not exist")
    digests = file_digests(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"npz: {path.name} is not a readable .npz file ({exc})") from exc
    except Exception as exc:  # zipfile.BadZipFile and friends
        raise DataError(f"npz: {path.name} is truncated or corrupt ({exc})") from exc
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"npz: {path.name} has no {key!r} array (found {', '.join(arrays)})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"npz: {path.name} must have both x_test and y_test, or neither")
    x_train = _npz_images(arrays["x"], "x")
    y_train = _npz_labels(arrays["y"], "y", len(x_train))
    x_test = y_test = None
    if "x_test" in arrays:
        x_test = _npz_images(arrays["x_test"], "x_test")
        y_test = _npz_labels(arrays["y_test"], "y_test", len(x_test))
        if x_test.shape[1:] != x_train.shape[1:]:
            raise DataError(f"npz: x_test images {x_test.shape[1:]} differ from x {x_train.shape[1:]}")
    num_classes = int(max(y_train.max(initial=-1), -1 if y_test is None else y_test.max(initial=-1))) + 1
    if "class_names" in arrays:
        class_names = [str(c) for c in np.asarray(arrays["class_names"]).ravel()]
        if len(class_names) < num_classes:
            raise DataError(f"npz: {len(class_names)} class_names for labels up to {num_classes - 1}")
    else:
        class_names = [str(i) for i in range(num_classes)]
    return RawData(
        x_train, y_train, x_test, y_test, class_names=class_names,
        source={"kind": "npz", "path": spec.source,
                "files": {path.name: _record(path, digests, str(path))},
                "fingerprint": source_fingerprint(spec)},
    )


_LOADERS = {
    "fashion_mnist": _load_idx_dataset,
    "mnist": _load_idx_dataset,
    "cifar10": _load_cifar,
    "cifar100": _load_cifar,
    "digits": _load_digits,
    "folder": _load_folder,
    "npz": _load_npz,
}


def ensure_files(spec: DataSpec, cache_dir: Path, progress: Progress | None = None) -> None:
    """Make sure the source files of ``spec`` are here and intact, without reading them.

    Downloads what is missing (the same files, checks and lock as
    :func:`load_raw`), verifies a ``--source`` folder's files against the
    published checksums, and checks that a user source exists.  Nothing is
    pinned: only a file that parses is (by :func:`load_raw`).
    """
    if spec.name == "digits":
        return
    if spec.name in ("folder", "npz"):
        if not Path(spec.source).expanduser().exists():
            raise DataError(f"{spec.name}: source path {Path(spec.source).expanduser()} does not exist")
        return
    pins = Pins(cache_dir)
    if spec.name in CIFAR_LAYOUT and spec.source is not None:
        src = Path(spec.source).expanduser()
        if not src.exists():
            raise DataError(f"{spec.name}: source path {src} does not exist")
        if not (src / REMOTE[spec.name][0].filename).is_file() and not src.is_file() \
                and _cifar_extracted_dir(spec) is not None:
            _cifar_bytes(spec, cache_dir, pins, progress)  # checks every member's md5
            return
    _published_files(spec, cache_dir, pins, progress)


def load_raw(spec: DataSpec, cache_dir: Path, progress: Progress | None = None) -> RawData:
    """Read (downloading if needed) the native-size images of ``spec``."""
    pins = Pins(cache_dir)
    raw = _LOADERS[spec.name](spec, cache_dir, pins, progress)
    if len(raw.y_train) == 0:
        raise DataError(f"{spec.name}: the source holds no training images")
    pins.commit()  # only now: a file that failed to parse is never pinned
    return raw
