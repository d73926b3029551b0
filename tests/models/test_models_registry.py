"""Registry look-ups, optimizers and the memory estimate."""

from __future__ import annotations

import pytest

from mongotune.errors import ConfigError


def test_unknown_model_lists_the_choices():
    from mongotune.models import get_model

    with pytest.raises(ConfigError) as info:
        get_model("nope")
    assert str(info.value) == (
        "unknown model 'nope'; choose from: baseline, convstrix, hyperresnet, vggstrix"
    )
    assert get_model("ConvStrix").name == "convstrix"


def test_model_defs_describe_themselves():
    from mongotune.models import ModelDef, available_models, get_model

    sizes = {name: get_model(name).min_input_size for name in available_models()}
    assert sizes["vggstrix"] == 32 and sizes["convstrix"] == 2
    for name in available_models():
        model_def = get_model(name)
        assert isinstance(model_def, ModelDef) and model_def.name == name
        assert model_def.description


@pytest.mark.parametrize("name,cls,lr", [
    ("adam", "Adam", 0.01), ("Adamax", "Adamax", 0.5), ("nadam", "Nadam", 1e-4),
    ("rmsprop", "RMSprop", 0.002), ("rms-prop", "RMSprop", 0.003), ("RMSprop", "RMSprop", 1.0),
])
def test_make_optimizer(name, cls, lr):
    from mongotune.models import make_optimizer

    opt = make_optimizer(name, lr)
    assert type(opt).__name__ == cls
    assert float(opt.learning_rate) == pytest.approx(lr)


def test_make_optimizer_rejects_bad_input():
    from mongotune.models import make_optimizer

    with pytest.raises(ConfigError, match="unknown optimizer 'adagrad'"):
        make_optimizer("adagrad", 0.1)
    with pytest.raises(ConfigError, match="positive"):
        make_optimizer("adam", 0.0)
    with pytest.raises(ConfigError, match="positive"):
        make_optimizer("adam", float("nan"))


def test_single_and_two_headed_output_names_and_loss_weights():
    from mongotune.models import get_model

    conv = get_model("convstrix")
    params = conv.corners((8, 8, 1))[0]
    assert conv.output_names(params) == ["output"]
    assert conv.loss_weights(params) is None
    assert conv.learning_rate(params) == pytest.approx(1e-4)

    hr = get_model("hyperresnet")
    hp = {**hr.corners((16, 16, 3))[0], "coarse_labels_weight": 0.3}
    assert hr.output_names(hp) == ["fine", "coarse"]
    assert hr.output_names(hp, num_coarse_classes=20) == ["fine", "coarse"]
    assert hr.output_names(hp, num_coarse_classes=None) == ["output"]
    assert hr.loss_weights(hp) == {"fine": 1.0, "coarse": 0.3}
    assert hr.loss_weights(hp, num_coarse_classes=None) is None
    kwargs = hr.compile_kwargs(hp, num_coarse_classes=20)
    assert kwargs["loss"] == {"fine": "sparse_categorical_crossentropy",
                              "coarse": "sparse_categorical_crossentropy"}
    assert kwargs["metrics"] == {"fine": ["accuracy"], "coarse": ["accuracy"]}


def test_estimate_memory_grows_with_batch_size_and_optimizer_state():
    import keras

    from mongotune.models import estimate_memory, get_model

    conv = get_model("convstrix")
    model = conv.build(conv.corners((8, 8, 1))[0], (8, 8, 1), 10)
    small = estimate_memory(model, 4)
    big = estimate_memory(model, 64)
    assert small["params"] == big["params"] == model.count_params()
    assert big["param_bytes"] == small["param_bytes"]
    assert big["activation_bytes"] == 16 * small["activation_bytes"] > 0
    assert big["total_bytes"] == big["param_bytes"] + big["activation_bytes"]
    # params x (1 + grads + 2 adam slots), 4 bytes each, when all are trainable
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    frozen = model.count_params() - trainable
    assert small["param_bytes"] == 4 * (frozen + 4 * trainable)
    rms = estimate_memory(model, 4, optimizer="rms-prop")
    assert rms["param_bytes"] == 4 * (frozen + 3 * trainable)
    half = estimate_memory(model, 4, dtype_bytes=2)
    assert half["total_bytes"] * 2 == small["total_bytes"]
    # activation count: the rescale layer alone holds 8*8*1 floats per image
    assert small["activation_bytes"] >= 2 * 4 * 4 * (8 * 8 * 1)
    with pytest.raises(ConfigError):
        estimate_memory(model, 4, optimizer="sgdx")
    assert isinstance(model, keras.Model)
