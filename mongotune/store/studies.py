"""Study documents: what to train and how, as plain JSON in ``db.studies``.

A study names its model, dataset (a ``DataSpec`` dict), search space (the
model's built-in space, or a JSON space), training settings, budget and
algorithm.  Workers rebuild the objective from this document and the
installed model registry: no code or data is ever pickled into MongoDB.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import pymongo
import pymongo.errors

from ..errors import ConfigError, StudyNotFound
from .trialdoc import DEFAULT_LEASE_S, DEFAULT_MAX_ATTEMPTS

ALGOS = ("tpe", "rand", "anneal")
OBJECTIVES = ("keras", "synthetic", "sleep")
LOSSES = ("neg_val_accuracy", "neg_val_accuracy_squared", "val_loss")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def _now():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


SWITCHES = ("auto", "on", "off")


def spare_for(live_workers: int) -> int:
    """The default number of trials queued beyond the idle workers: a third of the pool, at least 1.

    Workers that finish while the coordinator is between polls find these
    waiting.  Measured (bench/bench_pool.py, 8 workers, 1 s trials, embedded
    server, separate runs): pool efficiency 0.82-0.86 with 1 spare, 0.87-0.89 with 2,
    0.88-0.92 with 3.  More spares mean TPE suggests with fewer results known.
    """
    return max(1, round(live_workers / 3))


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
    artifacts: str | None = None  # artifact root (local path or shared filesystem)
    save_model: bool = True
    tensorboard: bool = True
    seed: int = 0


@dataclass
class Study:
    name: str
    model: str
    dataset: dict
    max_evals: int
    algo: str = "tpe"
    space: dict | None = None  # JSON space; None = the model's built-in space
    objective: str = "keras"
    augment: bool = False  # merge the augmentation sub-space into the model's own space
    training: Training = field(default_factory=Training)
    lease_s: float = DEFAULT_LEASE_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    startup_trials: int | None = None  # tpe: random trials before TPE models the results (None: hyperopt's 20)
    queue_spare: int | None = None  # trials queued beyond the idle workers; None: spare_for(live workers)
    seed: int = 0
    options: dict = field(default_factory=dict)  # objective-specific settings
    status: str = "created"
    created: datetime.datetime | None = None
    updated: datetime.datetime | None = None
    best: dict | None = None
    final: dict | None = None

    @property
    def exp_key(self) -> str:
        return f"mongotune:{self.name}"

    def validate(self) -> "Study":
        if not _NAME.match(self.name or ""):
            raise ConfigError(f"bad study name {self.name!r}: use letters, digits, '-', '_', '.' (max 100)")
        if not isinstance(self.max_evals, int) or self.max_evals < 1:
            raise ConfigError(f"--max-evals must be a positive integer, got {self.max_evals}")
        if self.algo not in ALGOS:
            raise ConfigError(f"unknown algorithm {self.algo!r}; choose from: {', '.join(ALGOS)}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}; choose from: {', '.join(OBJECTIVES)}")
        if self.training.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.training.loss!r}; choose from: {', '.join(LOSSES)}")
        if self.startup_trials is not None and (self.algo != "tpe" or self.startup_trials < 1):
            raise ConfigError(f"--startup-trials applies to --algo tpe and must be >= 1, got {self.startup_trials}"
                              f" with --algo {self.algo}")
        if self.queue_spare is not None and self.queue_spare < 0:
            raise ConfigError(f"--queue-spare must be >= 0, got {self.queue_spare}")
        if self.lease_s <= 0 or self.max_attempts < 1:
            raise ConfigError("lease must be > 0 seconds and max attempts >= 1")
        for key in ("mixed_precision", "xla"):
            if getattr(self.training, key) not in SWITCHES:
                raise ConfigError(f"--{key.replace('_', '-')} must be one of {', '.join(SWITCHES)}, "
                                  f"got {getattr(self.training, key)!r}")
        if self.training.epochs < 1 or self.training.patience < 0:
            raise ConfigError("epochs must be >= 1 and patience >= 0")
        return self

    def to_doc(self) -> dict:
        doc = asdict(self)
        doc["_id"] = self.name
        doc["exp_key"] = self.exp_key
        return doc

    @classmethod
    def from_doc(cls, doc: dict) -> "Study":
        d = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        d["training"] = Training(**{k: v for k, v in (doc.get("training") or {}).items()
                                    if k in Training.__dataclass_fields__})
        return cls(**d)


class StudyStore:
    """CRUD on ``db.studies``."""

    def __init__(self, db):
        self.db = db
        self.coll = db.studies

    def create(self, study: Study, *, exist_ok: bool = False) -> Study:
        study.validate()
        study.created = study.updated = _now()
        study.status = "created"
        try:
            self.coll.insert_one(study.to_doc())
        except pymongo.errors.DuplicateKeyError:
            if not exist_ok:
                raise ConfigError(
                    f"study {study.name!r} already exists; use `mongotune resume {study.name}` or another --study"
                ) from None
            return self.get(study.name)
        return study

    def get(self, name: str) -> Study:
        doc = self.coll.find_one({"_id": name})
        if doc is None:
            known = [d["_id"] for d in self.coll.find({}, projection=["_id"]).limit(20)]
            hint = f"; known: {', '.join(known)}" if known else "; no studies yet"
            raise StudyNotFound(f"no study named {name!r}{hint}")
        return Study.from_doc(doc)

    def find(self, name: str) -> Study | None:
        doc = self.coll.find_one({"_id": name})
        return Study.from_doc(doc) if doc else None

    def list(self) -> list[Study]:
        return [Study.from_doc(d) for d in self.coll.find().sort("created", pymongo.ASCENDING)]

    def update(self, name: str, **fields: Any) -> None:
        from . import encode

        fields["updated"] = _now()
        self.coll.update_one({"_id": name}, {"$set": encode(fields)})
