"""The per-trial backend switches: each trial gets its own study's precision policy."""

from __future__ import annotations

import pytest

from mongotune.objectives.keras_trial import configure_backend


@pytest.fixture
def restore_policy():
    import keras

    before = keras.mixed_precision.global_policy().name
    yield keras
    keras.mixed_precision.set_global_policy(before)


def test_policy_follows_each_study_in_one_process(restore_policy):
    keras = restore_policy
    on = configure_backend("on", "off")
    assert on["mixed_precision"] is True and on["xla"] is False
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
    # the next trial in the same worker process belongs to a study that wants float32
    off = configure_backend("off", "on")
    assert off["mixed_precision"] is False
    assert keras.mixed_precision.global_policy().name == "float32"
    assert off["xla"] is (keras.backend.backend() != "torch")


def test_auto_follows_what_the_backend_can_use(restore_policy):
    from mongotune.devices import backend_gpus

    import tensorflow as tf

    env = configure_backend("auto", "auto")
    assert backend_gpus() == len(tf.config.list_physical_devices("GPU"))  # the backend's own answer
    assert env["gpu"] is (backend_gpus() > 0)
    assert env["mixed_precision"] is env["gpu"] and env["xla"] is (env["gpu"] and env["backend"] != "torch")
