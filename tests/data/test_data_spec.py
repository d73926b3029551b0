import json

import pytest

from mongotune.data import DataSpec, available_datasets
from mongotune.errors import DataError, UserError


def test_defaults_and_round_trip():
    spec = DataSpec("fashion_mnist", size=128, channels=1, seed=3)
    d = spec.to_dict()
    assert d == {"name": "fashion_mnist", "size": 128, "channels": 1, "interpolation": "area",
                 "val_fraction": 0.1, "seed": 3, "source": None, "label_mode": "fine"}
    assert json.loads(json.dumps(d)) == d  # plain JSON, as stored in MongoDB
    again = DataSpec.from_dict(json.loads(json.dumps(d)))
    assert again == spec
    assert again.cache_key() == spec.cache_key()


def test_cache_key_is_readable_and_follows_parameters():
    key = DataSpec("fashion_mnist", size=128, channels=1).cache_key()
    prefix, digest = key.rsplit("-", 1)
    assert prefix == "fashion_mnist-s128-c1-area-v0.1-seed0"
    assert len(digest) == 8 and int(digest, 16) >= 0
    assert DataSpec("digits").cache_key().startswith("digits-snative-cnative-area-v0.1-seed0-")
    keys = {
        DataSpec("mnist", size=64).cache_key(),
        DataSpec("mnist", size=128).cache_key(),
        DataSpec("mnist", size=64, interpolation="cubic").cache_key(),
        DataSpec("mnist", size=64, seed=1).cache_key(),
        DataSpec("mnist", size=64, val_fraction=0.2).cache_key(),
        DataSpec("mnist", size=64, channels=3).cache_key(),
    }
    assert len(keys) == 6


def test_cache_key_ignores_label_mode_and_offline_source_of_published_data(tmp_path):
    a = DataSpec("cifar100", size=32)
    assert a.cache_key() == DataSpec("cifar100", size=32, label_mode="coarse").cache_key()
    assert a.cache_key() == DataSpec("cifar100", size=32, source=str(tmp_path)).cache_key()


def test_cache_key_of_user_data_depends_on_its_location(tmp_path):
    one = DataSpec("npz", source=str(tmp_path / "a.npz")).cache_key()
    two = DataSpec("npz", source=str(tmp_path / "b.npz")).cache_key()
    assert one != two


@pytest.mark.parametrize("kwargs, fragment", [
    ({"name": "imagenet"}, "unknown dataset 'imagenet'"),
    ({"name": "mnist", "size": 0}, "size must be between"),
    ({"name": "mnist", "size": True}, "size must be an integer"),
    ({"name": "mnist", "size": 12.5}, "size must be an integer"),
    ({"name": "mnist", "channels": 2}, "channels must be 1 or 3"),
    ({"name": "mnist", "interpolation": "bilinear"}, "unknown interpolation 'bilinear'"),
    ({"name": "mnist", "val_fraction": 1.0}, "val_fraction must be in [0, 1)"),
    ({"name": "mnist", "val_fraction": -0.1}, "val_fraction must be in [0, 1)"),
    ({"name": "mnist", "seed": -1}, "seed must be >= 0"),
    ({"name": "folder"}, "folder: a source path is required"),
    ({"name": "npz"}, "npz: a source path is required"),
    ({"name": "mnist", "label_mode": "coarse"}, "applies to cifar100 only"),
    ({"name": "cifar100", "label_mode": "medium"}, "label_mode must be 'fine' or 'coarse'"),
    ({"name": "digits", "source": "/tmp/x"}, "takes no source path"),
])
def test_bad_values_raise_one_line_data_errors(kwargs, fragment):
    with pytest.raises(DataError) as info:
        DataSpec.from_dict(kwargs)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, UserError)


def test_from_dict_rejects_unknown_fields_and_missing_name():
    with pytest.raises(DataError, match="unknown data spec field"):
        DataSpec.from_dict({"name": "mnist", "sise": 128})
    with pytest.raises(DataError, match="needs a 'name'"):
        DataSpec.from_dict({"size": 128})


def test_from_dict_accepts_json_numbers():
    spec = DataSpec.from_dict({"name": "mnist", "size": 64.0, "val_fraction": 0, "seed": 2.0})
    assert spec.size == 64 and isinstance(spec.size, int)
    assert spec.val_fraction == 0.0 and isinstance(spec.val_fraction, float)
    assert spec.seed == 2


def test_available_datasets():
    assert available_datasets() == ["digits", "fashion_mnist", "mnist", "cifar10", "cifar100",
                                    "folder", "npz"]
