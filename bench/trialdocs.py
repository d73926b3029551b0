"""Realistic trial documents for the dashboard benchmark and the screenshots.

They have the shape workers write today (hyperopt's fields plus mongotune's:
study, params, worker, attempts, progress, per-epoch history, per-class
report) and the ``curve`` array the pruning work adds.  A Keras-like study:
validation accuracy rises per epoch towards a ceiling that depends on the
parameters; some trials fail (OOM, NaN), some are pruned, a few run.
"""

from __future__ import annotations

import datetime
import math
import random

from bson import ObjectId

SPACE = {
    "learning_rate": {"hp": "loguniform", "low": 1e-4, "high": 1e-1},
    "batch_size": {"hp": "choice", "options": [32, 64, 128]},
    "optimizer": {"hp": "choice", "options": ["adam", "nadam", "sgd"]},
    "dropout_rate": {"hp": "uniform", "low": 0.0, "high": 0.6},
    "conv": {"hp": "choice", "options": [{"blocks": 0},
                                         {"blocks": {"hp": "quniform", "low": 1, "high": 4, "q": 1, "int": True}}]},
    "batch_norm": {"hp": "choice", "options": [True, False]},
}


def study_doc(name: str, max_evals: int, created: datetime.datetime, status: str = "running") -> dict:
    return {"_id": name, "exp_key": f"mongotune:{name}", "name": name, "model": "convstrix",
            "dataset": {"name": "digits"}, "max_evals": max_evals, "algo": "tpe", "space": SPACE,
            "objective": "keras", "training": {"epochs": 15, "patience": 3, "loss": "neg_val_accuracy"},
            "lease_s": 60.0, "max_attempts": 3, "status": status, "created": created, "updated": created,
            "options": {}, "best": None, "final": None}


def _params(rng: random.Random) -> dict:
    blocks = rng.choice([0, 1, 2, 3, 4])
    return {"learning_rate": math.exp(rng.uniform(math.log(1e-4), math.log(1e-1))),
            "batch_size": rng.choice([32, 64, 128]), "optimizer": rng.choice(["adam", "nadam", "sgd"]),
            "dropout_rate": rng.uniform(0.0, 0.6), "conv": {"blocks": blocks}, "batch_norm": rng.random() < 0.5}


def _ceiling(p: dict) -> float:
    lr = math.log10(p["learning_rate"])
    acc = 0.985 - 0.06 * (lr + 2.5) ** 2 - 0.15 * max(0.0, p["dropout_rate"] - 0.4)
    acc += {"adam": 0.0, "nadam": 0.004, "sgd": -0.05}[p["optimizer"]] + 0.006 * p["conv"]["blocks"]
    return max(0.12, min(0.995, acc))


