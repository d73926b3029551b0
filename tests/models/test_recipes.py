"""Recipes: each resolves to its seed's settings; options win; inputs adapt; no frozen random base."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hyperopt.pyll import stochastic

from mongotune.errors import ConfigError, DataError, UserError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "data"))
from data_fixtures import make_idx_dir  # noqa: E402

SEED_SETTINGS = {
    # model: dataset, size, channels, interpolation, val_fraction, epochs, patience, loss, weights, max_evals
    "baseline": ("fashion_mnist", 128, 1, "linear", 0.2, 50, 5, "neg_val_accuracy_squared", None, 100),
    "convstrix": ("fashion_mnist", 128, 1, "linear", 0.2, 50, 5, "neg_val_accuracy_squared", None, 50),
    "vggstrix": ("fashion_mnist", 128, 3, "linear", 0.2, 50, 5, "neg_val_accuracy_squared", "imagenet", 50),
    "hyperresnet": ("cifar100", None, None, "area", 0.1, 100, 100, "neg_val_accuracy", None, 20),
}
REPORTED = {"baseline": {"test": 0.853}, "convstrix": {"test": 0.936}, "vggstrix": {"test": 0.919},
            "hyperresnet": {"fine": 0.6761, "coarse": 0.7731}}


def _batch_sizes(model: str, shape, variant="seed", n=300) -> set:
    from mongotune.models import get_model

    space = get_model(model).space(shape, variant=variant)
    rng = np.random.default_rng(0)
    return {stochastic.sample(space, rng=rng)["batch_size"] for _ in range(n)}


@pytest.mark.parametrize("model", sorted(SEED_SETTINGS))
def test_each_recipe_resolves_to_its_seed_settings(model):
    from mongotune.models.recipes import RECIPES, resolve_launch

    s = resolve_launch(model, {})
    ds = s.dataset
    got = (ds["name"], ds["size"], ds["channels"], ds["interpolation"], ds["val_fraction"], s.epochs,
           s.patience, s.loss, s.weights, s.max_evals)
    assert got == SEED_SETTINGS[model]
    assert s.notices == [] and s.space_variant == "seed"
    assert RECIPES[model].reported.accuracy == REPORTED[model]
    assert RECIPES[model].reported.source
    assert all(origin in ("recipe", "default") for origin in s.origins.values()), s.origins


def test_the_seed_spaces_have_the_seeds_batch_sizes():
    assert _batch_sizes("baseline", (128, 128, 1)) == {16, 32, 64, 128}
    assert _batch_sizes("convstrix", (128, 128, 1)) == {16, 32, 64}
    assert _batch_sizes("vggstrix", (128, 128, 3)) == {16, 32, 64}
    cifar = _batch_sizes("hyperresnet", (32, 32, 3))
    assert min(cifar) >= 100 and max(cifar) <= 700 and all(b % 5 == 0 for b in cifar)
    assert max(cifar) - min(cifar) > 400


def test_hyperresnet_seed_space_flips_like_the_seed_and_the_small_one_does_not():
    from mongotune.models import get_model

    hr = get_model("hyperresnet")
    assert hr.space((32, 32, 3))["aug_flip"] is True
    assert "aug_flip" not in hr.space((8, 8, 1))
    assert _batch_sizes("hyperresnet", (8, 8, 1), variant="auto") <= {16, 32, 48, 64, 80, 96, 112, 128}


def test_small_input_spaces_are_narrow_and_the_seed_spaces_stay_for_seed_sizes():
    from mongotune.models import get_model

    def samples(model, shape, variant="auto", n=200):
        space = get_model(model).space(shape, variant=variant)
        rng = np.random.default_rng(1)
        return [stochastic.sample(space, rng=rng) for _ in range(n)]

    small = samples("baseline", (8, 8, 1))
    assert {s["layer_size"] for s in small} == {64, 128, 256}
    assert {s["num_layers"] for s in small} == {1, 2, 3}
    assert 5e-4 <= min(s["learning_rate"] for s in small) and max(s["learning_rate"] for s in small) <= 3e-2
    assert max(s["layer_size"] for s in samples("baseline", (28, 28, 1))) == 1536  # 28x28: the seed's
    assert max(s["learning_rate"] for s in samples("baseline", (8, 8, 1), "seed")) > 0.1  # asked for by name

    conv = samples("convstrix", (8, 8, 1))
    assert {s["fcl_layer_size"] for s in conv} == {64, 128, 256} and max(s["fcl_num_layers"] for s in conv) == 2
    assert max(s["learning_rate"] for s in conv) <= 1e-2
    assert {s["num_blocks"] for s in conv} == {2, 3, 4}  # the convolutions stay the seed's, capped by size
    assert max(s["fcl_layer_size"] for s in samples("convstrix", (28, 28, 1))) == 1536

    assert not get_model("vggstrix").has_small_space
    with pytest.raises(ConfigError, match="no small-input space"):
        get_model("vggstrix").space((32, 32, 3), variant="small")
    with pytest.raises(ConfigError, match="unknown space variant"):
        get_model("baseline").space((8, 8, 1), variant="tiny")


def test_any_option_overrides_its_part_of_the_recipe(tmp_path):
    from mongotune.models.recipes import resolve_launch

    weights = tmp_path / "vgg.weights.h5"
    weights.write_bytes(b"checked later, by check_launch_inputs")
    s = resolve_launch("vggstrix", {"size": 64, "channels": 1, "interpolation": "cubic", "val_fraction": 0.3,
                                    "epochs": 2, "patience": 1, "loss": "val_loss", "weights": str(weights),
                                    "max_evals": 3, "seed": 7, "source": str(tmp_path)})
    assert s.dataset == {"name": "fashion_mnist", "size": 64, "channels": 1, "interpolation": "cubic",
                         "val_fraction": 0.3, "seed": 7, "source": str(tmp_path), "label_mode": "fine"}
    assert (s.epochs, s.patience, s.loss, s.max_evals) == (2, 1, "val_loss", 3)
    assert s.weights == str(weights.resolve())
    assert s.notices == []  # the user's own size and channels: nothing adapted
    assert {k for k, v in s.origins.items() if v == "user"} >= {"size", "channels", "epochs", "weights"}
    # None means "not given": the recipe's value
    assert resolve_launch("baseline", {"epochs": None, "size": None}).epochs == 50


def test_another_dataset_takes_its_own_images_and_the_recipes_training():
    from mongotune.models.recipes import resolve_launch

    s = resolve_launch("convstrix", {"dataset": "cifar10"})
    assert s.dataset["name"] == "cifar10" and s.dataset["size"] is None and s.dataset["channels"] is None
    assert s.dataset["val_fraction"] == 0.1 and s.dataset["interpolation"] == "area"
    assert (s.epochs, s.patience, s.loss) == (50, 5, "neg_val_accuracy_squared")
    assert s.input_shape == (32, 32, 3) and s.space_variant == "seed" and s.notices == []


@pytest.mark.parametrize("model", ["baseline", "convstrix", "hyperresnet", "vggstrix"])
def test_small_images_adapt_to_every_model_on_digits(model, tmp_path):
    """Each model on 8x8 digits: the settings build a model that trains (one real trial)."""
    from mongotune.models import get_model
    from mongotune.models.recipes import check_launch_inputs, resolve_launch

    options = {"dataset": "digits", "epochs": 1, "max_evals": 1}
    if model == "vggstrix":
        options["weights"] = str(_vgg19_weights(tmp_path))
    s = resolve_launch(model, options)
    model_def = get_model(model)
    if model == "vggstrix":
        # resized to VGG19's smallest input and converted to RGB, the seed's way (OpenCV, linear)
        assert s.input_shape == (32, 32, 3)
        assert (s.dataset["size"], s.dataset["channels"], s.dataset["interpolation"]) == (32, 3, "linear")
        assert s.origins["size"] == s.origins["channels"] == "adapted"
        assert len(s.notices) == 1
        assert "32x32 RGB" in s.notices[0] and "8x8x1" in s.notices[0] and "--size/--channels" in s.notices[0]
        assert s.space_variant == "seed"
    else:
        # the images fit: nothing resized, the small-input space instead of the seed's
        assert s.input_shape == (8, 8, 1) and s.dataset["size"] is None and s.dataset["channels"] is None
        assert s.space_variant == "small" and model_def.is_small_input(s.input_shape)
        assert len(s.notices) == 1 and "small-input space" in s.notices[0]
    check_launch_inputs(s)  # digits ship with scikit-learn; the weights file is a VGG19

    result = _one_trial(s, model)
    assert result["status"] == "ok" and 0.0 <= result["val_accuracy"] <= 1.0
    assert result["epochs"] == 1


def test_explicit_size_and_channels_win_over_the_adaptation():
    from mongotune.models.recipes import resolve_launch

    s = resolve_launch("vggstrix", {"dataset": "digits", "size": 48, "channels": 1})
    assert s.input_shape == (48, 48, 1) and s.notices == []  # VGGStrix repeats the channel itself
    s = resolve_launch("vggstrix", {"dataset": "mnist", "channels": 1})
    assert s.input_shape == (32, 32, 1) and "resizing them to 32x32" in s.notices[0]
    assert "RGB" not in s.notices[0].split(":", 1)[1]
    with pytest.raises(ConfigError, match="at least 32x32 pixels, got 16x16"):
        resolve_launch("vggstrix", {"dataset": "digits", "size": 16})


def test_npz_images_are_measured_from_the_file(tmp_path):
    from mongotune.models.recipes import resolve_launch

    path = tmp_path / "small.npz"
    np.savez(path, x=np.zeros((30, 12, 12), np.uint8), y=np.arange(30) % 3)
    s = resolve_launch("vggstrix", {"dataset": "npz", "source": str(path)})
    assert s.input_shape == (32, 32, 3) and "npz has 12x12x1" in s.notices[0]
    s = resolve_launch("baseline", {"dataset": "npz", "source": str(path)})
    assert s.input_shape == (12, 12, 1) and s.space_variant == "small"


def test_a_frozen_random_base_is_refused():
    from mongotune.models import get_model
    from mongotune.models.recipes import resolve_launch

    for weights in ("none", "None", "", "random"):
        with pytest.raises(ConfigError, match="frozen.*--weights imagenet.*--weights PATH.*convstrix"):
            resolve_launch("vggstrix", {"weights": weights})
    vgg = get_model("vggstrix")
    params = vgg.corners((32, 32, 3))[0]
    with pytest.raises(ConfigError, match="frozen"):  # a study written by other means fails each trial, loudly
        vgg.build(params, (32, 32, 3), 10, weights=None)
    # only vggstrix freezes layers; the others take no weights at all
    for model in ("baseline", "convstrix", "hyperresnet"):
        assert not get_model(model).takes_weights
        with pytest.raises(ConfigError, match=f"{model}: takes no pre-trained weights.*vggstrix"):
            resolve_launch(model, {"weights": "imagenet"})


def test_unknown_or_bad_options_are_config_errors():
    from mongotune.models.recipes import resolve_launch

    with pytest.raises(ConfigError, match="unknown recipe option.*epoch;.*epochs"):
        resolve_launch("baseline", {"epoch": 3})
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        resolve_launch("nope", {})
    with pytest.raises(ConfigError, match="--max-evals must be a positive integer"):
        resolve_launch("baseline", {"max_evals": 0})
    with pytest.raises(ConfigError, match="unknown loss"):
        resolve_launch("baseline", {"loss": "accuracy"})
    with pytest.raises(DataError, match="unknown dataset"):
        resolve_launch("baseline", {"dataset": "imagenet"})
    with pytest.raises(ConfigError, match="weights file not found"):
        resolve_launch("vggstrix", {"weights": "/nonexistent/vgg19.h5"})


def test_offline_missing_data_and_weights_fail_in_one_line_naming_both(tmp_path, monkeypatch):
    from mongotune.models.recipes import check_launch_inputs, resolve_launch

    _offline(monkeypatch, tmp_path)
    s = resolve_launch("vggstrix", {})
    with pytest.raises(UserError) as info:
        check_launch_inputs(s)
    msg = str(info.value)
    assert "\n" not in msg
    assert "fashion_mnist: could not download" in msg and "--source" in msg
    assert "ImageNet VGG19 weights" in msg and "--weights PATH" in msg


def test_a_weights_file_of_the_wrong_shape_is_one_line(tmp_path):
    import keras

    from mongotune.models.recipes import check_launch_inputs, resolve_launch

    other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    path = tmp_path / "not-vgg.weights.h5"
    other.save_weights(str(path))
    s = resolve_launch("vggstrix", {"dataset": "digits", "weights": str(path)})
    with pytest.raises(UserError) as info:
        check_launch_inputs(s)
    msg = str(info.value)
    assert "\n" not in msg and "does not hold VGG19 no-top weights" in msg and str(path) in msg


def test_a_local_fashion_mnist_copy_is_found_and_checked(tmp_path):
    from mongotune.models.recipes import check_launch_inputs, resolve_launch

    src = tmp_path / "fmnist"
    make_idx_dir(src, gz=False)  # uncompressed copies: no published checksum, pinned on first use
    check_launch_inputs(resolve_launch("baseline", {"source": str(src)}))
    make_idx_dir(src, gz=True)  # gzip'd files must be the published ones: these are not
    with pytest.raises(UserError, match="checksum mismatch"):
        check_launch_inputs(resolve_launch("baseline", {"source": str(src)}))


# ---------------------------------------------------------------- helpers


def _offline(monkeypatch, tmp_path):
    """No network: every HTTP(S) request goes to a closed local port; an empty Keras cache."""
    from mongotune.store.embedded import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, closed)
    monkeypatch.setenv("no_proxy", "")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))


def _vgg19_weights(tmp_path: Path) -> Path:
    import keras

    path = tmp_path / "vgg19-notop.weights.h5"
    if not path.exists():
        keras.applications.VGG19(weights=None, include_top=False, input_shape=(32, 32, 3)).save_weights(str(path))
        keras.backend.clear_session()
    return path


def _one_trial(settings, model: str) -> dict:
    from mongotune.data import DataSpec
    from mongotune.objectives import TrialContext
    from mongotune.objectives.keras_launch import keras_objective
    from mongotune.objectives.keras_trial import Training, train_trial
    from mongotune.store.studies import Study

    training = Training(epochs=settings.epochs, patience=settings.patience, loss=settings.loss,
                        weights=settings.weights, max_train_samples=200, save_model=False, tensorboard=False)
    study = Study(name=f"recipe-{model}", max_evals=1,
                  objective=keras_objective(model, DataSpec.from_dict(settings.dataset), training))
    from mongotune.models import get_model

    space = get_model(model).space(settings.input_shape)
    params = stochastic.sample(space, rng=np.random.default_rng(3))
    return train_trial(study, params, TrialContext(tid=0, attempt=0, artifacts_dir=None))


def test_a_model_without_a_recipe_gets_the_defaults_and_the_adaptation():
    from mongotune.models import ModelDef
    from mongotune.models.recipes import resolve_launch

    class Wide(ModelDef):  # e.g. a user's own model function
        name = "wide"
        min_input_size = 16
        input_channels = 3

    s = resolve_launch(Wide(), {"dataset": "digits"})
    assert s.recipe is None and (s.epochs, s.patience, s.loss, s.max_evals) == (50, 5, "neg_val_accuracy", 20)
    assert s.input_shape == (16, 16, 3) and s.dataset["interpolation"] == "area"
    assert s.notices == ["wide needs at least 16x16 RGB images; digits has 8x8x1: resizing them to 16x16 (area) "
                         "and converting them to RGB (--size/--channels override)"]
