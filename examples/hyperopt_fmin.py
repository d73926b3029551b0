"""Stock hyperopt code on mongotune's pool: ``fmin`` queues, ``mongotune hyperopt-worker`` processes evaluate.

    mongotune server run --port 27200 --dbpath /tmp/hyperopt-demo &   # or any MongoDB
    for i in 1 2; do
      mongotune hyperopt-worker --mongo mongodb://127.0.0.1:27200/demo --exp-key quad --allow-pickle \\
          --max-jobs 10 &
    done
    python examples/hyperopt_fmin.py mongodb://127.0.0.1:27200/demo

Nothing here is mongotune-specific except the ``MongoTrials`` import: the
objective, the space and the call are plain hyperopt.  fmin pickles the
objective into the database (that is how hyperopt ships it to workers), which
is why the workers must be started with ``--allow-pickle``.
"""

from __future__ import annotations

import os
import sys
import time

from hyperopt import STATUS_OK, fmin, hp, tpe

from mongotune.store import MongoTrials


def objective(params):
    time.sleep(0.2)  # stands in for real work
    x, y = params["x"], params["y"]
    return {"status": STATUS_OK, "loss": (x - 1) ** 2 + (y + 2) ** 2, "worker_pid": os.getpid()}


def main(url: str) -> None:
    base, _, query = url.partition("?")  # the jobs collection goes on the path, before any options
    trials = MongoTrials(base.rstrip("/") + "/jobs" + ("?" + query if query else ""), exp_key="quad")
    space = {"x": hp.uniform("x", -5, 5), "y": hp.uniform("y", -5, 5)}
    best = fmin(objective, space, algo=tpe.suggest, max_evals=20, trials=trials, max_queue_len=2,
                show_progressbar=False)
    pids = sorted({t["result"]["worker_pid"] for t in trials.trials if t["result"].get("status") == STATUS_OK})
    print(f"best: x={best['x']:.3f} y={best['y']:.3f} loss={min(trials.losses()):.4f}; "
          f"{len(trials)} trials evaluated by worker processes {pids}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "mongodb://127.0.0.1:27200/demo")
