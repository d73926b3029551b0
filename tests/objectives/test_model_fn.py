"""--model-fn: the user's build_model, imported by name from a module outside the package."""

from __future__ import annotations

import textwrap

import pytest

from mongotune.errors import ConfigError
from mongotune.objectives.model_fn import FunctionModel, check_at_launch, check_ref, import_model_fn

SPACE = {"units": {"hp": "choice", "options": [8, 16]}, "learning_rate": {"hp": "loguniform", "low": 1e-4,
                                                                          "high": 1e-2}}


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of the user's in a folder of theirs (not in mongotune), put on the import path."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "usermodels.py").write_text(textwrap.dedent("""
        import keras

        def build_model(params, input_shape, num_classes):
            inputs = keras.Input(shape=input_shape)
            x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
            x = keras.layers.Dense(int(params["units"]), activation="relu")(x)
            return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))

        def wrong_classes(params, input_shape, num_classes):
            inputs = keras.Input(shape=input_shape)
            return keras.Model(inputs, keras.layers.Dense(num_classes + 1)(keras.layers.Flatten()(inputs)))

        def not_a_model(params, input_shape, num_classes):
            return "model"

        def raises(params, input_shape, num_classes):
            raise ValueError("units must be even")

        SOMETHING = 3
    """))
    (folder / "broken.py").write_text("import keras\nraise RuntimeError('half-written module')\n")
    monkeypatch.syspath_prepend(str(folder))
    return "usermodels"


def test_a_users_function_builds_a_model(user_module):
    model = FunctionModel(f"{user_module}:build_model").build({"units": 8}, (8, 8, 1), 10)
    assert model.outputs[0].shape[-1] == 10 and model.count_params() > 0
    summary = check_at_launch(f"{user_module}:build_model", SPACE, (8, 8, 1), 10)
    assert summary["params"]["units"] in (8, 16) and summary["parameters"] > 0


@pytest.mark.parametrize("ref, says", [
    ("usermodels", "expected package.module:function"),
    ("user models:f", "expected package.module:function"),
    ("no_such_module_xyz:build", "cannot import no_such_module_xyz (ModuleNotFoundError"),
    ("broken:build", "cannot import broken (RuntimeError: half-written module)"),
    ("usermodels:nope", "usermodels has no nope"),
    ("usermodels:SOMETHING", "not a function"),
])
def test_import_errors_are_one_line(user_module, ref, says):
    with pytest.raises(ConfigError) as err:
        import_model_fn(ref) if ":" in ref and " " not in ref else check_ref(ref)
    assert says in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("fn, says", [
    ("wrong_classes", "output has 11 units, the dataset 10 classes"),
    ("not_a_model", "returned a str, not a keras.Model"),
    ("raises", "raised ValueError: units must be even"),
])
def test_launch_check_builds_once_and_refuses_a_bad_model(user_module, fn, says):
    with pytest.raises(ConfigError) as err:
        check_at_launch(f"{user_module}:{fn}", SPACE, (8, 8, 1), 10)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_space_is_required(user_module):
    with pytest.raises(ConfigError, match="--space FILE"):
        check_at_launch(f"{user_module}:build_model", None, (8, 8, 1), 10)
