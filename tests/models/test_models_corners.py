"""Every model builds at the extreme corners of its space and trains a step."""

from __future__ import annotations

import math

import numpy as np
import pytest

CASES = [
    # model, input shape, classes, coarse classes
    ("baseline", (8, 8, 1), 10, None),  # the small-input spaces
    ("convstrix", (8, 8, 1), 10, None),
    ("baseline", (28, 28, 1), 10, None),  # the seeds' spaces
    ("convstrix", (28, 28, 1), 10, None),
    ("vggstrix", (32, 32, 3), 10, None),
    ("hyperresnet", (16, 16, 3), 10, 4),
    ("hyperresnet", (16, 16, 3), 10, None),
]


@pytest.mark.parametrize("name,shape,classes,coarse", CASES,
                         ids=[f"{c[0]}-{'x'.join(map(str, c[1]))}-{'2heads' if c[3] else '1head'}"
                              for c in CASES])
def test_corners_build_and_train_one_step(name, shape, classes, coarse, zoo):
    from mongotune.models import get_model

    model_def = get_model(name)
    corners = model_def.corners(shape)
    assert len(corners) >= 2
    x, y = zoo.random_batch(shape, classes, coarse)
    for params in corners:
        model = model_def.build(params, shape, classes, num_coarse_classes=coarse,
                                weights="random" if name == "vggstrix" else None)
        names = model_def.output_names(params, num_coarse_classes=coarse)
        assert sorted(model.output_names) == sorted(names), params

        probs = model.predict(x, verbose=0)
        if len(names) == 1:
            probs = {"output": probs}
        for head, n in (("output", classes), ("fine", classes), ("coarse", coarse)):
            if head in probs:
                p = np.asarray(probs[head])
                assert p.shape == (zoo.batch, n), (head, params)
                np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-4)

        logs = zoo.train_one_step(model_def, model, params, x, y, num_coarse_classes=coarse)
        assert math.isfinite(logs["loss"]) and logs["loss"] > 0, (logs, params)


def test_corners_cover_every_branch_and_extreme():
    from mongotune.models import get_model

    corners = get_model("convstrix").corners((8, 8, 1), variant="seed")
    assert corners[0]["num_blocks"] == 2 and corners[1]["num_blocks"] == 4
    assert {c["block_size"] for c in corners} == {1, 3}
    assert {c["optimizer"] for c in corners} == {"adam", "adamax", "nadam", "rmsprop"}
    assert {c["activation"] for c in corners} == {"relu", "selu", "tanh"}
    assert {c["fcl_layer_size"] for c in corners} == {512, 768, 1024, 1536}
    assert min(c["learning_rate"] for c in corners) == pytest.approx(1e-4)
    assert max(c["learning_rate"] for c in corners) == pytest.approx(1.0)

    hr = get_model("hyperresnet").corners((32, 32, 3))
    assert {c["pooling"] for c in hr} == {"max", "avg", "all_conv", "inception"}
    # the nested choice: both kernel sizes appear while the branch is active
    assert {c["first_conv"] for c in hr} == {None, 3, 4}
    assert {c["residual_units"] for c in hr} == {None, 1, 4}
    assert {c["num_stages"] for c in hr} == {2, 3}

    vgg = get_model("vggstrix").corners((224, 224, 1))
    convs = {(c["conv"]["num_blocks"], c["conv"]["block_size"]) for c in vgg}
    assert convs == {(0, 0), (1, 1), (1, 3), (2, 1), (3, 1)}
