"""Do the models' spaces learn on small inputs?  Random configurations on digits.

For each model and space variant (``seed``: the seed experiment's space,
``small``: the small-input space), N configurations are drawn at random
(fixed seeds, so every run draws the same ones) and each is trained on
scikit-learn's 8x8 digits by mongotune's own trial code (early stopping on
validation accuracy).  A configuration "learns" when its validation accuracy
reaches 0.5 (chance is 0.1).  Reports, per space: how many learned, the
median and best validation accuracy, the median parameter count and the
median seconds per trial.

    python bench/bench_small_spaces.py [--models baseline,convstrix] [--variants small,seed]
                                       [--n 12] [--epochs 15] [--patience 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LEARNED = 0.5


def trial(study, params: dict, tid: int, artifacts: Path) -> dict:
    from mongotune.errors import TrialFailure
    from mongotune.objectives import TrialContext
    from mongotune.objectives.keras_trial import train_trial

    ctx = TrialContext(tid=tid, attempt=0, artifacts_dir=None)
    t0 = time.perf_counter()
    try:
        res = train_trial(study, params, ctx)
    except TrialFailure as exc:
        return {"params": params, "failed": f"{exc.kind}: {exc.reason}",
                "seconds": time.perf_counter() - t0}
    return {"params": params, "val_accuracy": res["val_accuracy"], "epochs": res["epochs"],
            "params_count": res["params_count"], "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="baseline,convstrix,hyperresnet")
    ap.add_argument("--variants", default="small,seed")
    ap.add_argument("--n", type=int, default=12, help="configurations per space")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "small_spaces.json"))
    args = ap.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("MONGOTUNE_DATA_DIR", tempfile.mkdtemp(prefix="bench-small-"))
    import numpy as np
    from hyperopt.pyll import stochastic

    from mongotune._quiet import import_keras_quietly

    import_keras_quietly()
    from mongotune.data import DataSpec, load
    from mongotune.models import get_model
    from mongotune.store.studies import Study, Training

    spec = DataSpec("digits")
    shape = load(spec).input_shape
    rows, runs = [], {}
    for name in args.models.split(","):
        model_def = get_model(name)
        for variant in args.variants.split(","):
            if variant == "small" and not model_def.has_small_space:
                continue
            space = model_def.space(shape, variant=variant)
            rng = np.random.default_rng(2024)
            study = Study(name=f"bench-{name}-{variant}", model=name, dataset=spec.to_dict(), max_evals=args.n,
                          training=Training(epochs=args.epochs, patience=args.patience, save_model=False,
                                            tensorboard=False))
            results = []
            for i in range(args.n):
                params = stochastic.sample(space, rng=rng)
                results.append(trial(study, params, i, Path(".")))
                r = results[-1]
                print(f"{name:11s} {variant:5s} #{i:02d} "
                      + (f"failed {r['failed'][:60]}" if "failed" in r else
                         f"val {r['val_accuracy']:.3f}  {r['epochs']:2d} ep  {r['params_count']:>10,} params")
                      + f"  {r['seconds']:5.1f}s", flush=True)
            ok = [r for r in results if "val_accuracy" in r]
            accs = [r["val_accuracy"] for r in ok]
            row = {
                "model": name, "variant": variant, "n": args.n,
                "learned": sum(a >= LEARNED for a in accs), "failed": args.n - len(ok),
                "median_val_accuracy": statistics.median(accs) if accs else None,
                "best_val_accuracy": max(accs) if accs else None,
                "median_params": statistics.median(r["params_count"] for r in ok) if ok else None,
                "median_seconds": statistics.median(r["seconds"] for r in results),
            }
            rows.append(row)
            runs[f"{name}/{variant}"] = results

    print()
    print(f"{'model':11s} {'space':6s} {'learned':>8s} {'median acc':>10s} {'best acc':>9s} "
          f"{'median params':>14s} {'median s':>9s}")
    for r in rows:
        print(f"{r['model']:11s} {r['variant']:6s} {r['learned']:>3d}/{r['n']:<4d} "
              f"{(r['median_val_accuracy'] or 0):>10.3f} {(r['best_val_accuracy'] or 0):>9.3f} "
              f"{int(r['median_params'] or 0):>14,} {r['median_seconds']:>9.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.node(), "cpus": os.cpu_count(), "epochs": args.epochs,
                               "patience": args.patience, "learned_at": LEARNED, "rows": rows, "runs": runs},
                              indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
