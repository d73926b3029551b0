"""Fixtures for the model-zoo tests: tiny random uint8 batches and a helper
that compiles a model the way the trainer does and trains it for one step."""

from __future__ import annotations

import math

import numpy as np
import pytest

BATCH = 4


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    import keras

    keras.utils.set_random_seed(1234)
    yield
    keras.backend.clear_session()


def random_batch(shape, num_classes, num_coarse=None, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(BATCH, *shape), dtype=np.uint8)
    fine = rng.integers(0, num_classes, size=(BATCH,))
    if num_coarse is None:
        return x, fine
    return x, {"fine": fine, "coarse": rng.integers(0, num_coarse, size=(BATCH,))}


def train_one_step(model_def, model, params, x, y, *, num_coarse_classes=None):
    """Compile as the trainer does and fit one step; returns the history dict."""
    from mongotune.models import make_optimizer

    model.compile(
        optimizer=make_optimizer(params["optimizer"], model_def.learning_rate(params)),
        **model_def.compile_kwargs(params, num_coarse_classes=num_coarse_classes),
    )
    history = model.fit(x, y, epochs=1, steps_per_epoch=1, batch_size=BATCH, verbose=0)
    return {k: float(v[0]) for k, v in history.history.items()}


@pytest.fixture
def zoo():
    """Namespace of the helpers above."""

    class _Zoo:
        batch = BATCH
        random_batch = staticmethod(random_batch)
        train_one_step = staticmethod(train_one_step)
        isfinite = staticmethod(math.isfinite)

    return _Zoo
