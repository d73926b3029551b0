"""A rough, backend-free estimate of how much memory training a model needs.

Workers use it to refuse trials that cannot fit on their device before
spending minutes finding out.  The figure is deliberately simple:

* weights: every parameter once, plus, for trainable ones, one gradient and
  the optimizer's per-weight slots (Adam keeps two, RMSprop one);
* activations: the output of every layer (sub-models are walked into) times
  the batch size, doubled for what the backward pass keeps around.

Real frameworks add workspace and fragmentation on top, so treat the number
as a lower bound.
"""

from __future__ import annotations

import math

import keras

from mongotune.models._common import optimizer_slots


def _count(weights) -> int:
    return int(sum(math.prod(int(d) for d in w.shape) for w in weights))


def _leaf_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model) and getattr(layer, "layers", None):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _output_elements(layer) -> int:
    """Elements per example of the layer's output(s); 0 if unknown."""
    try:
        outputs = layer.output
    except (AttributeError, ValueError):
        return 0
    total = 0
    for tensor in keras.tree.flatten(outputs):
        shape = getattr(tensor, "shape", None)
        if shape is None or len(shape) == 0:
            continue
        dims = [int(d) for d in shape[1:] if d is not None]
        total += math.prod(dims) if dims else 1
    return total


def estimate_memory(model, batch_size: int, optimizer: str = "adam", dtype_bytes: int = 4) -> dict:
    """``{'params', 'param_bytes', 'activation_bytes', 'total_bytes'}`` for
    training ``model`` with ``optimizer`` on batches of ``batch_size``."""
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    slots = optimizer_slots(optimizer)
    trainable = _count(model.trainable_weights)
    frozen = _count(model.non_trainable_weights)
    params = trainable + frozen
    param_bytes = dtype_bytes * (params + trainable * (1 + slots))
    per_example = sum(_output_elements(layer) for layer in _leaf_layers(model))
    activation_bytes = 2 * dtype_bytes * batch_size * per_example
    return {
        "params": params,
        "param_bytes": int(param_bytes),
        "activation_bytes": int(activation_bytes),
        "total_bytes": int(param_bytes + activation_bytes),
    }
