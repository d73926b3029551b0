"""The recipes through the real CLI: `mongotune recipes`, and `launch vggstrix` end to end at 128x128x3.

Every launch here is offline: HTTP(S) goes through a proxy address where
nothing listens, and Keras' cache is an empty folder, so nothing can be
downloaded even on a machine with a network.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import db_of, one_line_error, run_cli

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "data"))
from data_fixtures import IDX_NAMES, idx_bytes  # noqa: E402

pytestmark = pytest.mark.timeout(600)




@pytest.fixture
def offline(tmp_path):
    """Environment for run_cli: no network, an empty Keras cache."""
    from mongotune.store.embedded import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    return {"http_proxy": closed, "https_proxy": closed, "HTTP_PROXY": closed, "HTTPS_PROXY": closed,
            "no_proxy": "", "NO_PROXY": "", "KERAS_HOME": str(tmp_path / "keras-home")}


@pytest.fixture
def fmnist_files(tmp_path) -> Path:
    """A Fashion-MNIST-format file set: the four IDX files, 200 + 40 images of 28x28.

    Uncompressed: gzip'd files must match the published checksums, while
    copies gunzip'd by hand have none and are pinned on first use.
    """
    rng = np.random.default_rng(5)
    y_train = rng.permutation(np.arange(200) % 10).astype(np.uint8)
    y_test = rng.permutation(np.arange(40) % 10).astype(np.uint8)
    pattern = rng.integers(0, 256, (10, 28, 28))
    x_train = (0.7 * pattern[y_train] + 0.3 * rng.integers(0, 256, (200, 28, 28))).astype(np.uint8)
    x_test = (0.7 * pattern[y_test] + 0.3 * rng.integers(0, 256, (40, 28, 28))).astype(np.uint8)
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for name, arr in zip(IDX_NAMES, (x_train, y_train, x_test, y_test)):
        (folder / name.removesuffix(".gz")).write_bytes(idx_bytes(arr))
    return folder


@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory) -> Path:
    """VGG19 no-top weights (random values, the published layout) saved with save_weights."""
    import keras

    path = tmp_path_factory.mktemp("weights") / "vgg19-notop.weights.h5"
    keras.applications.VGG19(weights=None, include_top=False).save_weights(str(path))
    keras.backend.clear_session()
    return path


def test_recipes_lists_every_recipe_with_what_the_seed_reported():
    r = run_cli("recipes")
    assert r.returncode == 0, r.stderr
    for model in ("baseline", "convstrix", "vggstrix", "hyperresnet"):
        assert model in r.stdout
    for reported in ("85.3%", "93.6%", "91.9%", "fine 67.61%", "coarse 77.31%"):
        assert reported in r.stdout
    assert "fashion_mnist" in r.stdout and "cifar100" in r.stdout and "imagenet" in r.stdout

    one = run_cli("recipes", "vggstrix")
    assert one.returncode == 0, one.stderr
    assert "128x128 RGB" in one.stdout and "Part III" in one.stdout and "neg_val_accuracy_squared" in one.stdout

    what_if = run_cli("recipes", "vggstrix", "dataset=digits", "weights=imagenet")
    assert what_if.returncode == 0, what_if.stderr
    assert "digits (32x32, channels 3, linear" in what_if.stdout
    assert "note: vggstrix needs at least 32x32 RGB images; digits has 8x8x1" in what_if.stderr


def test_unknown_recipe_option_is_one_line():
    one_line_error(run_cli("recipes", "vggstrix", "epoch=3"), "unknown recipe option 'epoch'", "epochs")
    one_line_error(run_cli("recipes", "vggstrix", "epochs"), "KEY=VALUE")
    one_line_error(run_cli("recipes", "resnet", "size=3"), "no recipe for 'resnet'", "vggstrix")


def test_launch_vggstrix_offline_with_nothing_local_names_source_and_weights(mongo_url, offline):
    line = one_line_error(run_cli("launch", "vggstrix", "--mongo", mongo_url, "-q", **offline),
                           "fashion_mnist: could not download", "--source", "ImageNet VGG19 weights",
                           "--weights PATH")
    assert "Traceback" not in line
    assert db_of(mongo_url).studies.count_documents({}) == 0  # nothing written


def test_launch_vggstrix_weights_imagenet_offline_is_one_line(mongo_url, offline, fmnist_files):
    line = one_line_error(run_cli("launch", "vggstrix", "--source", fmnist_files, "--weights", "imagenet",
                                   "--mongo", mongo_url, "-q", **offline),
                           "could not fetch the ImageNet VGG19 weights", "--weights PATH")
    assert "fashion_mnist" not in line  # the local copy was found
    # no --weights at all: the recipe's are ImageNet's, so the same line
    one_line_error(run_cli("launch", "vggstrix", "--source", fmnist_files, "--mongo", mongo_url, "-q", **offline),
                    "could not fetch the ImageNet VGG19 weights", "--weights PATH")
    assert db_of(mongo_url).studies.count_documents({}) == 0


def test_launch_vggstrix_with_a_weights_file_of_the_wrong_shape_is_one_line(mongo_url, offline, fmnist_files,
                                                                               tmp_path):
    import keras

    vgg16 = tmp_path / "vgg16-notop.weights.h5"
    keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3)).save_weights(str(vgg16))
    one_line_error(run_cli("launch", "vggstrix", "--source", fmnist_files, "--weights", vgg16,
                            "--mongo", mongo_url, "-q", **offline),
                    "does not hold VGG19 no-top weights", str(vgg16))


def test_launch_vggstrix_without_weights_is_refused(mongo_url, offline, fmnist_files):
    one_line_error(run_cli("launch", "vggstrix", "--source", fmnist_files, "--weights", "none",
                            "--mongo", mongo_url, "-q", **offline),
                    "VGG19 base is frozen", "--weights imagenet", "--weights PATH", "convstrix")
    assert db_of(mongo_url).studies.count_documents({}) == 0


def test_gzipd_files_that_are_not_the_published_ones_are_one_line(mongo_url, offline, fmnist_files, vgg19_file):
    for name in IDX_NAMES:  # gzip the fixture: now the published checksums apply, and fail
        plain = fmnist_files / name.removesuffix(".gz")
        (fmnist_files / name).write_bytes(gzip.compress(plain.read_bytes(), mtime=0))
    one_line_error(run_cli("launch", "vggstrix", "--source", fmnist_files, "--weights", vgg19_file,
                            "--mongo", mongo_url, "-q", **offline),
                    "fashion_mnist: checksum mismatch", "train-images-idx3-ubyte.gz")


@pytest.mark.slow
def test_launch_vggstrix_runs_the_seed_setting_end_to_end(mongo_url, offline, fmnist_files, vgg19_file):
    """`launch vggstrix` with local files: Fashion-MNIST at 128x128x3 through a real worker."""
    r = run_cli("launch", "vggstrix", "--study", "vgg-seed", "--source", fmnist_files, "--weights", vgg19_file,
                "--max-evals", 1, "--workers", 1, "--epochs", 1, "--max-train-samples", 32,
                "--mongo", mongo_url, "-q", timeout=420, **offline)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1/1 trials finished" in r.stdout and "best validation accuracy" in r.stdout
    assert "note:" not in r.stderr  # the recipe's own data: nothing adapted
    db = db_of(mongo_url)
    st = db.studies.find_one({"_id": "vgg-seed"})
    assert {k: st["objective"]["dataset"][k] for k in ("name", "size", "channels", "interpolation", "val_fraction")} == \
        {"name": "fashion_mnist", "size": 128, "channels": 3, "interpolation": "linear", "val_fraction": 0.2}
    training = st["objective"]["training"]
    assert (training["epochs"], training["patience"], training["loss"]) == (1, 5, "neg_val_accuracy_squared")
    assert training["weights"] == str(vgg19_file)
    trial = db.jobs.find_one({"exp_key": "mongotune:vgg-seed"})
    res = trial["result"]
    assert res["status"] == "ok", json.dumps(res, default=str)[:2000]
    assert res["loss"] == pytest.approx(-res["val_accuracy"] ** 2)
    assert res["train_images"] == 32 and res["epochs"] == 1
    assert sum(v["support"] for v in res["per_class"].values()) == 40  # 20 % of the 200 training images
    # the frozen base holds the file's weights (20,024,384 of them); only the head trained
    assert res["params_count"] > 20_024_384
