"""The pool's protocol under load: N simulated workers against one server, through ``TrialStore``.

Each simulated worker is a thread that does what a mongotune worker does, through
the same store code and on the same schedule:

  register        ``WorkerRegistry.register`` once
  reserve         ``TrialStore.reserve`` under a fresh lease token; when nothing is
                  queued it waits as ``Worker`` does (``pool.worker.idle_backoff``)
  heartbeat       every ``--heartbeat-s`` while it holds a trial: ``TrialStore.heartbeat``
                  with a progress dict and ``WorkerRegistry.beat``; every 2 s while idle
                  (``IDLE_BEAT_S``): the registry beat alone
  report          one curve point per epoch (``TrialStore.report``), ``--epochs`` epochs of
                  ``--epoch-s`` seconds
  finish          ``TrialStore.finish`` with a small result

The workers are spread over ``--processes`` processes (each with its own client, as
workers on many hosts have); a feeder in the main process plays the coordinator's
part and keeps ``max(8, N // 4)`` trials queued (insert_many of ready-made
documents: the cost of suggestions is ``bench_search.py``'s business).

Measured per N, over ``--duration`` seconds after a warm-up of one trial length:
trials finished per second (and the demand, N / trial length), heartbeat writes
per second, reservation latency p50/p99 (successful ones), commands per trial by
kind (a pymongo command listener in every process), the server process's CPU per
command and per trial (the embedded server only; psutil), and the protocol's
correctness: after the run the feeder stops, the workers finish what they hold,
and every trial reserved must be done exactly once (``lost`` and ``doubled`` must be
0; a reservation of a tid that another worker holds counts as doubled).

    python bench/bench_scale.py                          # N = 8, 64, 500 on a fresh embedded server each
    python bench/bench_scale.py --workers 500 --duration 120
    python bench/bench_scale.py --mongo mongodb://host/db  # any MongoDB (no server CPU reading)

Writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import multiprocessing as mp
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import machine  # noqa: E402  (bench/machine.py)

IDLE_BEAT_S = 2.0


# ------------------------------------------------------------------------------ one worker process
def _client(url: str, threads: int, listener=None):
    import pymongo

    from mongotune.store import parse_mongo_url

    parsed = parse_mongo_url(url)
    client = pymongo.MongoClient(parsed.client_uri, maxPoolSize=threads + 8,
                                 event_listeners=[listener] if listener else [])
    return client, client[parsed.database]


class _Counter:
    """Commands sent, by name (a pymongo CommandListener; thread-safe enough for counting under the GIL)."""

    def __init__(self):
        self.by_name = collections.Counter()

    def started(self, event):
        self.by_name[event.command_name] += 1

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


def _listener():
    from pymongo import monitoring

    class Listener(_Counter, monitoring.CommandListener):
        pass

    return Listener()


class SimWorker:
    """One simulated worker: the lease loop's store calls on the real worker's schedule."""

    def __init__(self, wid: str, db, exp_key: str, cfg: dict, stop: threading.Event, log: dict):
        from mongotune.store.trialdoc import TrialStore
        from mongotune.store.workers import WorkerRegistry

        self.wid, self.exp_key, self.cfg, self.stop, self.log = wid, exp_key, cfg, stop, log
        self.store, self.registry = TrialStore(db), WorkerRegistry(db)
        self.info = {"id": wid, "host": wid.split(":")[0], "pid": 1, "gpu": None}
        self.done = 0

    def run(self) -> None:
        from mongotune.store.trialdoc import new_token

        try:
            from mongotune.pool.worker import idle_backoff
        except ImportError:  # a checkout from before it (PYTHONPATH=OTHER_CHECKOUT: a before/after)
            def idle_backoff(k):
                return min(0.05 * 1.5 ** min(k, 60), 0.25)

        self.registry.register({"_id": self.wid, **self.info, "exp_key": None})
        empty, next_beat = 0, time.monotonic() + IDLE_BEAT_S * random.random()
        while not self.stop.is_set():
            t0 = time.perf_counter()
            lease = self.store.reserve(self.info, [self.exp_key], new_token())
            if lease is None:
                empty += 1
                if time.monotonic() >= next_beat:
                    self.registry.beat(self.wid, "idle", None, self.done)
                    next_beat = time.monotonic() + IDLE_BEAT_S
                self.stop.wait(idle_backoff(empty))
                continue
            self.log["reserve_s"].append(time.perf_counter() - t0)
            self.log["reserved"].append((lease.tid, lease.token))
            empty = 0
            self._train(lease)

    def _train(self, lease) -> None:
        cfg = self.cfg
        current = {"exp_key": lease.exp_key, "tid": lease.tid}
        next_hb = time.monotonic()
        for step in range(1, cfg["epochs"] + 1):
            end = time.monotonic() + cfg["epoch_s"]
            while (now := time.monotonic()) < end and not self.stop.is_set():
                if now >= next_hb:
                    self.store.heartbeat(lease, {"epoch": step, "epochs": cfg["epochs"]})
                    self.registry.beat(self.wid, "running", current, self.done)
                    self.log["heartbeats"] += 1
                    next_hb = now + cfg["heartbeat_s"]
                time.sleep(min(end, next_hb) - now if min(end, next_hb) > now else 0)
            self.store.report(lease, step, random.random(), float(step))
        ok = self.store.finish(lease, {"status": "ok", "loss": random.random(), "epochs": cfg["epochs"]},
                               {"artifacts": None})
        self.log["finished"].append((lease.tid, lease.token, bool(ok), time.time()))
        self.done += 1


def worker_process(url: str, exp_key: str, ids: list[str], cfg: dict, stop_at, out_q) -> None:
    """Run ``ids`` simulated workers as threads until ``stop_at`` is set; send back what they logged."""
    listener = _listener()
    client, db = _client(url, len(ids), listener)
    stop = threading.Event()
    logs = []
    threads = []
    for wid in ids:
        log = {"reserve_s": [], "reserved": [], "finished": [], "heartbeats": 0}
        logs.append(log)
        t = threading.Thread(target=SimWorker(wid, db, exp_key, cfg, stop, log).run, daemon=True)
        t.start()
        threads.append(t)
    stop_at.wait()
    stop.set()  # each finishes the trial it holds at once (its remaining epochs cut short), then leaves
    for t in threads:
        t.join(120)
    merged = {"reserve_s": [], "reserved": [], "finished": [], "heartbeats": 0,
              "commands": dict(listener.by_name), "stuck": sum(t.is_alive() for t in threads)}
    for log in logs:
        for k in ("reserve_s", "reserved", "finished"):
            merged[k] += log[k]
        merged["heartbeats"] += log["heartbeats"]
    out_q.put(merged)
    client.close()


# ------------------------------------------------------------------------------ the coordinator's part
def trial_doc(tid: int, exp_key: str) -> dict:
    from mongotune.store.trialdoc import QUEUED, TrialStore

    return TrialStore.stamp({"tid": tid, "exp_key": exp_key, "state": QUEUED, "owner": None,
                             "result": {"status": "new"}, "version": 0, "spec": None,
                             "misc": {"tid": tid, "idxs": {"x": [tid]}, "vals": {"x": [0.5]}, "cmd": None},
                             "exp_key_version": 1}, {"x": 0.5, "depth": 3})


class Feeder(threading.Thread):
    """Keeps ``target`` trials queued, as the coordinator's queue top-up does."""

    def __init__(self, db, exp_key: str, target: int):
        super().__init__(daemon=True)
        self.db, self.exp_key, self.target = db, exp_key, target
        self.next_tid, self.stop = 1, threading.Event()
        self.commands = 0

    def run(self) -> None:
        from mongotune.store.trialdoc import QUEUED

        while not self.stop.is_set():
            queued = self.db.jobs.count_documents({"exp_key": self.exp_key, "state": QUEUED})
            short = self.target - queued
            self.commands += 1
            if short > 0:
                self.db.jobs.insert_many([trial_doc(t, self.exp_key)
                                          for t in range(self.next_tid, self.next_tid + short)])
                self.next_tid += short
                self.commands += 1
            self.stop.wait(0.2)


