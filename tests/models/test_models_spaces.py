"""Search spaces: required keys, size-dependent caps, and build-time validation."""

from __future__ import annotations

import math

import pytest
from hyperopt.pyll import stochastic

from mongotune.errors import ConfigError

SHAPES = {"baseline": (8, 8, 1), "convstrix": (8, 8, 1), "vggstrix": (32, 32, 3),
          "hyperresnet": (16, 16, 3)}


def test_every_space_has_the_training_keys():
    from mongotune.models import available_models, get_model

    assert available_models() == ["baseline", "convstrix", "hyperresnet", "vggstrix"]
    for name in available_models():
        model_def = get_model(name)
        space = model_def.space(SHAPES[name])
        assert {"batch_size", "learning_rate", "optimizer"} <= set(space), name
        for seed in range(5):
            params = stochastic.sample(space, rng=__import__("numpy").random.default_rng(seed))
            assert isinstance(params["batch_size"], int) and params["batch_size"] >= 16, params
            lr = model_def.learning_rate(params)
            assert 1e-5 < lr <= 1.0, (name, lr)


def test_baseline_space_matches_the_seed_ranges():
    import numpy as np

    from mongotune.models import get_model

    space = get_model("baseline").space((28, 28, 1))
    rng = np.random.default_rng(0)
    samples = [stochastic.sample(space, rng=rng) for _ in range(300)]
    assert {s["batch_size"] for s in samples} == {16, 32, 64, 128}
    assert {s["layer_size"] for s in samples} == {512, 768, 1024, 1536}
    assert {s["optimizer"] for s in samples} == {"adam", "adamax", "nadam", "rmsprop"}
    layers = {s["num_layers"] for s in samples}
    assert all(isinstance(n, int) and n % 2 == 0 and 0 <= n <= 16 for n in layers)
    assert 16 in layers
    drops = [s["dropout_rate"] for s in samples]
    assert min(drops) >= 0.05 - 1e-9 and max(drops) <= 0.5 + 1e-9
    assert all(abs(d / 0.05 - round(d / 0.05)) < 1e-6 for d in drops)
    lrs = [s["learning_rate"] for s in samples]
    assert 1e-4 <= min(lrs) < 1e-3 and 0.1 < max(lrs) <= 1.0


@pytest.mark.parametrize("side,expected", [(2, 2), (3, 2), (4, 3), (8, 4), (28, 5), (32, 6), (224, 6)])
def test_convstrix_caps_blocks_by_image_size(side, expected):
    from mongotune.models import get_model

    corners = get_model("convstrix").corners((side, side, 1))
    assert max(c["num_blocks"] for c in corners) == expected
    assert min(c["num_blocks"] for c in corners) == 2


def test_convstrix_space_at_8x8_never_samples_an_invalid_config():
    import numpy as np

    from mongotune.models import get_model

    model_def = get_model("convstrix")
    space = model_def.space((8, 8, 1))
    rng = np.random.default_rng(42)
    samples = [stochastic.sample(space, rng=rng) for _ in range(200)]
    blocks = {s["num_blocks"] for s in samples}
    assert blocks == {2, 3, 4}  # 5 blocks would pool 8 -> 0
    # build each distinct architecture once and check the last feature map
    for num_blocks in sorted(blocks):
        params = next(s for s in samples if s["num_blocks"] == num_blocks)
        model = model_def.build(params, (8, 8, 1), 10)
        last = model.get_layer(f"block{num_blocks}_conv1").output
        assert last.shape[1] == last.shape[2] == 8 // 2 ** (num_blocks - 1) >= 1


def test_too_small_inputs_raise_config_error():
    from mongotune.models import get_model

    with pytest.raises(ConfigError, match="at least 2x2"):
        get_model("convstrix").space((1, 1, 1))
    with pytest.raises(ConfigError, match="at least 32x32"):
        get_model("vggstrix").space((28, 28, 1))
    with pytest.raises(ConfigError, match="at least 32x32"):
        get_model("vggstrix").build({}, (16, 16, 3), 10)


