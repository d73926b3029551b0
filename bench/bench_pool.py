"""The worker pool: idle gap between trials, pool efficiency vs Optuna, coordinator cost per trial.

Three measurements, all with real worker processes (``python -m mongotune
worker``) on the embedded MongoDB-wire server (mongoeco over SQLite), which
runs as its own process:

1. idle gap   -- time from a trial's end (``finished``) to the next trial's
                 start (``book_time``) on the same worker; ``sleep`` objective,
                 2 workers, TPE.  Target: median <= 0.3 s.
2. efficiency -- K = 1, 2, 4, 8 workers on a sleep(1 s) objective, trials/s
                 from the first trial's start to the last trial's end (process
                 start-up excluded; it is reported separately), efficiency =
                 trials/s / K * sleep_s (ideal 1.0); the same objective, K and
                 number of trials through Optuna (TPESampler, SQLite storage,
                 K processes).  Target: mongotune efficiency >= 0.9 at K = 8.
3. coordinator -- a 1000-trial study (``synthetic`` objective, no sleep, 4
                 workers, TPE) with the coordinator in this process (in a
                 thread): wall time and this process's CPU time per trial for
                 each 100-trial window, i.e. how the coordinator's per-trial
                 cost grows with the history TPE has to read.

    python bench/bench_pool.py                 # everything (several minutes)
    python bench/bench_pool.py --quick         # smoke run, < 2 minutes
    python bench/bench_pool.py --only efficiency --ks 1,2,4,8,16
    python bench/bench_pool.py --only coordinator --trials 500

Writes JSON to bench/results/pool.json (pool-quick.json with --quick); a run
with --only updates its own section and keeps the others.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import machine  # noqa: E402  (bench/machine.py)

OPTUNA_WORKER = "_optuna_worker"  # hidden sub-command: one Optuna process of the efficiency comparison


# ====================================================================== small helpers
def pct(values, q):
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def dist(values) -> dict:
    """median / p90 / max / mean / n of a list of seconds."""
    if not values:
        return {"n": 0, "median_s": None, "p90_s": None, "max_s": None, "mean_s": None, "min_s": None}
    return {"n": len(values), "median_s": r4(statistics.median(values)), "p90_s": r4(pct(values, 90)),
            "max_s": r4(max(values)), "min_s": r4(min(values)), "mean_s": r4(statistics.fmean(values))}


def r4(x):
    return None if x is None else round(float(x), 4)


def fmt(x, spec=".3f", none="-"):
    return none if x is None else format(x, spec)


def gaps_by_worker(rows) -> list[float]:
    """``rows``: (worker, start, end) datetimes; the gaps end -> next start on each worker."""
    by = collections.defaultdict(list)
    for w, start, end in rows:
        by[w].append((start, end))
    gaps = []
    for runs in by.values():
        runs.sort()
        gaps += [(b1 - e0).total_seconds() for (_, e0), (b1, _) in zip(runs, runs[1:])]
    return gaps


class Out:
    """Tables with rich when it is installed, plain text otherwise."""

    def __init__(self):
        try:
            from rich.console import Console

            self.console = Console(width=None if sys.stdout.isatty() else 150)
        except ImportError:  # pragma: no cover
            self.console = None

    def line(self, text=""):
        if self.console:
            self.console.print(text, highlight=False)
        else:
            print(text, flush=True)

    def table(self, title, columns, rows, note=None):
        if self.console:
            from rich.table import Table

            t = Table(title=title, title_justify="left", caption=note, caption_justify="left")
            for i, c in enumerate(columns):
                t.add_column(c, justify="left" if i == 0 else "right")
            for r in rows:
                t.add_row(*[str(c) for c in r])
            self.console.print(t)
            return
        widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]
        print(title)
        print("  ".join(str(c).rjust(w) for c, w in zip(columns, widths)))
        for r in rows:
            print("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))
        if note:
            print(note)
        print(flush=True)


# ====================================================================== processes and cleanup
class Resources:
    """Everything this benchmark starts, so that any exit (Ctrl-C included) stops it."""

    def __init__(self, tmp: Path, keep: bool):
        self.tmp = tmp
        self.keep = keep
        self.server = None
        self.pools: list = []
        self.procs: list[subprocess.Popen] = []

    def start_server(self):
        from mongotune.store.embedded import start_server

        self.server = start_server(self.tmp / "db", port=0)
        return self.server

    def pool(self, url: str, k: int, study: str, tag: str):
        from mongotune.pool.local import LocalPool

        pool = LocalPool(url, k, study=study, gpus=[], log_dir=self.tmp / "logs" / tag)
        self.pools.append(pool)
        return pool.start()

    def stop_pool(self, pool):
        pool.stop(timeout=20)
        if pool in self.pools:
            self.pools.remove(pool)

    def popen(self, cmd, log: Path, **kw) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as fh:
            p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def close(self):
        for pool in list(self.pools):
            try:
                pool.stop(timeout=10)
            except Exception:  # noqa: BLE001
                pass
        self.pools.clear()
        for p in self.procs:  # only processes this benchmark started, by their Popen handle
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
        if self.server is not None:
            self.server.stop()
            self.server = None
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _sigterm_to_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def wait_until(pred, timeout, what, interval=0.05, check=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return time.monotonic()
        if check:
            check()
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def log_tail(pool, n=1500) -> str:
    parts = []
    for p in pool.log_paths:
        try:
            parts.append(f"--- {p.name}\n{p.read_text()[-n:]}")
        except OSError:
            pass
    return "\n".join(parts)


def run_coordinator(coord, name: str, pool, timeout: float, before=None) -> tuple[float, float]:
    """Run ``coord.run(name)`` in a thread (Ctrl-C stays with the main thread); (start, end) monotonic."""
    stop = threading.Event()
    box: dict = {}

    def target():
        try:
            if before:
                before()
            box["t0"] = time.monotonic()
            box["snap"] = coord.run(name, stop=stop)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            box["error"] = exc
        finally:
            box["t1"] = time.monotonic()

    t = threading.Thread(target=target, name="coordinator", daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    try:
        while t.is_alive():
            t.join(0.25)
            if pool is not None and pool.alive() == 0:
                raise RuntimeError("every worker process exited:\n" + log_tail(pool))
            if time.monotonic() > deadline:
                raise RuntimeError(f"study {name} did not finish within {timeout:.0f}s")
    except BaseException:
        stop.set()
        t.join(15)
        raise
    if "error" in box:
        raise box["error"]
    return box["t0"], box["t1"]


# ====================================================================== mongotune side
QUEUE_SPARE: int | None = None  # --queue-spare: override the study default


def make_study(name, n, objective, sleep_s, algo="tpe"):
    from mongotune.store.studies import Study

    study = Study(name=name, max_evals=n, objective={"kind": objective, "sleep_s": sleep_s}, search={"algo": algo})
    if QUEUE_SPARE is not None:
        study.queue_spare = QUEUE_SPARE
    return study


def trial_docs(db, name) -> list[dict]:
    docs = list(db.jobs.find({"exp_key": f"mongotune:{name}"},
                             projection=["tid", "book_time", "finished", "worker.id", "state", "result.status",
                                         "duration_s"]))
    return sorted(docs, key=lambda d: d["tid"])


def check_done(docs, n, name):
    bad = [d["tid"] for d in docs if d.get("result", {}).get("status") != "ok"]
    if len(docs) != n or bad:
        raise RuntimeError(f"study {name}: {len(docs)} trials (expected {n}), not ok: {bad[:10]}")


def run_mongotune_study(res: Resources, base_url: str, tag: str, name: str, k: int, n: int, objective: str,
                        sleep_s: float, timeout: float, before=None, algo: str = "tpe"):
    """Start K workers, wait until all have joined, run the study; return timings and the trial docs."""
    import pymongo

    from mongotune.pool.coordinator import Coordinator

    url = f"{base_url}/{tag}"
    coord = Coordinator(url)
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=10000)
    db = client.get_default_database()
    try:
        coord.create(make_study(name, n, objective, sleep_s, algo))
        t_spawn = time.monotonic()
        pool = res.pool(url, k, name, tag)

        def alive_check():
            if pool.alive() < k:
                raise RuntimeError("a worker process exited during start-up:\n" + log_tail(pool))

        t_ready = wait_until(lambda: db.workers.count_documents({"study": name, "status": {"$ne": "stopped"}}) >= k,
                             120, f"{k} workers to join", check=alive_check)
        cpu = CpuMeter(res.server.process.pid, [p.pid for p in pool.procs])
        t0, t1 = run_coordinator(coord, name, pool, timeout, before=before)
        cpu_used = cpu.used(t1 - t0)
        res.stop_pool(pool)
        docs = trial_docs(db, name)
        check_done(docs, n, name)
        return {"spawn": t_spawn, "ready": t_ready, "coord_start": t0, "coord_end": t1, "docs": docs, "cpu": cpu_used}
    finally:
        coord.close()
        client.close()


class CpuMeter:
    """CPU seconds used by the server, the workers and this process (the coordinator) since creation."""

    def __init__(self, server_pid: int, worker_pids: list[int]):
        import psutil

        self.procs = {"server": [psutil.Process(server_pid)], "workers": [psutil.Process(p) for p in worker_pids]}
        self.start = self._read()
        self.own = time.process_time()

    def _read(self) -> dict:
        import psutil

        out = {}
        for role, procs in self.procs.items():
            total = 0.0
            for p in procs:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
            out[role] = total
        return out

    def used(self, wall: float) -> dict:
        now = self._read()
        d = {f"{role}_s": r4(now[role] - self.start[role]) for role in now}
        d["coordinator_s"] = r4(time.process_time() - self.own)
        d["wall_s"] = r4(wall)
        d["cores_busy"] = r4(sum(v for key, v in d.items() if key != "wall_s") / wall) if wall > 0 else None
        return d


def throughput(starts, ends, n, k, sleep_s) -> dict:
    span = (max(ends) - min(starts)).total_seconds()
    tps = n / span
    return {"span_s": r4(span), "trials_per_s": r4(tps), "efficiency": r4(tps * sleep_s / k)}


def skews(docs) -> dict:
    """How far apart the workers' first starts and last ends are (seconds): the pool's ramp-up and ramp-down."""
    by = collections.defaultdict(list)
    for d in docs:
        by[d["worker"]["id"]].append((d["book_time"], d["finished"]))
    firsts = [min(b for b, _ in runs) for runs in by.values()]
    lasts = [max(e for _, e in runs) for runs in by.values()]
    return {"start_skew_s": r4((max(firsts) - min(firsts)).total_seconds()),
            "end_skew_s": r4((max(lasts) - min(lasts)).total_seconds())}


# ====================================================================== 1. idle gap
def bench_idle(res, base_url, out: Out, *, k, n, sleep_s) -> dict:
    out.line(f"\n[bold]1. idle gap[/bold]: {n} trials, sleep objective ({sleep_s} s), {k} workers, TPE")
    r = run_mongotune_study(res, base_url, "bench_idle", "idle", k, n, "sleep", sleep_s, timeout=120 + 4 * n * sleep_s)
    docs = r["docs"]
    gaps = gaps_by_worker([(d["worker"]["id"], d["book_time"], d["finished"]) for d in docs])
    in_trial = [(d["finished"] - d["book_time"]).total_seconds() - sleep_s for d in docs]
    per_worker = collections.Counter(d["worker"]["id"] for d in docs)
    g, o = dist(gaps), dist(in_trial)
    result = {
        "workers": k, "trials": n, "sleep_s": sleep_s, "algo": "tpe",
        "gap": g, "gaps_s": [r4(x) for x in gaps],
        "in_trial_overhead": o,
        "trials_per_worker": sorted(per_worker.values()),
        "target_median_s": 0.3, "meets_target": g["median_s"] is not None and g["median_s"] <= 0.3,
        **throughput([d["book_time"] for d in docs], [d["finished"] for d in docs], n, k, sleep_s),
    }
    out.table(
        "idle gap: a trial's end (finished) -> next trial's start (book_time) on the same worker",
        ["", "n", "median s", "p90 s", "max s", "mean s"],
        [["gap between trials", g["n"], fmt(g["median_s"]), fmt(g["p90_s"]), fmt(g["max_s"]), fmt(g["mean_s"])],
         ["in-trial overhead (end - start - sleep)", o["n"], fmt(o["median_s"]), fmt(o["p90_s"]), fmt(o["max_s"]),
          fmt(o["mean_s"])]],
        note=f"target: median gap <= 0.3 s -> {'met' if result['meets_target'] else 'MISSED'}; "
             f"trials per worker {result['trials_per_worker']}; pool efficiency {result['efficiency']:.3f}",
    )
    return result


# ====================================================================== 2. efficiency
def optuna_worker_main(argv) -> int:
    """One Optuna process: wait for the go file, then optimize n_trials of sleep(s)."""
    ap = argparse.ArgumentParser(prog=OPTUNA_WORKER)
    ap.add_argument("--storage", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--n-trials", type=int, required=True)
    ap.add_argument("--sleep", type=float, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ready", required=True)
    ap.add_argument("--go", required=True)
    ap.add_argument("--record", required=True)
    a = ap.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(a.storage, engine_kwargs={"connect_args": {"timeout": 60}})
    Path(a.ready).write_text(str(os.getpid()))
    while not os.path.exists(a.go):
        time.sleep(0.005)
    numbers = []

    def objective(trial):
        x = trial.suggest_float("x", -1.0, 1.0)
        time.sleep(a.sleep)
        numbers.append(trial.number)
        return (x - 0.3) ** 2

    study = optuna.create_study(study_name=a.study, storage=storage, load_if_exists=True, direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=a.seed))
    study.optimize(objective, n_trials=a.n_trials)
    Path(a.record).write_text(json.dumps({"pid": os.getpid(), "numbers": numbers}))
    return 0


def run_optuna(res: Resources, k: int, n: int, sleep_s: float, timeout: float) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    d = res.tmp / f"optuna-k{k}"
    d.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{d / 'optuna.db'}"
    name = f"eff-k{k}"
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    optuna.create_study(study_name=name, storage=storage, direction="minimize")  # the schema, once
    shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
    go = d / "go"
    t_spawn = time.monotonic()
    procs = []
    for i in range(k):
        cmd = [sys.executable, str(Path(__file__).resolve()), OPTUNA_WORKER, "--storage", url, "--study", name,
               "--n-trials", str(shares[i]), "--sleep", str(sleep_s), "--seed", str(i),
               "--ready", str(d / f"ready-{i}"), "--go", str(go), "--record", str(d / f"record-{i}.json")]
        procs.append(res.popen(cmd, d / f"worker-{i}.log"))

    def alive_check():
        for i, p in enumerate(procs):
            if p.poll() is not None:
                raise RuntimeError(f"optuna worker {i} exited {p.returncode}: "
                                   + (d / f"worker-{i}.log").read_text()[-1500:])

    t_ready = wait_until(lambda: all((d / f"ready-{i}").exists() for i in range(k)), 120,
                         f"{k} optuna processes", check=alive_check)
    go.write_text("go")
    deadline = time.monotonic() + timeout
    for i, p in enumerate(procs):
        left = deadline - time.monotonic()
        try:
            code = p.wait(max(1.0, left))
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"optuna with K={k} did not finish within {timeout:.0f}s") from None
        if code != 0:
            raise RuntimeError(f"optuna worker {i} exited {code}: " + (d / f"worker-{i}.log").read_text()[-1500:])
    t_end = time.monotonic()
    for p in procs:
        res.procs.remove(p)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) != n:
        raise RuntimeError(f"optuna K={k}: {len(complete)} complete trials of {len(trials)} (expected {n})")
    by_number = {t.number: t for t in complete}
    rows = []
    for i in range(k):
        rec = json.loads((d / f"record-{i}.json").read_text())
        rows += [(rec["pid"], by_number[m].datetime_start, by_number[m].datetime_complete) for m in rec["numbers"]]
    gaps = gaps_by_worker(rows)
    return {"k": k, "trials": n, "startup_s": r4(t_ready - t_spawn), "wall_incl_startup_s": r4(t_end - t_spawn),
            **throughput([t.datetime_start for t in complete], [t.datetime_complete for t in complete], n, k, sleep_s),
            "gap": dist(gaps)}


def bench_efficiency(res, base_url, out: Out, *, ks, per_worker, sleep_s, with_optuna) -> dict:
    out.line(f"\n[bold]2. pool efficiency[/bold]: sleep objective ({sleep_s} s), {per_worker} trials per worker, "
             f"K = {', '.join(map(str, ks))}; host has {os.cpu_count()} CPU cores")
    rows = []
    for k in ks:
        n = per_worker * k
        timeout = 180 + 4 * per_worker * sleep_s
        r = run_mongotune_study(res, base_url, f"bench_eff_k{k}", f"eff-k{k}", k, n, "sleep", sleep_s, timeout)
        docs = r["docs"]
        gaps = gaps_by_worker([(d["worker"]["id"], d["book_time"], d["finished"]) for d in docs])
        m = {"k": k, "trials": n, "startup_s": r4(r["ready"] - r["spawn"]),
             "wall_incl_startup_s": r4(r["coord_end"] - r["spawn"]),
             **throughput([d["book_time"] for d in docs], [d["finished"] for d in docs], n, k, sleep_s),
             **skews(docs), "gap": dist(gaps), "cpu": r["cpu"],
             "trials_per_worker": sorted(collections.Counter(d["worker"]["id"] for d in docs).values())}
        o = run_optuna(res, k, n, sleep_s, timeout) if with_optuna else None
        rows.append({"k": k, "mongotune": m, "optuna": o})
        out.line(f"  K={k}: mongotune {m['trials_per_s']:.3f} trials/s (eff {m['efficiency']:.3f})"
                 + (f", optuna {o['trials_per_s']:.3f} trials/s (eff {o['efficiency']:.3f})" if o else ""))
    table = []
    for row in rows:
        for system in ("mongotune", "optuna"):
            v = row[system]
            if v is None:
                continue
            table.append([system, row["k"], v["trials"], fmt(v["trials_per_s"]), fmt(v["efficiency"]),
                          fmt(v["span_s"], ".2f"), fmt(v["startup_s"], ".2f"), fmt(v["wall_incl_startup_s"], ".2f"),
                          fmt(v["gap"]["median_s"]), fmt(v["gap"]["p90_s"]), fmt(v["gap"]["max_s"])])
    k8 = next((r["mongotune"] for r in rows if r["k"] == 8), None)
    meets = None if k8 is None else k8["efficiency"] >= 0.9
    out.table(
        f"pool efficiency, sleep({sleep_s} s) objective ({os.cpu_count()} CPU cores on this host)",
        ["system", "K", "trials", "trials/s", "efficiency", "span s", "start-up s", "wall incl. start-up s",
         "gap median s", "gap p90 s", "gap max s"], table,
        note="span = first trial start -> last trial end; efficiency = trials/s / K x sleep_s (ideal 1.0); "
             "start-up = processes spawned -> all ready (excluded from span)\n"
             + ("target: mongotune efficiency >= 0.9 at K = 8 -> " + ("met" if meets else "MISSED")
                if meets is not None else "(K = 8 not run)"),
    )
    return {"sleep_s": sleep_s, "trials_per_worker": per_worker, "ks": ks, "algo": "tpe",
            "optuna_version": machine.package_version("optuna"), "optuna_storage": "sqlite (RDBStorage, 60 s busy timeout)",
            "rows": rows, "target_efficiency_k8": 0.9, "meets_target": meets}


# ====================================================================== 3. coordinator cost
def bench_coordinator(res, base_url, out: Out, *, n, k, window, algo="tpe") -> dict:
    import psutil

    import mongotune.pool.coordinator as C
    import mongotune.search.algorithms as A

    out.line(f"\n[bold]3. coordinator cost per trial[/bold]: {n} trials, synthetic objective (sleep 0), {k} workers, "
             f"{algo}; coordinator in this process, server and workers in their own")
    events = []  # after each insert: (trials queued, wall, process CPU, coordinator-thread CPU, suggest wall)
    acc = {"queued": 0, "suggest_s": 0.0, "suggest_calls": 0}

    def timed_suggest(new_ids, domain, trials, seed, *a, **kw):
        t = time.perf_counter()
        try:
            return suggest(new_ids, domain, trials, seed, *a, **kw)
        finally:
            acc["suggest_s"] += time.perf_counter() - t
            acc["suggest_calls"] += 1

    orig_insert = C._StudyTrials._insert_trial_docs

    def others_cpu():
        """CPU seconds of the server process and of the worker processes (read from /proc, ~0.1 ms)."""
        server, workers = 0.0, 0.0
        try:
            t = acc["server"].cpu_times()
            server = t.user + t.system
        except (KeyError, psutil.Error):
            pass
        for p in acc.get("workers", []):
            try:
                t = p.cpu_times()
                workers += t.user + t.system
            except psutil.Error:
                pass
        return server, workers

    def timed_insert(self, docs):
        r = orig_insert(self, docs)
        acc["queued"] += len(docs)
        events.append((acc["queued"], time.monotonic(), time.process_time(), time.thread_time(), acc["suggest_s"],
                       *others_cpu()))
        return r

    def mark_start():
        acc["server"] = psutil.Process(res.server.process.pid)
        acc["workers"] = [psutil.Process(p.pid) for pool in res.pools for p in pool.procs]
        events.append((0, time.monotonic(), time.process_time(), time.thread_time(), 0.0, *others_cpu()))

    orig_algo = A.ALGORITHMS[algo]
    suggest = orig_algo[0]
    A.ALGORITHMS[algo] = (timed_suggest, orig_algo[1])
    C._StudyTrials._insert_trial_docs = timed_insert
    try:
        r = run_mongotune_study(res, base_url, "bench_coord", "coord", k, n, "synthetic", 0.0,
                                timeout=4 * 3600, before=mark_start, algo=algo)
    finally:
        A.ALGORITHMS[algo] = orig_algo
        C._StudyTrials._insert_trial_docs = orig_insert
    docs = r["docs"]
    finished = sorted(d["finished"] for d in docs)
    t_first = min(d["book_time"] for d in docs)
    windows = []
    start = events[0]
    for hi in range(window, n + window, window):
        hi = min(hi, n)
        ev = next(e for e in events if e[0] >= hi)
        dq = ev[0] - start[0]
        wall, cpu, thr, sug = ev[1] - start[1], ev[2] - start[2], ev[3] - start[3], ev[4] - start[4]
        srv, wrk = ev[5] - start[5], ev[6] - start[6]
        # the same window measured on the workers' side: the finish times of trials lo..hi
        lo_t = t_first if start[0] == 0 else finished[start[0] - 1]
        fin_wall = (finished[hi - 1] - lo_t).total_seconds()
        windows.append({"trials": f"{start[0] + 1}-{ev[0]}", "queued": dq, "wall_s": r4(wall),
                        "trials_per_s": r4(dq / wall), "cpu_ms_per_trial": r4(1000 * cpu / dq),
                        "thread_cpu_ms_per_trial": r4(1000 * thr / dq), "suggest_ms_per_trial": r4(1000 * sug / dq),
                        "cpu_utilisation": r4(cpu / wall), "server_cpu_ms_per_trial": r4(1000 * srv / dq),
                        "workers_cpu_ms_per_trial": r4(1000 * wrk / dq), "finished_wall_s": r4(fin_wall)})
        start = ev
        if hi >= n:
            break
    total_wall = r["coord_end"] - r["coord_start"]
    total_cpu = events[-1][2] - events[0][2]
    first, last = windows[0], windows[-1]
    result = {
        "trials": n, "workers": k, "objective": "synthetic", "sleep_s": 0.0, "algo": algo, "window": window,
        "coordinator_wall_s": r4(total_wall), "trials_per_s": r4(n / total_wall),
        "startup_s": r4(r["ready"] - r["spawn"]), "suggest_calls": acc["suggest_calls"],
        "mean_batch": r4(n / max(1, acc["suggest_calls"])),
        "cpu_s_total_to_last_insert": r4(total_cpu), "windows": windows,
        "growth_cpu_last_over_first": r4(last["cpu_ms_per_trial"] / first["cpu_ms_per_trial"]),
        "growth_wall_last_over_first": r4(last["wall_s"] / first["wall_s"] * (first["queued"] / last["queued"])),
    }
    out.table(
        f"coordinator cost per {window}-trial window ({n} trials, {k} workers, {os.cpu_count()} CPU cores)",
        ["trials", "wall s", "trials/s", "wall ms/trial", "CPU ms/trial", "coord. thread CPU ms/trial",
         "suggest ms/trial", "coord. CPU util.", "server CPU ms/trial", "workers CPU ms/trial", "workers' wall s"],
        [[w["trials"], fmt(w["wall_s"], ".2f"), fmt(w["trials_per_s"], ".2f"),
          fmt(1000 * w["wall_s"] / w["queued"], ".1f"), fmt(w["cpu_ms_per_trial"], ".1f"),
          fmt(w["thread_cpu_ms_per_trial"], ".1f"), fmt(w["suggest_ms_per_trial"], ".1f"),
          fmt(w["cpu_utilisation"], ".2f"), fmt(w["server_cpu_ms_per_trial"], ".1f"),
          fmt(w["workers_cpu_ms_per_trial"], ".1f"), fmt(w["finished_wall_s"], ".2f")] for w in windows],
        note="windows by trials queued by the coordinator; CPU = this process's time.process_time() "
             "(the coordinator: workers and server are other processes); suggest = wall time in tpe.suggest; "
             "server / workers CPU = those processes' CPU time (psutil) in the same window; "
             "workers' wall = the same window by the trials' finish times\n"
             f"total {total_wall:.1f} s for {n} trials ({n / total_wall:.2f} trials/s), "
             f"{acc['suggest_calls']} suggest calls (mean batch {result['mean_batch']:.2f}); per-trial CPU "
             f"last/first window = {result['growth_cpu_last_over_first']:.2f}x, wall = "
             f"{result['growth_wall_last_over_first']:.2f}x",
    )
    return result


# ====================================================================== main
def host_info() -> dict:
    return machine.host_info(("hyperopt", "pymongo", "mongoeco", "optuna"), server="embedded (mongoeco over SQLite), separate process")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == OPTUNA_WORKER:
        return optuna_worker_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run under 2 minutes")
    ap.add_argument("--only", choices=["idle", "efficiency", "coordinator"], action="append",
                    help="run only this measurement (repeatable)")
    ap.add_argument("--out", default=None, help="JSON output (default bench/results/pool.json, "
                                                 "pool-quick.json with --quick)")
    ap.add_argument("--ks", default=None, help="worker counts for the efficiency run (default 1,2,4,8)")
    ap.add_argument("--per-worker", type=int, default=None, help="efficiency: trials per worker (default 6)")
    ap.add_argument("--sleep", type=float, default=None, help="efficiency: seconds per trial (default 1.0)")
    ap.add_argument("--no-optuna", action="store_true", help="efficiency: skip the Optuna comparison")
    ap.add_argument("--idle-trials", type=int, default=None, help="idle gap: trials (default 30)")
    ap.add_argument("--trials", type=int, default=None, help="coordinator: trials (default 1000)")
    ap.add_argument("--coord-algo", default="tpe", help="coordinator: search algorithm (default tpe, as measured "
                    "before; optuna-tpe is launch's default)")
    ap.add_argument("--coord-workers", type=int, default=4, help="coordinator: worker processes (default 4)")
    ap.add_argument("--queue-spare", type=int, default=None, help="trials queued beyond idle workers "
                                                                     "(default: the study default)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (server db, logs)")
    args = ap.parse_args(argv)

    q = args.quick
    global QUEUE_SPARE
    QUEUE_SPARE = args.queue_spare
    ks = [int(x) for x in args.ks.split(",")] if args.ks else ([1, 2, 4] if q else [1, 2, 4, 8])
    per_worker = args.per_worker or (3 if q else 6)
    sleep_s = args.sleep if args.sleep is not None else (0.5 if q else 1.0)
    idle_trials = args.idle_trials or (10 if q else 30)
    coord_trials = args.trials or (150 if q else 1000)
    window = 50 if coord_trials <= 300 else 100
    only = set(args.only or ["idle", "efficiency", "coordinator"])
    out_path = Path(args.out or HERE / "results" / ("pool-quick.json" if q else "pool.json"))

    signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="bench-pool-"))
    os.environ["MONGOTUNE_HOME"] = str(tmp / "home")  # inherited by every child process
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.pop("MONGOTUNE_MONGO", None)
    os.environ["MONGOTUNE_TEST_OBJECTIVES"] = "1"  # the coordinator part runs the test-only synthetic objective
    res = Resources(tmp, args.keep_tmp)
    out = Out()
    info = host_info()
    out.line(f"mongotune pool benchmark on {info['host']}: {info['cpu_count']} CPU cores, Python {info['python']}, "
             f"hyperopt {info['versions']['hyperopt']}, optuna {info['versions']['optuna']}"
             + (" [quick]" if q else ""))
    results = {}
    t_all = time.monotonic()
    try:
        server = res.start_server()
        base = f"mongodb://{server.host}:{server.port}"
        out.line(f"embedded server pid {server.process.pid} on {base}; temporary directory {tmp}")
        if "idle" in only:
            results["idle"] = bench_idle(res, base, out, k=2, n=idle_trials, sleep_s=0.3 if q else 0.5)
        if "efficiency" in only:
            results["efficiency"] = bench_efficiency(res, base, out, ks=ks, per_worker=per_worker, sleep_s=sleep_s,
                                                     with_optuna=not args.no_optuna)
        if "coordinator" in only:
            results["coordinator"] = bench_coordinator(res, base, out, n=coord_trials, k=args.coord_workers,
                                                       window=window, algo=args.coord_algo)
    except KeyboardInterrupt:
        out.line("\ninterrupted: stopping workers and the server")
        return 130
    finally:
        res.close()
    runtime = time.monotonic() - t_all
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for v in results.values():
        v["measured_at"] = stamp
    doc = {}
    if out_path.exists() and args.only:
        try:
            doc = json.loads(out_path.read_text())
        except ValueError:
            doc = {}
    doc.update({"host": info, "quick": q, "updated": stamp})
    doc.setdefault("runtime_s", {})
    doc["runtime_s"] = doc["runtime_s"] if isinstance(doc["runtime_s"], dict) else {}
    doc["runtime_s"]["+".join(sorted(only))] = round(runtime, 1)
    doc.update(results)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=2, default=str))
    out.line(f"\nran in {runtime:.1f} s; wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
