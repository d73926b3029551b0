"""A study's progress at one moment: what ``status``, ``launch``'s progress line and reports show.

Only reads (through ``trialdoc`` and the worker registry), and no hyperopt:
``mongotune status`` answers without loading the search machinery.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .studies import Study
from .trialdoc import TrialStore, server_now
from .workers import WorkerRegistry


@dataclass
class Snapshot:
    """A study's progress at one moment (what ``status`` and ``launch`` show)."""

    name: str
    max_evals: int
    counts: dict = field(default_factory=dict)  # queued, running, ok, failed, pruned, error
    best_loss: float | None = None
    best_params: dict | None = None
    best_tid: int | None = None
    best_metric: float | None = None  # the study metric's value in the best trial's result
    metric: dict = field(default_factory=dict)
    running: list = field(default_factory=list)  # [{tid, attempt, worker, gpu, heartbeat_age_s, progress}]
    live_workers: int = 0
    elapsed_s: float = 0.0

    @property
    def finished(self) -> int:
        return sum(self.counts.get(k, 0) for k in ("ok", "failed", "pruned", "error"))

    def as_dict(self) -> dict:
        return {"name": self.name, "max_evals": self.max_evals, "finished": self.finished, "counts": self.counts,
                "best": None if self.best_tid is None else {
                    "tid": self.best_tid, "loss": self.best_loss, "params": self.best_params,
                    "metric": {**self.metric, "value": self.best_metric}},
                "running": self.running, "live_workers": self.live_workers, "elapsed_s": round(self.elapsed_s, 3)}


def snapshot(trials: TrialStore, workers: WorkerRegistry, study: Study, started: float | None = None,
             view=None) -> Snapshot:
    """``view``: the coordinator's own refreshed trials (fmin's ``Trials``), which give the counts,
    the best trial and the running trials without reading the study (see ``TrialStore.summarize``)."""
    if view is not None:
        counts, best, running_records = trials.summarize(view.trials, study.exp_key)
    else:
        counts, best, running_records = (trials.counts(study.exp_key), trials.best(study.exp_key),
                                         trials.running(study.exp_key))
    now = server_now(trials.db)
    running = []
    for rec in running_records:
        w = rec.worker
        running.append({"tid": rec.tid, "attempt": rec.attempts + 1, "worker": w.id if w else None,
                        "host": w.host if w else None, "gpu": w.gpu if w else None,
                        "heartbeat_age_s": (now - rec.refresh_time).total_seconds() if rec.refresh_time else None,
                        "progress": rec.progress or {}, "step": rec.curve[-1].step if rec.curve else None})
    best_metric = best.metric_value(str(study.metric.get("name") or "loss")) if best else None
    elapsed = time.monotonic() - started if started else trial_span_s(trials, study.exp_key, now)
    return Snapshot(study.name, study.max_evals, counts.as_dict(),
                    best.loss if best else None, best.param_values if best else None, best.tid if best else None,
                    best_metric, dict(study.metric), running, len(workers.live(study.exp_key, now)), elapsed)


def trial_span_s(trials: TrialStore, exp_key: str, now) -> float:
    """Seconds from the study's first trial taken to its last one ended (to now while one runs)."""
    first, last, running = trials.span(exp_key)
    end = now if running else last
    if first is None or end is None:
        return 0.0
    return max(0.0, (end - first).total_seconds())
