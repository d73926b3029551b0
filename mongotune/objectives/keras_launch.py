"""Assembling a Keras study at launch: its objective settings, its resolved JSON space, its metric.

Library code behind ``mongotune launch MODEL``: checks what can be checked
without TensorFlow first, then resolves the model's search space for the
dataset's image shape and stores it as JSON in the study, so that workers
and a later ``resume`` need nothing but the study document.
"""

from __future__ import annotations

from ..data import DataSpec
from ..store.studies import Study
from .keras_trial import KerasSettings, Training, input_shape_of


def keras_objective(model: str, dataset: DataSpec, training: Training, *, augment: bool = False,
                    model_fn: str | None = None) -> dict:
    training.validate()
    return KerasSettings(model=model, dataset=dataset.to_dict(), training=training, augment=augment,
                         model_fn=model_fn).to_objective()


def resolve_keras_space(objective: dict, space: dict | None = None) -> dict:
    """The study's JSON space: the one given, or the model's own for the dataset's image shape."""
    from ..search.spaces import build, to_json

    if space is not None:
        build(space)
        return space
    from .._quiet import import_keras_quietly

    import_keras_quietly()
    from ..models import get_model

    ks = KerasSettings.from_objective(objective)
    return to_json(get_model(ks.model).space(input_shape_of(ks.dataset), augment=ks.augment))


def keras_study(name: str, max_evals: int, objective: dict, *, space: dict | None = None, **core) -> Study:
    """A validated Keras ``Study`` (not yet written): the metric follows the training loss."""
    ks = KerasSettings.from_objective(objective)
    study = Study(name=name, max_evals=max_evals, objective=objective, metric=ks.training.metric, **core)
    study.validate()
    study.space = resolve_keras_space(objective, space)
    return study
