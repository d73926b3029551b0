"""A Keras study's own settings, readable without numpy or TensorFlow.

``Training`` (how each trial trains) and ``KerasSettings`` (the study's
``objective``: model, dataset, training, augmentation, the user's model
function) are what a launch checks and a worker reads; the trial itself is
``keras_trial``.  Nothing here imports more than the standard library, so a
launch answers a bad ``--loss`` or ``--xla`` at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import ConfigError

LOSSES = ("neg_val_accuracy", "neg_val_accuracy_squared", "val_loss")
SWITCHES = ("auto", "on", "off")


@dataclass
class Training:
    """How each trial trains (the parts that are not searched)."""

    epochs: int = 50
    patience: int = 5
    loss: str = "neg_val_accuracy"
    max_train_samples: int | None = None
    mixed_precision: str = "auto"  # auto | on | off: mixed_float16 when a GPU is present
    xla: str = "auto"  # auto | on | off: XLA-compiled train steps when a GPU is present (not with torch)
    weights: str | None = None  # vggstrix: 'imagenet', a path, or None
    save_model: bool = True
    keep_models: int = 3  # the best K trials keep their model.keras; the others' are deleted as the study goes
    tensorboard: bool = True
    seed: int = 0  # the study's seed: each trial's weights and sample draw from seed and trial id
    checkpoints: bool = True  # save model and optimizer at the end of epochs; a requeued trial resumes
    checkpoint_every: float = 0.0  # at most one checkpoint per this many seconds (0: every epoch)

    def validate(self) -> "Training":
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}; choose from: {', '.join(LOSSES)}")
        for key in ("mixed_precision", "xla"):
            if getattr(self, key) not in SWITCHES:
                raise ConfigError(f"--{key.replace('_', '-')} must be one of {', '.join(SWITCHES)}, "
                                  f"got {getattr(self, key)!r}")
        if self.epochs < 1 or self.patience < 0:
            raise ConfigError("--epochs must be >= 1 and --patience >= 0")
        if self.keep_models < 0:
            raise ConfigError(f"--keep-models must be >= 0, got {self.keep_models}")
        if not isinstance(self.checkpoint_every, (int, float)) or not 0 <= self.checkpoint_every < float("inf"):
            raise ConfigError(f"--checkpoint-every must be a number of seconds >= 0, got {self.checkpoint_every}")
        return self

    @property
    def metric(self) -> dict:
        """The metric the trial monitors (early stopping, curve, pruning) and which way is better."""
        return {"name": "val_loss", "goal": "min"} if self.loss == "val_loss" else {
            "name": "val_accuracy", "goal": "max"}


@dataclass
class KerasSettings:
    """A Keras study's objective settings: ``{"kind": "keras", "model": ..., "dataset": ..., ...}``."""

    model: str
    dataset: dict
    training: Training = field(default_factory=Training)
    augment: bool = False
    model_fn: str | None = None  # "package.module:function" of the user's own builder

    @classmethod
    def of(cls, study) -> "KerasSettings":
        return cls.from_objective(study.objective)

    @classmethod
    def from_objective(cls, objective: dict) -> "KerasSettings":
        training = Training(**{k: v for k, v in (objective.get("training") or {}).items()
                               if k in Training.__dataclass_fields__})
        return cls(model=objective.get("model"), dataset=objective.get("dataset") or {}, training=training,
                   augment=bool(objective.get("augment")), model_fn=objective.get("model_fn"))

    def to_objective(self) -> dict:
        return {"kind": "keras", **dataclasses.asdict(self)}

    def local_paths(self) -> list[str]:
        """Files a worker would read because the study says so (checked against its allowed roots)."""
        paths = []
        if self.dataset.get("source"):
            paths.append(self.dataset["source"])
        if self.training.weights and self.training.weights != "imagenet":
            paths.append(self.training.weights)
        return paths


NATIVE_SHAPES = {
    "digits": (8, 8, 1),
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "cifar100": (32, 32, 3),
}


def input_shape_of(dataset: dict) -> tuple[int, int, int]:
    """Image shape a study's dataset will have, without loading it when possible."""
    name = dataset.get("name")
    if name in NATIVE_SHAPES:
        h, w, c = NATIVE_SHAPES[name]
        size = dataset.get("size")
        channels = dataset.get("channels")
        return (int(size or h), int(size or w), int(channels or c))
    from ..data import DataSpec, load

    return tuple(load(DataSpec.from_dict(dataset)).input_shape)
