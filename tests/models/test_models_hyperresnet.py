"""HyperResNet: the fine/coarse heads and the architecture switches."""

from __future__ import annotations

import math

import numpy as np
import pytest


def _params(**overrides):
    from mongotune.models import get_model

    return {**get_model("hyperresnet").corners((16, 16, 3))[0], **overrides}


def test_two_heads_have_the_right_shapes_and_train_with_loss_weights(zoo):
    from mongotune.models import get_model

    hr = get_model("hyperresnet")
    params = _params(coarse_labels_weight=0.5, conv_dropout=0.0, fc_dropout=0.0,
                     l2_weight_reg_mult=1e-9)
    model = hr.build(params, (16, 16, 3), 100, num_coarse_classes=20)
    x, y = zoo.random_batch((16, 16, 3), 100, 20)
    out = model.predict(x, verbose=0)
    assert set(out) == {"fine", "coarse"}
    assert out["fine"].shape == (zoo.batch, 100) and out["coarse"].shape == (zoo.batch, 20)
    assert model.get_layer("fine").units == 100 and model.get_layer("coarse").units == 20

    logs = zoo.train_one_step(hr, model, params, x, y, num_coarse_classes=20)
    assert math.isfinite(logs["loss"])
    # total = fine + 0.5 * coarse (+ a negligible L2 term)
    assert logs["loss"] == pytest.approx(logs["fine_loss"] + 0.5 * logs["coarse_loss"], rel=1e-3)
    assert logs["fine_loss"] == pytest.approx(math.log(100), rel=0.3)


def test_single_head_without_coarse_labels(zoo):
    from mongotune.models import get_model

    hr = get_model("hyperresnet")
    params = _params()
    model = hr.build(params, (16, 16, 3), 10, num_coarse_classes=None)
    assert model.output_names == ["output"]
    x, y = zoo.random_batch((16, 16, 3), 10)
    assert model.predict(x, verbose=0).shape == (zoo.batch, 10)
    logs = zoo.train_one_step(hr, model, params, x, y, num_coarse_classes=None)
    assert math.isfinite(logs["loss"]) and "accuracy" in logs


def test_output_names_follow_the_last_build_of_equal_params():
    """The trainer may ask ``output_names(params)`` without repeating
    ``num_coarse_classes``; the answer must match the model it just built."""
    from mongotune.models import get_model

    hr = get_model("hyperresnet")
    params = _params(coarse_labels_weight=0.25, fc_dropout=0.123)
    assert hr.output_names(params) == ["fine", "coarse"]  # nothing built yet
    hr.build(dict(params), (16, 16, 3), 10, num_coarse_classes=None)
    assert hr.output_names(params) == ["output"]
    assert hr.loss_weights(params) is None
    hr.build(dict(params), (16, 16, 3), 10, num_coarse_classes=5)
    assert hr.output_names(params) == ["fine", "coarse"]
    assert hr.loss_weights(params) == {"fine": 1.0, "coarse": 0.25}
    # an explicit answer always wins
    assert hr.output_names(params, num_coarse_classes=None) == ["output"]


@pytest.mark.parametrize("pooling,extra_layer", [
    ("max", "stage1_pool"), ("avg", "stage1_pool"), ("all_conv", "stage1_pool_act"),
    ("inception", "stage1_pool"),
])
def test_pooling_types_halve_the_feature_map(pooling, extra_layer):
    from mongotune.models import get_model

    model = get_model("hyperresnet").build(_params(pooling=pooling), (16, 16, 3), 10)
    conv = model.get_layer("stage1_conv")
    pooled = model.get_layer(extra_layer).output
    assert tuple(pooled.shape[1:3]) == (8, 8)
    channels = conv.filters * (2 if pooling == "inception" else 1)
    assert pooled.shape[-1] == channels


def test_residual_units_start_at_the_chosen_stage():
    from mongotune.models import get_model

    hr = get_model("hyperresnet")
    model = hr.build(_params(residual_units=2, res_start_stage=1, num_stages=3), (16, 16, 3), 10)
    names = {layer.name for layer in model.layers}
    assert "stage1_res1_add" not in names
    assert {"stage2_res1_add", "stage2_res2_add", "stage3_res2_add"} <= names
    assert "stage2_res3_add" not in names
    # a start stage past the last one is clamped to the last stage
    model = hr.build(_params(residual_units=1, res_start_stage=2, num_stages=2), (16, 16, 3), 10)
    names = {layer.name for layer in model.layers}
    assert "stage2_res1_add" in names and "stage1_res1_add" not in names
    # width multiplier scales the filters; the special first conv has its own kernel
    model = hr.build(_params(width_mult=2.0, first_conv=4), (16, 16, 3), 10)
    assert model.get_layer("stage2_conv").filters == 128
    assert model.get_layer("first_conv").kernel_size == (4, 4)
    assert np.isfinite(model.count_params())
