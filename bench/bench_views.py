"""The views of a large study: status, leaderboard, report and the dashboard's JSON at 1,000 and 10,000 trials.

Realistic trial documents (``trialdocs.py``: Keras-like results with per-epoch
history and curves; some failed, pruned and running) are inserted into a fresh
embedded server under a study written through ``StudyStore`` (synthetic
objective, the study's own space).  Then, as real processes against that server
(``python -m mongotune ... --mongo URL``, median of ``--runs``):

  status        ``mongotune status STUDY``
  leaderboard   ``mongotune leaderboard STUDY`` (its default top rows)
  report        ``mongotune report STUDY --out FILE`` (wall time and the file's size)

and, in this process, the dashboard app (served by uvicorn) over HTTP: the
first read of the study's page payload (cold: every trial read once), a reload
once it is in memory, and the payload's size.  The browser's side (Chromium
drawing the page) is ``bench_dashboard.py``'s.

Targets (issue 23): status and leaderboard under 2 s and the report under 30 s
and 20 MB at 10,000 trials.

    python bench/bench_views.py [--sizes 1000,10000] [--runs 3]

Writes bench/results/views.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

import machine  # noqa: E402
import trialdocs  # noqa: E402

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fill(db, name: str, n: int) -> float:
    """Write study ``name`` and its ``n`` trials; the seconds the inserts took."""
    from mongotune.store import encode
    from mongotune.store.studies import Study, StudyStore
    from mongotune.store.trialdoc import TrialStore

    TrialStore(db).ensure_indexes()
    StudyStore(db).create(Study(name=name, max_evals=n + 50, space=trialdocs.SPACE,
                                objective={"kind": "synthetic", "training": {"epochs": 15}},
                                metric={"name": "val_accuracy", "goal": "max"}))
    start = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(hours=30)
    docs = trialdocs.trial_docs(name, n, start=start, seed=n)
    t0 = time.perf_counter()
    for i in range(0, len(docs), 200):
        db.jobs.insert_many([encode(d) for d in docs[i:i + 200]])
    return time.perf_counter() - t0


def cli(url: str, *argv: str, home: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "MONGOTUNE_HOME": str(home), "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mongotune", *argv, "--mongo", url], capture_output=True,
                       text=True, env=env, timeout=600)
    return time.perf_counter() - t0, r


def timed_cli(url: str, runs: int, home: Path, *argv: str) -> dict:
    times = []
    for _ in range(runs):
        t, r = cli(url, *argv, home=home)
        if r.returncode != 0:
            return {"error": (r.stderr or r.stdout).strip().splitlines()[-1:]}
        times.append(t)
    return {"median_s": round(statistics.median(times), 2), "runs": [round(t, 2) for t in times]}


def dashboard(db, name: str, runs: int) -> dict:
    import uvicorn

    from mongotune.dashboard.app import create_app
    from mongotune.dashboard.net import bind

    sock = bind("127.0.0.1", 0)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    srv = uvicorn.Server(uvicorn.Config(create_app(db, poll_ms=1000, warm=False), log_level="warning",
                                        access_log=False, lifespan="on"))
    th = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    while not srv.started:
        time.sleep(0.05)
    try:
        def get(path):
            t0 = time.perf_counter()
            with _DIRECT.open(base + path, timeout=600) as resp:
                body = resp.read()
            return time.perf_counter() - t0, body

        cold, body = get(f"/api/study/{name}")
        loads = [get(f"/api/study/{name}")[0] for _ in range(runs)]
        return {"cold_first_read_s": round(cold, 2), "load_s": round(statistics.median(loads), 3),
                "payload_bytes": len(body)}
    finally:
        srv.should_exit = True
        th.join(10)


def measure(n: int, runs: int) -> dict:
    from mongotune.store import open_client
    from mongotune.store.embedded import start_server

    with tempfile.TemporaryDirectory(prefix="bench-views-") as tmp:
        server = start_server(Path(tmp) / "db")
        try:
            url = server.url  # its database, trials in the default collection (a path after it names a collection)
            client, db, _ = open_client(url)
            name = f"views-{n}"
            row = {"trials": n, "insert_s": round(fill(db, name, n), 1)}
            home = Path(tmp) / "home"
            _, seen = cli(url, "status", name, "--json", home=home)
            row["status_finished"] = json.loads(seen.stdout)["finished"] if seen.returncode == 0 else None
            if not row["status_finished"]:  # the views must read the trials just written, or nothing is measured
                raise SystemExit(f"status sees no finished trial of {name}: {seen.stderr[-500:]}")
            row["status"] = timed_cli(url, runs, home, "status", name)
            row["leaderboard"] = timed_cli(url, runs, home, "leaderboard", name)
            out = Path(tmp) / "report.html"
            row["report"] = timed_cli(url, 1, home, "report", name, "--out", str(out))
            row["report"]["bytes"] = out.stat().st_size if out.exists() else None
            row["dashboard"] = dashboard(db, name, runs)
            client.close()
            return row
        finally:
            server.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "views.json"))
    args = ap.parse_args(argv)
    rows, started = [], time.time()
    for n in [int(x) for x in args.sizes.split(",")]:
        rows.append(measure(n, args.runs))
        print(json.dumps(rows[-1]), flush=True)
        Path(args.out).write_text(json.dumps({
            "benchmark": "views", "date": datetime.date.today().isoformat(),
            "command": "python bench/bench_views.py " + " ".join(sys.argv[1:]), **machine.host_info(),
            "load_avg": os.getloadavg(), "rows": rows, "wall_s": round(time.time() - started, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
