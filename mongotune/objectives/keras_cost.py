"""What a trained Keras model costs, as a study may take it for an objective or a constraint (issue 22):

* ``params``: its trainable parameters;
* ``inference_ms``: the median time per image of ``predict_on_batch`` on a small batch of validation images
  on the worker's device, after warm-up calls (the compiled predict function, as a server would run it);
  a few calls, so it costs milliseconds to a second, not an epoch.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

LATENCY_BATCH = 8  # images per timed call
WARMUP_CALLS = 2  # untimed calls first (tracing, compiling, caches)
TIMED_CALLS = 7  # the median of these


def trainable_params(model) -> int:
    """The model's trainable parameters."""
    return int(sum(int(np.prod(v.shape)) for v in model.trainable_weights))


def inference_ms(model, x) -> float:
    """The median milliseconds per image of ``predict_on_batch`` on the first ``LATENCY_BATCH`` images of ``x``."""
    batch = x[:LATENCY_BATCH]
    for _ in range(WARMUP_CALLS):
        model.predict_on_batch(batch)
    times = []
    for _ in range(TIMED_CALLS):
        started = time.perf_counter()
        model.predict_on_batch(batch)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000.0 / len(batch)


def model_cost(model, x) -> dict:
    """``{"params", "inference_ms"}`` of a trained model (``x``: images it takes, e.g. the validation set)."""
    return {"params": trainable_params(model), "inference_ms": inference_ms(model, x)}
