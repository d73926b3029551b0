"""The embedded server's cost per trial as a study grows: the pool's query shapes, replayed.

Starts the embedded MongoDB-wire server (mongoeco over SQLite) as its own
process, exactly as ``mongotune`` does, and replays one trial's worth of the
pool's traffic per trial, through mongotune's own code wherever it exists:

  queue      coordinator: one suggestion with the calls fmin's loop makes
             (counts, ``new_trial_ids``, refreshes) around hyperopt's
             ``rand.suggest`` (a 10-parameter space with dotted labels, as JSON
             spaces have) and ``insert_trial_docs`` (``TrialStore.stamp``)
  reserve    worker: ``TrialStore.reserve`` under a fresh lease token
  poll       coordinator: ``polls`` (default 2) of fmin's polls (refresh,
             losses, counts), one after the reservation and the rest after
             the curve points, so that worker writes come between them as in
             the pool
  heartbeat  worker: ``heartbeats`` (default 5) ``TrialStore.heartbeat`` with
             a progress dict, and the worker registry's heartbeat
  curve      worker: ``epochs`` (default 10) ``TrialStore.report``, one curve
             point per epoch; with ``--pruner-reads``, each followed by the
             median pruner's read of the study's curves (``_CurveCache``)
  finish     worker: ``TrialStore.finish`` with a result of ~3 KB (history of
             4 metrics x ``epochs``, a 10-class per_class report, ...)
  periodic   every 2 trials launch's progress snapshot (``store.progress``)
             and the queue target's reads; every 20 trials the coordinator's
             and a worker's expired-lease sweeps; every 100 trials a full
             refresh (fmin's 30 s safety net)

The same trials are run in the real pool at ~4 trials/s with these
frequencies (bench_pool.py's 1,000-trial run).  Measured per block of
``--block`` trials: the server process's CPU time (user + system, psutil) per
trial, split by the kinds above, and this process's wall time per trial.

    python bench/bench_server.py                 # 1,000 trials (a few minutes)
    python bench/bench_server.py --quick         # 300 trials
    python bench/bench_server.py --profile       # also sample the server with py-spy
                                                 # in the first and the last block

Writes JSON to bench/results/server.json (server-quick.json with --quick), after
every block too (marked ``"partial": true`` until the run ends).
``--profile`` needs py-spy (``pip install py-spy``) and permission to trace a
child process.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

import machine  # noqa: E402  (bench/machine.py)

KINDS = ("queue", "poll", "reserve", "heartbeat", "curve", "finish", "periodic")

# a keras-like search space: ten parameters, labels with dots as spaces.py makes them
SPACE = {
    "optimizer": {"name": {"hp": "choice", "options": ["adam", "nadam", "sgd"]},
                  "learning_rate": {"hp": "loguniform", "low": 1e-4, "high": 1e-1}},
    "batch_size": {"hp": "choice", "options": [32, 64, 128]},
    "conv": {"blocks": {"hp": "quniform", "low": 1, "high": 4, "q": 1, "int": True},
             "filters": {"hp": "quniform", "low": 16, "high": 128, "q": 16, "int": True},
             "kernel": {"hp": "choice", "options": [3, 5]}},
    "dense": {"units": {"hp": "quniform", "low": 32, "high": 512, "q": 32, "int": True},
              "dropout": {"hp": "uniform", "low": 0.0, "high": 0.6}},
    "l2": {"hp": "loguniform", "low": 1e-6, "high": 1e-2},
    "label_smoothing": {"hp": "uniform", "low": 0.0, "high": 0.2},
}


def result_doc(tid: int, epochs: int, rng) -> dict:
    """A Keras trial's result as training.py reports it (~3 KB with 10 epochs)."""
    history = {k: [round(float(rng.uniform(0, 1)), 6) for _ in range(epochs)]
               for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
    per_class = {str(c): {"precision": round(float(rng.uniform(0.5, 1)), 4),
                          "recall": round(float(rng.uniform(0.5, 1)), 4),
                          "f1": round(float(rng.uniform(0.5, 1)), 4), "support": int(rng.integers(20, 200))}
                 for c in range(10)}
    return {"status": "ok", "loss": -max(history["val_accuracy"]), "val_accuracy": max(history["val_accuracy"]),
            "val_loss": min(history["val_loss"]), "epochs": epochs, "best_epoch": int(rng.integers(1, epochs + 1)),
            "seconds_per_epoch": 1.5, "epoch_seconds": [round(1.5 + float(rng.uniform(0, 0.1)), 4)
                                                        for _ in range(epochs)],
            "train_images": 1437, "train_seconds": 15.2, "params_count": 123456,
            "memory_estimate_bytes": 4_567_890, "per_class": per_class, "history": history,
            "backend": "tensorflow", "mixed_precision": False, "xla": False,
            "artifacts": f"/home/user/.mongotune/artifacts/bench/trial-{tid:05d}"}


class CpuMeter:
    """The server process's CPU seconds, attributed to the kind of work just done."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.last = self.now()
        self.by_kind = collections.Counter()

    def now(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system

    def mark(self, kind: str) -> None:
        now = self.now()
        self.by_kind[kind] += now - self.last
        self.last = now

    def take(self) -> dict:
        out = dict(self.by_kind)
        self.by_kind = collections.Counter()
        return out


# ---------------------------------------------------------------------------------------- profile
IDLE_LEAVES = ("(threading.py:", "(selectors.py:", "(concurrent/futures/thread.py:89)")  # waits, not work


class Sampler:
    """py-spy sampling the server process for one block (raw collapsed stacks)."""

    def __init__(self, pid: int, out: Path, rate: int = 100):
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.out = out
        self.proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate),
                                      "--nonblocking", "--output", str(out)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # let it attach
        if self.proc.poll() is not None:
            raise RuntimeError(f"py-spy failed: {self.proc.stderr.read().decode()[-300:]}")

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        return summarize_profile(self.out)


def summarize_profile(path: Path, top: int = 15) -> dict:
    """Busy samples only (waits in the event loop and idle pool threads dropped): the mongoeco
    functions with the largest inclusive share, and the largest self shares."""
    incl, self_, total = collections.Counter(), collections.Counter(), 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        if any(tag in frames[-1] for tag in IDLE_LEAVES):
            continue
        n = int(n)
        total += n
        for f in set(frames):
            incl[f] += n
        self_[frames[-1]] += n
    def share(counter, keep):
        return [{"function": f, "share": round(c / total, 3)} for f, c in counter.most_common() if keep(f)][:top]
    return {"busy_samples": total,
            "inclusive": share(incl, lambda f: "mongoeco/" in f and "wire/" not in f and "api/" not in f),
            "self": share(self_, lambda f: True)}


# ---------------------------------------------------------------------------------------- the run
def run(args) -> dict:
    import numpy as np
    from hyperopt import base, rand
    from hyperopt.base import JOB_STATE_DONE, JOB_STATE_NEW, JOB_STATE_RUNNING
    from mongotune.pool import coordinator
    from mongotune.pool.worker import _CurveCache
    from mongotune.search import spaces
    from mongotune.store import MongoJobs, embedded
    from mongotune.store.progress import snapshot
    from mongotune.store.studies import Study
    from mongotune.store.trialdoc import new_token

    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-server-"))
    server = embedded.start_server(tmp / "db", port=0)
    samplers = {}
    try:
        url = server.url
        meter = CpuMeter(server.process.pid)
        coord = coordinator.Coordinator(url)  # creates the pool's indexes, as launch does
        pruner = {"kind": "median", "min_epochs": 1} if args.pruner_reads else None
        coord.create(Study(name="bench", max_evals=args.trials, space=SPACE, pruner=pruner,
                           objective={"kind": "synthetic", "training": {"epochs": args.epochs}}))
        study = coord.studies.get("bench")
        space = spaces.build(study.space)
        domain = base.Domain(lambda p: 0.0, space)
        handle = MongoJobs(coord.db, coord.jobs, None, coord.client, None, "spec", retry=coord.retry)
        trials = coordinator._StudyTrials(handle, exp_key=study.exp_key, pickle_domain=False, retry=coord.retry,
                                          space=space, fence=lambda n: None)
        trials.full_refresh_s = float("inf")  # full refreshes come from the schedule below, not the clock
        store, registry = coord.trials, coord.workers  # a worker's are the same classes on its own client
        worker_id = "bench-host:1:abcdef"
        info = {"id": worker_id, "host": "bench-host", "pid": 1, "gpu": None}
        registry.register({"_id": worker_id, **info, "status": "idle", "current": None, "trials_done": 0,
                           "exp_key": None})
        curves = _CurveCache(store, study)
        queue_cache: dict = {}
        doc_bytes = None
        blocks, kinds_tot = [], collections.Counter()
        block_start = time.perf_counter()
        block_cpu = meter.now()
        meter.mark("setup")
        meter.take()
        n_blocks = args.trials // args.block

        def poll(n):
            """fmin's polls; each follows its 0.1 s sleep, so the view is stale."""
            for _ in range(n):
                if hasattr(trials, "_synced_at"):
                    trials._synced_at = 0.0
                trials.refresh()
                trials.losses()
                trials.count_by_state_unsynced([JOB_STATE_NEW, JOB_STATE_RUNNING])
                trials.count_by_state_unsynced(JOB_STATE_DONE)
            meter.mark("poll")

        launched = time.monotonic()  # launch passes its start to the progress snapshot
        for i in range(args.trials):
            block = i // args.block
            if i % args.block == 0 and args.profile and block in (0, n_blocks - 1):
                samplers[block] = Sampler(server.process.pid, tmp / f"profile-{block}.txt")
                block_start, block_cpu = time.perf_counter(), meter.now()
                meter.last = block_cpu
            # coordinator: one suggestion, the calls fmin's loop makes (FMinIter.run)
            trials.count_by_state_unsynced(JOB_STATE_NEW)
            tids = trials.new_trial_ids(1)
            trials.refresh()
            docs = rand.suggest(tids, domain, trials, int(rng.integers(2**31 - 1)))
            trials.insert_trial_docs(docs)
            trials.refresh()
            trials.count_by_state_unsynced(JOB_STATE_NEW)
            meter.mark("queue")
            # a worker: reserve it, heartbeat, report a curve point per epoch, finish
            lease = store.reserve(info, [study.exp_key], new_token())
            assert lease is not None and lease.tid == tids[0], lease
            meter.mark("reserve")
            poll(min(1, args.polls))  # the coordinator polls while the worker trains
            started = time.monotonic()
            points = [(e + 1, round(float(rng.uniform()), 6)) for e in range(args.epochs)]
            current = {"exp_key": lease.exp_key, "study": "bench", "tid": lease.tid}
            for h in range(args.heartbeats):
                progress = {"epoch": h, "epochs": args.epochs, "loss": float(rng.uniform()), "step_s": 1.5}
                assert store.heartbeat(lease, progress)
                registry.beat(worker_id, "running", current, i)
            meter.mark("heartbeat")
            for step, value in points:  # Worker._report_step: record the step, then the pruner's read
                assert store.report(lease, step, value, time.monotonic() - started)
                if args.pruner_reads:
                    curves.read()
            meter.mark("curve")
            poll(args.polls - 1)
            result = result_doc(lease.tid, args.epochs, rng)
            assert store.finish(lease, result, {"duration_s": 15.3, "worker": info, "owner": worker_id})
            meter.mark("finish")
            if i % 2 == 1:  # launch's progress line, and the queue target's reads
                snapshot(store, registry, study, launched, view=trials)
                queue_cache.pop("t", None)
                coord._queue_target(study, queue_cache, trials)
            if i % 20 == 19:  # the coordinator's and a worker's expired-lease sweeps
                store.expire({study.exp_key: (study.lease_s, study.max_attempts)})
                keys = store.running_exp_keys()
                store.expire({k: (study.lease_s, study.max_attempts) for k in keys})
            if i % 100 == 99:
                trials.refresh_tids(None)  # the full refresh
            meter.mark("periodic")
            if doc_bytes is None:
                from bson import BSON
                doc_bytes = len(BSON.encode(coord.jobs.find_one({"tid": lease.tid})))
            if i % args.block == args.block - 1:
                cpu = meter.now() - block_cpu
                wall = time.perf_counter() - block_start
                kinds = meter.take()
                kinds_tot.update(kinds)
                n = args.block
                row = {"trials": f"{i + 2 - n}-{i + 1}", "documents": i + 1,
                       "server_cpu_ms_per_trial": round(cpu / n * 1e3, 2),
                       "wall_ms_per_trial": round(wall / n * 1e3, 2),
                       "server_cpu_ms_by_kind": {k: round(kinds.get(k, 0.0) / n * 1e3, 2) for k in KINDS}}
                if block in samplers:
                    row["profile"] = samplers.pop(block).stop()
                blocks.append(row)
                if args.on_block is not None:
                    args.on_block(blocks)
                print(f"  {row['trials']:>10}  server CPU {row['server_cpu_ms_per_trial']:7.1f} ms/trial  "
                      f"wall {row['wall_ms_per_trial']:7.1f} ms/trial  "
                      + " ".join(f"{k} {v:.1f}" for k, v in row["server_cpu_ms_by_kind"].items()), flush=True)
                block_start, block_cpu = time.perf_counter(), meter.now()
                meter.last = block_cpu
        coord.close()
    finally:
        for s in samplers.values():
            s.proc.kill()
        server.stop()
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    first, last = blocks[0], blocks[-1]
    return {"trials": args.trials, "block": args.block, "polls": args.polls, "heartbeats": args.heartbeats,
            "epochs": args.epochs, "pruner_reads": args.pruner_reads, "trial_document_bytes": doc_bytes,
            "blocks": blocks,
            "ratio_last_to_first": round(last["server_cpu_ms_per_trial"] / first["server_cpu_ms_per_trial"], 2),
            "target_ratio": 2.0}


def host_info() -> dict:
    return machine.host_info(("hyperopt", "pymongo", "mongoeco"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="300 trials")
    ap.add_argument("--trials", type=int, default=None, help="trials (default 1000)")
    ap.add_argument("--block", type=int, default=100, help="trials per reported block (default 100)")
    ap.add_argument("--polls", type=int, default=2, help="coordinator polls per trial (default 2)")
    ap.add_argument("--heartbeats", type=int, default=5, help="lease heartbeats per trial (default 5)")
    ap.add_argument("--epochs", type=int, default=10, help="curve points and history length (default 10)")
    ap.add_argument("--pruner-reads", action="store_true",
                    help="a median pruner's read of the study's curves after every step (Worker._report_step)")
    ap.add_argument("--profile", action="store_true", help="sample the server with py-spy in the first and "
                                                           "the last block")
    ap.add_argument("--out", default=None, help="JSON output (default bench/results/server.json, "
                                                "server-quick.json with --quick)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the server's directory")
    args = ap.parse_args(argv)
    args.trials = args.trials or (300 if args.quick else 1000)
    if args.trials < args.block:
        ap.error("--trials must be at least --block")
    args.trials -= args.trials % args.block
    out = Path(args.out) if args.out else HERE / "results" / ("server-quick.json" if args.quick else "server.json")
    print(f"embedded server, {args.trials} trials, blocks of {args.block} (server CPU per trial, by kind, ms)")
    t0 = time.perf_counter()
    host = host_info()  # the code measured, before anything can change it
    out.parent.mkdir(parents=True, exist_ok=True)

    def on_block(blocks):  # a run stopped early still leaves what it measured
        out.write_text(json.dumps({"host": host, "quick": args.quick, "partial": True, "blocks": blocks},
                                  indent=2) + "\n")

    args.on_block = on_block
    result = run(args)
    result = {"host": host, "quick": args.quick,
              "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "runtime_s": round(time.perf_counter() - t0, 1), **result}
    first, last = result["blocks"][0], result["blocks"][-1]
    print(f"server CPU per trial: {first['server_cpu_ms_per_trial']} ms (trials {first['trials']}) -> "
          f"{last['server_cpu_ms_per_trial']} ms (trials {last['trials']}): x{result['ratio_last_to_first']} "
          f"(target <= x{result['target_ratio']}); trial document {result['trial_document_bytes']} bytes")
    for row in result["blocks"]:
        if "profile" in row:
            print(f"profile, trials {row['trials']} ({row['profile']['busy_samples']} busy samples), "
                  "mongoeco functions by inclusive share:")
            for e in row["profile"]["inclusive"][:12]:
                print(f"  {e['share'] * 100:5.1f}%  {e['function']}")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