def trial_docs(name: str, n: int, *, start: datetime.datetime, workers: int = 4, seed: int = 0,
               running: int = 2, fail_every: int = 13, prune_every: int = 7, epochs: int = 15,
               queued: int = 0) -> list[dict]:
    """``n`` trials of study ``name`` run by ``workers`` workers from ``start`` (naive UTC)."""
    rng = random.Random(seed)
    free = [start + datetime.timedelta(seconds=rng.uniform(0, 3)) for _ in range(workers)]
    hosts = [(f"gpu-node-{i // 2 + 1}", str(i % 2)) for i in range(workers)]
    docs = []
    for tid in range(n + queued):
        p = _params(rng)
        doc = {"_id": ObjectId(), "tid": tid, "exp_key": f"mongotune:{name}", "study": name, "spec": None,
               "owner": None, "version": 0, "book_time": None, "refresh_time": None, "params": p,
               "misc": {"tid": tid, "cmd": ("domain_attachment", "FMinIter_Domain"), "workdir": None,
                        "idxs": {"learning_rate": [tid]}, "vals": {"learning_rate": [p["learning_rate"]]}},
               "result": {"status": "new"}, "state": 0, "attempts": 0}
        docs.append(doc)
        if tid >= n:
            continue
        w = min(range(workers), key=lambda i: free[i])
        begin = free[w] + datetime.timedelta(seconds=rng.uniform(0.01, 0.5))
        per_epoch = 0.4 + 0.25 * p["conv"]["blocks"] + 12.0 / p["batch_size"] + rng.uniform(0, 0.3)
        ceiling = _ceiling(p)
        is_running = tid >= n - running
        fail = fail_every and tid % fail_every == fail_every - 1
        prune = not fail and prune_every and tid % prune_every == prune_every - 2
        n_ep = rng.randint(1, 3) if fail else (3 if prune else rng.randint(6, epochs))
        if is_running:
            n_ep = rng.randint(1, epochs // 2)
        speed = rng.uniform(0.35, 0.7)
        val_acc = [min(0.999, ceiling - (ceiling - 0.1) * math.exp(-speed * (e + 1)) + rng.gauss(0, 0.004))
                   for e in range(n_ep)]
        if prune:
            val_acc = [v - 0.25 for v in val_acc]
        secs = [per_epoch * rng.uniform(0.9, 1.1) for _ in range(n_ep)]
        t, curve = 0.0, []
        for e, (v, s) in enumerate(zip(val_acc, secs)):
            t += s
            curve.append({"step": e + 1, "value": round(v, 5), "t": round(t, 3)})
        duration = sum(secs) + 1.5
        end = begin + datetime.timedelta(seconds=duration)
        worker = {"id": f"{hosts[w][0]}:{4100 + w}:{w:06x}", "host": hosts[w][0], "pid": 4100 + w, "gpu": hosts[w][1]}
        doc.update(owner=[worker["id"]], book_time=begin, worker=worker, version=2, curve=curve,
                   lease_token=None)
        history = {"loss": [1.2 * (1.05 - a) for a in val_acc], "accuracy": [min(1.0, a + 0.01) for a in val_acc],
                   "val_loss": [1.1 * (1.05 - a) for a in val_acc], "val_accuracy": val_acc}
        if is_running:
            doc.update(state=1, refresh_time=end, lease_token=f"{tid:032x}",
                       progress={"epoch": n_ep, "epochs": epochs, "loss": history["loss"][-1],
                                 "accuracy": history["accuracy"][-1], "val_loss": history["val_loss"][-1],
                                 "val_accuracy": val_acc[-1]})
            free[w] = end + datetime.timedelta(days=1)
            continue
        free[w] = end
        doc.update(state=2, refresh_time=end, finished=end, duration_s=round(duration, 3), version=3)
        if fail:
            kind, reason = rng.choice([("oom", "out of memory while training (batch 128): ResourceExhaustedError"),
                                       ("nan", f"training loss became nan in epoch {n_ep}"),
                                       ("memory-guard", "needs 14.2 GiB for one batch of 128; the device has 11.8 GiB")])
            doc["result"] = {"status": "fail", "failure": {"kind": kind, "reason": reason,
                                                           "traceback": "Traceback (most recent call last): ..."}}
            doc.pop("curve")
            continue
        acc = max(val_acc)
        per_class = {str(c): {"precision": acc, "recall": acc, "f1-score": acc, "support": 36} for c in range(10)}
        doc["result"] = {"status": "ok", "loss": -acc, "val_accuracy": acc, "val_loss": min(history["val_loss"]),
                         "epochs": n_ep, "best_epoch": int(max(range(n_ep), key=lambda e: val_acc[e])) + 1,
                         "seconds_per_epoch": sum(secs) / n_ep, "epoch_seconds": [round(s, 4) for s in secs],
                         "train_images": 1077, "train_seconds": sum(secs), "params_count": 52_000 + 9_000 * p["conv"]["blocks"],
                         "per_class": per_class, "history": history, "backend": "tensorflow",
                         "mixed_precision": True, "xla": True}
        if prune:
            doc["result"].update(pruned=True, pruned_at=n_ep)
    return docs


def worker_docs(docs: list[dict], now: datetime.datetime) -> list[dict]:
    """One heartbeat document per worker seen in ``docs``; those with a running trial are busy."""
    out = {}
    for d in docs:
        w = d.get("worker")
        if not w:
            continue
        cur = {"study": d["study"], "tid": d["tid"]} if d["state"] == 1 else None
        prev = out.get(w["id"])
        done = (prev or {}).get("trials_done", 0) + (1 if d["state"] == 2 else 0)
        out[w["id"]] = {"_id": w["id"], "host": w["host"], "pid": w["pid"], "gpu": w["gpu"], "study": None,
                        "status": "running" if cur else (prev or {}).get("status", "idle"),
                        "current": cur or (prev or {}).get("current"), "trials_done": done,
                        "started": now, "heartbeat": now}
    return list(out.values())