def test_invalid_params_raise_config_error_naming_the_key():
    from mongotune.models import get_model

    convstrix = get_model("convstrix")
    good = convstrix.corners((8, 8, 1))[0]
    with pytest.raises(ConfigError, match="num_blocks=5 .* at least 16x16"):
        convstrix.build({**good, "num_blocks": 5}, (8, 8, 1), 10)
    with pytest.raises(ConfigError, match="'block_size' is missing"):
        convstrix.build({k: v for k, v in good.items() if k != "block_size"}, (8, 8, 1), 10)
    with pytest.raises(ConfigError, match="'activation'"):
        convstrix.build({**good, "activation": "wiggle"}, (8, 8, 1), 10)
    with pytest.raises(ConfigError, match="'fcl_dropout_rate' must be < 1"):
        convstrix.build({**good, "fcl_dropout_rate": 1.0}, (8, 8, 1), 10)
    with pytest.raises(ConfigError, match="unknown optimizer"):
        convstrix.build({**good, "optimizer": "adagrad-ish"}, (8, 8, 1), 10)
    with pytest.raises(ConfigError, match="num_classes must be an integer >= 2"):
        convstrix.build(good, (8, 8, 1), 1)
    # quniform floats are accepted and cast
    model = convstrix.build({**good, "num_blocks": 3.0, "block_size": 2.0}, (8, 8, 1), 10)
    assert model.get_layer("block3_conv2") is not None


def test_vggstrix_space_offers_only_the_extra_convs_that_fit():
    import numpy as np

    from mongotune.models import get_model
    from mongotune.models.vggstrix import max_extra_convs

    vgg = get_model("vggstrix")
    # VGG19 output side = H // 32; each valid 3x3 conv removes 2 pixels
    assert [max_extra_convs((s, s, 3)) for s in (32, 95, 96, 159, 160, 224, 512)] == [0, 0, 1, 1, 2, 3, 3]
    assert vgg.space((32, 32, 1))["conv"] == {"num_blocks": 0, "block_size": 0}
    for side in (96, 160, 224):
        space = vgg.space((side, side, 3))
        rng = np.random.default_rng(side)
        for _ in range(100):
            conv = stochastic.sample(space, rng=rng)["conv"]
            used = conv["num_blocks"] * conv["block_size"]
            assert used <= max_extra_convs((side, side, 3))
            assert side // 32 - 2 * used >= 1
    with pytest.raises(ConfigError, match="do not fit"):
        vgg.build({**vgg.corners((32, 32, 3))[0], "conv": {"num_blocks": 1, "block_size": 1}},
                  (32, 32, 3), 10)


def test_hyperresnet_learning_rate_is_base_times_multiplier():
    from mongotune.models import get_model

    hr = get_model("hyperresnet")
    params = hr.corners((16, 16, 3))[1]
    assert params["learning_rate"] == pytest.approx(1e-3)
    assert hr.learning_rate(params) == pytest.approx(1e-3 * math.exp(0.5))
    assert hr.learning_rate({"lr_rate_mult": 2.0}) == pytest.approx(2e-3)


def test_build_accepts_numpy_scalars_as_stored_by_trials():
    import numpy as np

    from mongotune.models import get_model

    hr = get_model("hyperresnet")
    params = hr.corners((16, 16, 3))[2]
    as_numpy = {k: (np.float64(v) if isinstance(v, float) else
                    np.int64(v) if isinstance(v, int) and not isinstance(v, bool) else
                    np.bool_(v) if isinstance(v, bool) else v)
                for k, v in params.items()}
    model = hr.build(as_numpy, (16, 16, 3), 10)
    same = hr.build(params, (16, 16, 3), 10)
    assert model.count_params() == same.count_params() > 0
    with pytest.raises(ConfigError, match="'use_batch_norm' must be true or false"):
        hr.build({**params, "use_batch_norm": "maybe"}, (16, 16, 3), 10)
