"""``DataSpec``: what a trial asks of the data pipeline, and the cache key it maps to."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from mongotune.errors import DataError

#: Bumped whenever the layout or the content of a prepared cache changes, so
#: that old caches are never mistaken for new ones (it is part of the key).
CACHE_FORMAT = 1

DATASETS = ("digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "folder", "npz")
#: Datasets whose files come from the user; ``source`` is required and its
#: location is part of the cache key.
USER_SOURCED = ("folder", "npz")
INTERPOLATIONS = ("area", "linear", "cubic", "lanczos", "nearest")
#: (height, width, channels) of the datasets whose images all have one size
NATIVE_SHAPES: dict[str, tuple[int, int, int]] = {
    "digits": (8, 8, 1),
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "cifar100": (32, 32, 3),
}
LABEL_MODES = ("fine", "coarse")
MAX_SIZE = 4096


def _as_int(field: str, value: Any) -> int:
    # bool is an int subclass; True as a size is a mistake, not 1.
    if isinstance(value, bool):
        raise DataError(f"DataSpec.{field} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise DataError(f"DataSpec.{field} must be an integer, got {value!r}")


@dataclass(frozen=True)
class DataSpec:
    """A dataset plus the pre-processing applied to it.

    Two specs with the same :meth:`cache_key` share one prepared cache.  The
    key ignores ``label_mode`` (CIFAR-100 caches hold fine *and* coarse labels)
    and, for the downloadable datasets, ``source`` (the files are verified
    against known checksums, so where they came from does not matter).
    """

    name: str
    size: int | None = None
    channels: int | None = None
    interpolation: str = "area"
    val_fraction: float = 0.1
    seed: int = 0
    source: str | None = None
    label_mode: str = "fine"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise through the back door
        if not isinstance(self.name, str) or self.name not in DATASETS:
            raise DataError(
                f"unknown dataset {self.name!r}; choose one of {', '.join(DATASETS)}"
            )
        if self.size is not None:
            size = _as_int("size", self.size)
            if not 1 <= size <= MAX_SIZE:
                raise DataError(f"DataSpec.size must be between 1 and {MAX_SIZE}, got {size}")
            set_(self, "size", size)
        if self.channels is not None:
            channels = _as_int("channels", self.channels)
            if channels not in (1, 3):
                raise DataError(f"DataSpec.channels must be 1 or 3, got {channels}")
            set_(self, "channels", channels)
        if self.interpolation not in INTERPOLATIONS:
            raise DataError(
                f"unknown interpolation {self.interpolation!r}; "
                f"choose one of {', '.join(INTERPOLATIONS)}"
            )
        if isinstance(self.val_fraction, bool) or not isinstance(self.val_fraction, (int, float)):
            raise DataError(f"DataSpec.val_fraction must be a number, got {self.val_fraction!r}")
        val_fraction = float(self.val_fraction)
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"DataSpec.val_fraction must be in [0, 1), got {val_fraction}")
        set_(self, "val_fraction", val_fraction)
        seed = _as_int("seed", self.seed)
        if seed < 0:
            raise DataError(f"DataSpec.seed must be >= 0, got {seed}")
        set_(self, "seed", seed)
        if self.source is not None:
            if isinstance(self.source, os.PathLike):
                set_(self, "source", os.fspath(self.source))
            elif not isinstance(self.source, str) or not self.source:
                raise DataError(f"DataSpec.source must be a path, got {self.source!r}")
        if self.name in USER_SOURCED and self.source is None:
            raise DataError(f"{self.name}: a source path is required (--source PATH)")
        if self.name == "digits" and self.source is not None:
            raise DataError("digits: ships with scikit-learn and takes no source path")
        if self.label_mode not in LABEL_MODES:
            raise DataError(f"DataSpec.label_mode must be 'fine' or 'coarse', got {self.label_mode!r}")
        if self.label_mode != "fine" and self.name != "cifar100":
            raise DataError(f"{self.name}: label_mode {self.label_mode!r} applies to cifar100 only")

    # -- serialisation -------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DataSpec":
        if not isinstance(d, dict):
            raise DataError(f"a data spec must be a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataError(f"unknown data spec field(s): {', '.join(map(str, unknown))}")
        if "name" not in d:
            raise DataError("a data spec needs a 'name'")
        return cls(**d)

    # -- cache identity ------------------------------------------------------
    def source_identity(self) -> str | None:
        """The part of ``source`` that changes what gets built (user data only)."""
        if self.name in USER_SOURCED and self.source is not None:
            return os.path.abspath(os.path.expanduser(self.source))
        return None

    def key_fields(self) -> dict:
        return {
            "format": CACHE_FORMAT,
            "name": self.name,
            "size": self.size,
            "channels": self.channels,
            "interpolation": self.interpolation,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "source": self.source_identity(),
        }

    def cache_key(self) -> str:
        blob = json.dumps(self.key_fields(), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(blob.encode()).hexdigest()[:8]
        size = f"s{self.size}" if self.size is not None else "snative"
        channels = f"c{self.channels}" if self.channels is not None else "cnative"
        return (
            f"{self.name}-{size}-{channels}-{self.interpolation}"
            f"-v{self.val_fraction:g}-seed{self.seed}-{digest}"
        )
