"""A training script that knows nothing about mongotune: tune it with a command study.

It trains a small scikit-learn MLP on the digits dataset (8x8 images, offline)
for a few epochs and prints ``val_accuracy=...`` after each one, which is all a
command study needs.  On one CPU core it finishes in a second or two.

    python examples/train_digits.py --lr 0.01 --layers 2 --units 64 --opt adam

Tune it (from the repository root):

    mongotune launch --study digits-cmd --max-evals 12 --workers 2 --workdir . \\
        --command 'python examples/train_digits.py --lr {lr} --layers {layers} --units {units} --opt {opt}' \\
        --param lr:1e-4:1e-1:log --param layers:1:3:int --param units:16,32,64,128 --param opt:adam,sgd \\
        --metric val_accuracy --goal max --metric-agg max

mongotune sets MONGOTUNE_TRIAL_DIR for each trial; the script leaves its
learning curve there, as an example of writing artifacts.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lr", type=float, default=1e-2, help="initial learning rate")
    ap.add_argument("--layers", type=int, default=1, help="hidden layers")
    ap.add_argument("--units", type=int, default=64, help="units per hidden layer")
    ap.add_argument("--opt", choices=["adam", "sgd"], default="adam", help="optimizer")
    ap.add_argument("--alpha", type=float, default=1e-4, help="L2 penalty")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.25, stratify=y, random_state=args.seed)
    model = MLPClassifier(hidden_layer_sizes=(args.units,) * args.layers, solver=args.opt, alpha=args.alpha,
                          learning_rate_init=args.lr, batch_size=64, random_state=args.seed)
    classes = np.unique(y)
    curve = []
    for epoch in range(1, args.epochs + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.partial_fit(x_train, y_train, classes=classes)  # one pass over the data in mini-batches
        val_accuracy = float(model.score(x_val, y_val))
        curve.append({"epoch": epoch, "val_accuracy": val_accuracy})
        print(f"epoch {epoch}/{args.epochs} loss={model.loss_:.4f} val_accuracy={val_accuracy:.4f}", flush=True)

    trial_dir = os.environ.get("MONGOTUNE_TRIAL_DIR")
    if trial_dir:
        with open(os.path.join(trial_dir, "curve.json"), "w") as fh:
            json.dump(curve, fh)


if __name__ == "__main__":
    main()
