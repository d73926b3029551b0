"""Images/s of one mongotune ConvStrix trial vs a bare ``model.fit`` of the same model.

Both train the same ConvStrix configuration on the same memory-mapped uint8
data (a generated ``.npz`` dataset, so no download is needed), with
validation every epoch.  The first epoch (tracing/compilation) is left out
of the rates.  The difference is what mongotune's trial adds: callbacks
(progress, NaN and stop checks, early stopping), the memory guard, the
validation report and artifacts.

    python bench/bench_trial.py [--n 4000] [--epochs 3] [--batch-size 128]
    KERAS_BACKEND=jax python bench/bench_trial.py --n 50000   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PARAMS = {"batch_size": 128, "learning_rate": 1e-3, "num_blocks": 3, "block_size": 2, "fcl_num_layers": 1,
          "fcl_layer_size": 512, "fcl_dropout_rate": 0.2, "activation": "relu", "optimizer": "adam"}


def make_npz(path: Path, n: int, size: int, classes: int = 10, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n + n // 5)
    # class-dependent blobs + noise: learnable, so the numbers are of real training
    base = rng.integers(0, 256, (classes, size, size, 1))
    x = (0.6 * base[y] + 0.4 * rng.integers(0, 256, (len(y), size, size, 1))).astype("uint8")
    np.savez(path, x=x[:n], y=y[:n], x_test=x[n:], y_test=y[n:])


def rate(n_images: int, epoch_seconds: list[float]) -> float:
    steady = epoch_seconds[1:] or epoch_seconds
    return n_images * len(steady) / sum(steady)


def device_name() -> str:
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            return str(jax.devices()[0])
        if backend == "torch":
            import torch

            return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return gpus[0].name if gpus else "cpu"
    except Exception as exc:  # noqa: BLE001
        return f"unknown ({exc})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000, help="training+validation images")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "trial.json"))
    args = ap.parse_args()

    import keras

    from mongotune.data import DataSpec, load
    from mongotune.models import get_model
    from mongotune.objectives import TrialContext
    from mongotune.store.studies import Study, Training
    from mongotune.objectives.keras_trial import compile_model, configure_backend, train_trial

    params = dict(PARAMS, batch_size=args.batch_size)
    tmp = Path(tempfile.mkdtemp(prefix="bench-trial-"))
    os.environ["MONGOTUNE_DATA_DIR"] = str(tmp / "cache")
    make_npz(tmp / "bench.npz", args.n, args.size)
    spec = DataSpec(name="npz", source=str(tmp / "bench.npz"), val_fraction=0.1)
    ds = load(spec)
    env = configure_backend("auto")

    study = Study(name="bench", model="convstrix", dataset=spec.to_dict(), max_evals=1,
                  training=Training(epochs=args.epochs, patience=args.epochs, tensorboard=False, save_model=False))
    t0 = time.perf_counter()
    res = train_trial(study, params, TrialContext(tid=0, attempt=1, artifacts_dir=None))
    trial_wall = time.perf_counter() - t0
    trial_rate = rate(res["train_images"], res["epoch_seconds"])

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.t)

    keras.utils.set_random_seed(0)
    mdef = get_model("convstrix")
    model = mdef.build(params, ds.input_shape, ds.num_classes)
    compile_model(model, mdef, params)
    timer = Timer()
    t0 = time.perf_counter()
    model.fit(ds.x_train, ds.y_train, batch_size=args.batch_size, epochs=args.epochs,
              validation_data=(ds.x_val, ds.y_val), callbacks=[timer], verbose=0)
    bare_wall = time.perf_counter() - t0
    bare_rate = rate(len(ds.x_train), timer.seconds)

    out = {
        "backend": env["backend"], "device": device_name(), "mixed_precision": env["mixed_precision"],
        "host": platform.node(), "cpu_count": os.cpu_count(), "train_images": int(len(ds.x_train)),
        "image_shape": list(ds.input_shape), "epochs": args.epochs, "batch_size": args.batch_size,
        "params_count": res["params_count"],
        "trial": {"images_per_s": round(trial_rate, 1), "epoch_seconds": res["epoch_seconds"],
                  "wall_s": round(trial_wall, 2), "val_accuracy": res["val_accuracy"]},
        "bare_fit": {"images_per_s": round(bare_rate, 1), "epoch_seconds": [round(s, 4) for s in timer.seconds],
                     "wall_s": round(bare_wall, 2)},
        "trial_over_bare": round(trial_rate / bare_rate, 3),
    }
    print(f"backend {out['backend']} on {out['device']} (mixed precision: {out['mixed_precision']}), "
          f"{out['train_images']} images {tuple(ds.input_shape)}, batch {args.batch_size}, {args.epochs} epochs, "
          f"{res['params_count']:,} parameters")
    print(f"{'':24}{'images/s':>12}{'wall s':>10}")
    print(f"{'mongotune trial':24}{trial_rate:12.1f}{trial_wall:10.1f}")
    print(f"{'bare model.fit':24}{bare_rate:12.1f}{bare_wall:10.1f}")
    print(f"trial / bare = {out['trial_over_bare']:.3f} (first epoch excluded from rates)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