# ------------------------------------------------------------------------------ one N
def run_one(url: str, n: int, args, server_pid: int | None) -> dict:
    from mongotune.store.trialdoc import DONE, RUNNING, QUEUED, TrialStore

    client, db = _client(url, 4)
    store = TrialStore(db)
    store.ensure_indexes()
    exp_key = f"mongotune:scale-{n}-{uuid.uuid4().hex[:6]}"
    cfg = {"epochs": args.epochs, "epoch_s": args.epoch_s, "heartbeat_s": args.heartbeat_s}
    feeder = Feeder(db, exp_key, max(8, n // 4))
    feeder.start()
    ctx = mp.get_context("spawn")
    stop_at, out_q = ctx.Event(), ctx.Queue()
    procs = []
    per = [list(range(i, n, args.processes)) for i in range(min(args.processes, n))]
    for p, ids in enumerate(per):
        names = [f"sim-host-{i % 50}:{i}:{uuid.uuid4().hex[:6]}" for i in ids]
        proc = ctx.Process(target=worker_process, args=(url, exp_key, names, cfg, stop_at, out_q), daemon=True)
        proc.start()
        procs.append(proc)
    meter = _ServerMeter(server_pid)
    trial_s = args.epochs * args.epoch_s
    time.sleep(trial_s + 2)  # warm-up: every worker registered and busy
    done0, cpu0, t0 = _done(db, exp_key), meter.now(), time.monotonic()
    time.sleep(args.duration)
    done1, cpu1, t1 = _done(db, exp_key), meter.now(), time.monotonic()
    feeder.stop.set()
    feeder.join()
    stop_at.set()
    logs = [out_q.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(30)
    docs = list(db.jobs.find({"exp_key": exp_key}, projection=["tid", "state", "finished_lease"]))
    client.close()
    return summarize(n, args, logs, docs, {"done": done1 - done0, "s": t1 - t0,
                                           "cpu_s": None if cpu0 is None else cpu1 - cpu0},
                     feeder, (DONE, RUNNING, QUEUED))


def _done(db, exp_key: str) -> int:
    from mongotune.store.trialdoc import DONE

    return db.jobs.count_documents({"exp_key": exp_key, "state": DONE})


class _ServerMeter:
    def __init__(self, pid: int | None):
        import psutil

        self.proc = psutil.Process(pid) if pid else None

    def now(self) -> float | None:
        if self.proc is None:
            return None
        t = self.proc.cpu_times()
        return t.user + t.system


def _pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def correctness(logs: list[dict], docs: list[dict], states: tuple) -> dict:
    """Lost: reserved, yet not done at the end (nothing expires in the run).  Doubled: a tid reserved twice,
    or finished as ok by two leases."""
    done_state, running, queued = states
    reserved = collections.Counter(tid for log in logs for tid, _ in log["reserved"])
    finished_ok = collections.Counter(tid for log in logs for tid, _, ok, _ in log["finished"] if ok)
    state = {d["tid"]: d["state"] for d in docs}
    return {"reserved": sum(reserved.values()), "finished": sum(finished_ok.values()),
            "doubled": sum(1 for c in reserved.values() if c > 1) + sum(1 for c in finished_ok.values() if c > 1),
            "lost": sum(1 for tid in reserved if state.get(tid) != done_state),
            "left_running": sum(1 for s in state.values() if s == running),
            "left_queued": sum(1 for s in state.values() if s == queued)}


def summarize(n: int, args, logs: list[dict], docs: list[dict], window: dict, feeder, states) -> dict:
    lat = [x for log in logs for x in log["reserve_s"]]
    commands = collections.Counter()
    for log in logs:
        commands.update(log["commands"])
    total_cmds = sum(commands.values()) + feeder.commands
    finished = max(1, sum(len(log["finished"]) for log in logs))
    trial_s = args.epochs * args.epoch_s
    row = {"workers": n, "trial_s": trial_s, "heartbeat_s": args.heartbeat_s,
           "demand_trials_per_s": round(n / trial_s, 2),
           "trials_per_s": round(window["done"] / window["s"], 2),
           "heartbeats_per_s": round(sum(log["heartbeats"] for log in logs) / (window["s"] + trial_s + 2), 1),
           "reserve_ms_p50": round((_pct(lat, 0.5) or 0) * 1e3, 2), "reserve_ms_p99": round((_pct(lat, 0.99) or 0) * 1e3, 2),
           "commands_per_trial": round(total_cmds / finished, 1),
           "commands_per_trial_by_name": {k: round(v / finished, 2) for k, v in commands.most_common()},
           "stuck_threads": sum(log["stuck"] for log in logs), **correctness(logs, docs, states)}
    if window["cpu_s"] is not None:
        per_s_cmds = total_cmds / (window["s"] + trial_s + 2)
        row["server_cpu_share"] = round(window["cpu_s"] / window["s"], 3)
        row["server_cpu_ms_per_trial"] = round(window["cpu_s"] / max(1, window["done"]) * 1e3, 2)
        row["server_cpu_ms_per_command"] = round(window["cpu_s"] / window["s"] / max(per_s_cmds, 1e-9) * 1e3, 3)
    return row


# ------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", default="8,64,500", help="comma-separated N")
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds measured per N (after a warm-up)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--epoch-s", type=float, default=4.0)
    ap.add_argument("--heartbeat-s", type=float, default=5.0, help="the worker's: a quarter of the lease, <= 5 s")
    ap.add_argument("--mongo", default=None, help="a MongoDB URL (default: a fresh embedded server per N)")
    ap.add_argument("--out", default=str(HERE / "results" / "scale.json"))
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.workers.split(",") if x.strip()]
    rows, started = [], time.time()
    for n in sizes:
        rows.append(_measure(n, args))
        r = rows[-1]
        print(f"N={n:4d}: {r['trials_per_s']:6.2f} trials/s (demand {r['demand_trials_per_s']}), "
              f"{r['heartbeats_per_s']} heartbeats/s, reserve p50 {r['reserve_ms_p50']} ms p99 {r['reserve_ms_p99']} ms, "
              f"{r['commands_per_trial']} commands/trial, server CPU {r.get('server_cpu_share')}, "
              f"lost {r['lost']} doubled {r['doubled']}", flush=True)
        _write(args, rows, started)
    return 0 if all(r["lost"] == 0 and r["doubled"] == 0 for r in rows) else 1


def _measure(n: int, args) -> dict:
    if args.mongo:
        return run_one(args.mongo, n, args, None)
    from mongotune.store import embedded

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        server = embedded.start_server(Path(tmp) / "db")
        try:
            return run_one(server.url + "/scale", n, args, server.process.pid)
        finally:
            server.stop()


def _write(args, rows: list[dict], started: float) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "scale", "date": datetime.date.today().isoformat(),
                               "command": "python bench/bench_scale.py " + " ".join(sys.argv[1:]),
                               "server": "embedded" if not args.mongo else "url",
                               **machine.host_info(), "settings": vars(args), "rows": rows,
                               "wall_s": round(time.time() - started, 1)}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
