"""A table of the Keras ``baseline`` (the MLP) on digits: every configuration of a discrete grid over its
small-input space trained once, with its validation accuracy and its trainable parameters, so that
``bench_multiobjective.py`` can search it as it searches the offline tables (``--tables keras-digits``).

The grid: learning rate {5e-4, 3e-3, 2e-2} x activation {relu, selu, tanh} x layers {1, 2, 3} x layer
size {64, 128, 256} x optimizer {adam, rmsprop} (162 configurations); batch 32, dropout
0.1, 10 epochs, the validation accuracy of the last epoch; the split is mongotune's (20 % of digits'
training images, split seed 0); training seed 0 for every configuration.

    python bench/keras_digits_table.py            # writes bench/results/keras-digits-table.json
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

GRID = {"learning_rate": [5e-4, 3e-3, 2e-2], "activation": ["relu", "selu", "tanh"],
        "num_layers": [1, 2, 3], "layer_size": [64, 128, 256], "optimizer": ["adam", "rmsprop"]}
FIXED = {"batch_size": 32, "dropout_rate": 0.1}
EPOCHS = 10
OUT = HERE / "results" / "keras-digits-table.json"


def main() -> int:
    from mongotune._quiet import import_keras_quietly

    keras = import_keras_quietly()
    from mongotune.data import DataSpec, load
    from mongotune.models import get_model
    from mongotune.objectives.keras_cost import trainable_params
    from mongotune.objectives.keras_trial import compile_model

    ds = load(DataSpec.from_dict({"name": "digits", "val_fraction": 0.2, "seed": 0}))
    model_def = get_model("baseline")
    rows, t0 = [], time.monotonic()
    for values in itertools.product(*GRID.values()):
        params = {**FIXED, **dict(zip(GRID, values))}
        keras.utils.set_random_seed(0)
        model = model_def.build(params, tuple(ds.x_train.shape[1:]), 10)
        compile_model(model, model_def, params)
        hist = model.fit(ds.x_train, ds.y_train, batch_size=FIXED["batch_size"], epochs=EPOCHS, verbose=0,
                         validation_data=(ds.x_val, ds.y_val))
        rows.append({"params": params, "val_accuracy": float(hist.history["val_accuracy"][-1]),
                     "params_count": trainable_params(model)})
        keras.backend.clear_session()
        print(f"{len(rows)} {rows[-1]['val_accuracy']:.4f} {rows[-1]['params_count']}", flush=True)
    OUT.write_text(json.dumps({"grid": GRID, "fixed": FIXED, "epochs": EPOCHS, "rows": rows,
                               "wall_s": time.monotonic() - t0}, indent=0) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
