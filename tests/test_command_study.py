"""Command studies on the real pool: `mongotune launch --command ...` with real worker processes."""

from __future__ import annotations

import json
import math
import signal
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_NEW

from helpers import db_of, log_text, mongotune, run_cli, stop, wait_for

pytestmark = pytest.mark.timeout(400)
PY = sys.executable

# prints its metric three times, in the three forms the objective reads; the values follow from the params
SCORE_SCRIPT = """
    import argparse, json, os
    ap = argparse.ArgumentParser()
    ap.add_argument("--lr", type=float); ap.add_argument("--layers", type=int); ap.add_argument("--opt")
    a = ap.parse_args()
    base = a.layers / 10 + (0.05 if a.opt == "adam" else 0.0) - abs(a.lr - 0.01)
    vals = [round(base * f, 6) for f in (0.5, 1.0, 0.75)]
    with open(os.path.join(os.environ["MONGOTUNE_TRIAL_DIR"], "seen.json"), "w") as fh:
        json.dump({"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "tid": os.environ["MONGOTUNE_TRIAL_ID"],
                   "study": os.environ["MONGOTUNE_STUDY"], "params": json.loads(os.environ["MONGOTUNE_PARAMS"]),
                   "argv": [a.lr, a.layers, a.opt]}, fh)
    print(f"epoch 1 score={vals[0]}")
    print(f"10/10 - 0s 2ms/step - loss: 0.3 - score: {vals[1]} - val_loss: 0.2")
    print(json.dumps({"score": vals[2], "step": 3}))
"""


def expected_scores(params: dict) -> list[float]:
    base = params["layers"] / 10 + (0.05 if params["opt"] == "adam" else 0.0) - abs(params["lr"] - 0.01)
    return [round(base * f, 6) for f in (0.5, 1.0, 0.75)]


def write(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def jobs(mongo_url, study):
    return list(db_of(mongo_url).jobs.find({"exp_key": f"mongotune:{study}"}).sort("tid", 1))


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_command_study_runs_to_max_evals_with_the_printed_metric(mongo_url, tmp_path):
    script = write(tmp_path, "train.py", SCORE_SCRIPT)
    logs = [tmp_path / f"w{g}.log" for g in (3, 5)]
    workers = [mongotune("worker", "--mongo", mongo_url, "--gpu", g, "--allow-user-code", log=log)
               for g, log in zip(("3", "5"), logs)]
    try:
        res = run_cli("launch", "--study", "cmd", "--mongo", mongo_url, "--max-evals", 6, "--algo", "rand", "-q",
                      "--pruner", "none",
                      "--command", f"{PY} {script} --lr {{lr}} --layers :layers: --opt {{opt}}",
                      "--param", "lr:1e-3:1e-1:log", "--param", "layers:1:4:int", "--param", "opt:adam,sgd",
                      "--metric", "score", "--goal", "max", "--metric-agg", "max", timeout=300)
    finally:
        codes = [stop(w) for w in workers]
    assert res.returncode == 0, res.stdout + res.stderr
    assert codes == [0, 0], [log_text(p)[-2000:] for p in logs]
    docs = jobs(mongo_url, "cmd")
    assert len(docs) == 6 and all(d["state"] == JOB_STATE_DONE for d in docs)
    for d in docs:
        p, r = d["params"], d["result"]
        assert r["status"] == "ok", r
        want = expected_scores(p)
        assert r["score"] == pytest.approx(max(want)) and r["loss"] == pytest.approx(-max(want))
        assert [(c["step"], c["value"]) for c in d["curve"]] == [(1, want[0]), (2, want[1]), (3, want[2])]
        seen = json.loads((Path(d["artifacts"]["path"]) / "seen.json").read_text())
        assert seen["cuda"] == d["worker"]["gpu"] and seen["cuda"] in ("3", "5")  # the worker's GPU
        assert seen["tid"] == str(d["tid"]) and seen["study"] == "cmd" and seen["params"] == p
        assert seen["argv"] == [p["lr"], p["layers"], p["opt"]]
    assert len({d["worker"]["gpu"] for d in docs}) == 2  # both workers ran trials
    best = max(docs, key=lambda d: d["result"]["score"])
    assert f"score {best['result']['score']:.4g}" in res.stdout


# each run takes the next behaviour in turn (one worker runs them one after another)
TURNS_SCRIPT = """
    import os, sys, time
    turns = os.path.join(os.environ["TURNS_DIR"], "turns")
    os.makedirs(turns, exist_ok=True)
    n = len(os.listdir(turns))
    open(os.path.join(turns, str(n)), "w").close()
    mode = ["exit", "hang", "silent", "ok"][n]
    if mode != "silent":
        print("score=0.5", flush=True)
    if mode == "exit":
        print("Traceback: something broke in the user's script", file=sys.stderr)
        sys.exit(3)
    if mode == "hang":
        print("about to hang", file=sys.stderr, flush=True)
        time.sleep(600)
    if mode == "silent":
        print("no metric from here on")
"""


def test_failures_are_recorded_and_the_worker_goes_on(mongo_url, tmp_path):
    script = write(tmp_path, "turns.py", TURNS_SCRIPT)
    log = tmp_path / "w.log"
    worker = mongotune("worker", "--mongo", mongo_url, "--allow-user-code", log=log,
                       extra_env={"TURNS_DIR": str(tmp_path)})
    try:
        res = run_cli("launch", "--study", "fails", "--mongo", mongo_url, "--max-evals", 4, "--algo", "rand", "-q",
                      "--pruner", "none",
                      "--command", f"{PY} {script} {{x}}", "--param", "x:0:1", "--metric", "score",
                      "--timeout", "3s", timeout=300)
    finally:
        code = stop(worker)
    assert res.returncode == 0, res.stdout + res.stderr
    assert code == 0, log_text(log)[-2000:]
    by_turn = {}
    for d in jobs(mongo_url, "fails"):
        by_turn[d["result"].get("failure", {}).get("kind", "ok")] = d["result"]
    assert set(by_turn) == {"exit", "timeout", "no-metric", "ok"}
    assert "exited with code 3" in by_turn["exit"]["failure"]["reason"]
    assert "something broke in the user's script" in by_turn["exit"]["failure"]["reason"]
    assert "timeout of 3 s" in by_turn["timeout"]["failure"]["reason"]
    assert "about to hang" in by_turn["timeout"]["failure"]["reason"]
    assert "no score reading" in by_turn["no-metric"]["failure"]["reason"]
    assert by_turn["ok"]["score"] == 0.5


FOREVER = """
    import os, subprocess, sys, time
    d = os.environ["MONGOTUNE_TRIAL_DIR"]
    kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.path.join(os.environ["PIDS_DIR"], "pids.tmp"), "w") as fh:
        fh.write(f"{os.getpid()} {kid.pid}")
    os.rename(os.path.join(os.environ["PIDS_DIR"], "pids.tmp"), os.path.join(os.environ["PIDS_DIR"], "pids"))
    step = 0
    while True:
        step += 1
        print(f"score={step}", flush=True)
        time.sleep(0.2)
"""


def test_sigterm_to_the_worker_leaves_no_child_alive_and_hands_the_trial_back(mongo_url, tmp_path):
    script = write(tmp_path, "forever.py", FOREVER)
    log = tmp_path / "w.log"
    worker = mongotune("worker", "--mongo", mongo_url, "--allow-user-code", log=log,
                       extra_env={"PIDS_DIR": str(tmp_path)})
    launch = mongotune("launch", "--study", "term", "--mongo", mongo_url, "--max-evals", 1, "-q", "--command",
                       f"{PY} {script} {{x}}", "--param", "x:0:1", "--metric", "score", log=tmp_path / "launch.log")
    try:
        pids_file = tmp_path / "pids"
        wait_for(pids_file.exists, 120, what="the command to start")
        pids = [int(p) for p in pids_file.read_text().split()]
        assert all(alive(p) for p in pids)
        # status shows the running trial's last output line (it arrives with the next heartbeat)
        def shown():
            running = json.loads(run_cli("status", "term", "--json", "--mongo", mongo_url, timeout=120).stdout)
            return running["running"] and running["running"][0]["progress"].get("last_output", "")
        assert wait_for(shown, 120, 1.0, what="the last output line in status").startswith("score=")
        table = run_cli("status", "term", "--mongo", mongo_url, timeout=120).stdout
        assert "last output:" in table and "score=" in table
        assert stop(worker, signal.SIGTERM) == 0, log_text(log)[-2000:]
        assert not any(alive(p) for p in pids)  # the command and its child are gone
        doc = jobs(mongo_url, "term")[0]
        assert doc["state"] == JOB_STATE_NEW and doc["requeues"][-1]["reason"] == "worker shutdown"
    finally:
        stop(launch)
        stop(worker)


PRUNE_SCRIPT = """
    import os, time
    marker = os.path.join(os.environ["SHARED"], "first")
    first = not os.path.exists(marker)
    open(marker, "a").close()
    open(os.path.join(os.environ["SHARED"], f"pid-{os.environ['MONGOTUNE_TRIAL_ID']}"), "w").write(str(os.getpid()))
    for step in range(1, 6 if first else 10_000):
        print(f"score={(1.0 if first else 0.1) * step}", flush=True)
        time.sleep(0.05 if first else 0.2)
"""


def test_pruning_stops_a_command_mid_run(mongo_url, tmp_path):
    script = write(tmp_path, "prune.py", PRUNE_SCRIPT)
    log = tmp_path / "w.log"
    worker = mongotune("worker", "--mongo", mongo_url, "--allow-user-code", log=log,
                       extra_env={"SHARED": str(tmp_path)})
    try:
        res = run_cli("launch", "--study", "prune", "--mongo", mongo_url, "--max-evals", 3, "--algo", "rand", "-q",
                      "--command", f"{PY} {script} {{x}}", "--param", "x:0:1", "--metric", "score",
                      "--pruner", "median", "--min-trials", 1, "--min-epochs", 2, timeout=300)
    finally:
        code = stop(worker)
    assert res.returncode == 0, res.stdout + res.stderr
    assert code == 0, log_text(log)[-2000:]
    docs = jobs(mongo_url, "prune")
    first, *later = docs
    assert first["result"]["status"] == "ok" and not first["result"].get("pruned")
    assert len(first["curve"]) == 5
    for d in later:  # far worse than the first at the same step: stopped long before its 10 000 steps
        assert d["result"].get("pruned") is True, d["result"]
        assert 2 <= d["result"]["pruned_at"] <= 10 and len(d["curve"]) <= 10
        pid = int((tmp_path / f"pid-{d['tid']}").read_text())
        assert not alive(pid)
        assert math.isfinite(d["result"]["loss"])


def test_bad_command_input_is_one_error_line(mongo_url, tmp_path):
    (tmp_path / "train.py").write_text("")
    cases = [
        (["--command", "python t.py --lr {lrr}", "--param", "lr:0:1"], "placeholder {lrr} has no --param"),
        (["--command", "python t.py --lr {lr}", "--param", "lr:a:1"], "for a categorical param write"),
        (["--command", "python t.py --lr {lr}"], "needs a search space"),
        (["--command", "python t.py --lr :lr:", "--param", "lr:0:1", "--goal", "up"], "goal"),
        (["baseline", "--command", "python t.py", "--param", "lr:0:1"], "not both"),
        (["--param", "lr:0:1"], "give a MODEL"),
        (["--command", "bash -o pipefail -c 'python t.py $(echo {lr})'", "--param", "lr:0:1"],
         "placeholder {lr} is inside $(...) in the script of `bash -c`"),
        (["--command", "env -S 'python t.py {lr}'", "--param", "lr:0:1"], "env -S splits its string"),
    ]
    for args, says in cases:
        res = run_cli("launch", "--study", "bad", "--mongo", mongo_url, "--metric", "score", *args, timeout=120)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), (args, res.stderr)
        assert says in lines[0], (args, lines[0])


# ------------------------------------------------------------- no orphans, bounded output

FAMILY = """
    import os, signal, subprocess, sys, time
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    kids = [subprocess.Popen([sys.executable, "-c", code]),                          # in the child's group
            subprocess.Popen([sys.executable, "-c", code], start_new_session=True)]  # left the group
    pids = os.path.join(os.environ["PIDS_DIR"], f"pids-{os.environ['MONGOTUNE_TRIAL_ID']}")
    with open(pids + ".tmp", "w") as fh:
        fh.write(" ".join(str(p) for p in [os.getpid()] + [k.pid for k in kids]))
    os.rename(pids + ".tmp", pids)
    step = 0
    while True:
        step += 1
        print(f"score={step}", flush=True)
        time.sleep(0.2)
"""


def _family(tmp_path: Path) -> list[int]:
    files = sorted(tmp_path.glob("pids-*[0-9]"))
    return [int(p) for f in files for p in f.read_text().split()]


def _gone(pids: list[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` for ``pids`` to end; return those still alive."""
    try:
        wait_for(lambda: not any(alive(p) for p in pids), timeout, 0.1, what="processes to end")
    except AssertionError:
        pass
    return [p for p in pids if alive(p)]


def test_sigkill_of_the_worker_leaves_no_process_of_its_trial(mongo_url, tmp_path):
    script = write(tmp_path, "family.py", FAMILY)
    log = tmp_path / "w.log"
    worker = mongotune("worker", "--mongo", mongo_url, "--allow-user-code", log=log,
                       extra_env={"PIDS_DIR": str(tmp_path)})
    launch = mongotune("launch", "--study", "orphans", "--mongo", mongo_url, "--max-evals", 1, "-q", "--command",
                       f"{PY} {script} {{x}}", "--param", "x:0:1", "--metric", "score", log=tmp_path / "launch.log")
    try:
        pids = wait_for(lambda: len(_family(tmp_path)) == 3 and _family(tmp_path), 120, what="the command's family")
        assert all(alive(p) for p in pids)
        worker.send_signal(signal.SIGKILL)  # no handler runs: the kernel and the trial's guard must do it
        worker.wait(30)
        left = _gone(pids, 5.0)
        assert left == [], [psutil.Process(p).cmdline() for p in left if alive(p)]
    finally:
        stop(launch)
        stop(worker)
        for p in _family(tmp_path):
            if alive(p):
                psutil.Process(p).kill()


def test_sigkill_of_launch_leaves_no_worker_and_no_trial_process(mongo_url, tmp_path):
    script = write(tmp_path, "family.py", FAMILY)
    launch = mongotune("launch", "--study", "lifeline", "--mongo", mongo_url, "--max-evals", 4, "--workers", 2,
                       "-q", "--pruner", "none", "--command", f"{PY} {script} {{x}}", "--param", "x:0:1", "--metric", "score",
                       log=tmp_path / "launch.log", extra_env={"PIDS_DIR": str(tmp_path)})
    db = db_of(mongo_url)
    try:
        family = wait_for(lambda: len(_family(tmp_path)) == 6 and _family(tmp_path), 180,
                          what="both workers' commands")
        workers = [d["pid"] for d in db.workers.find({"status": {"$ne": "stopped"}})]
        assert len(workers) == 2 and all(alive(p) for p in workers)
        launch.send_signal(signal.SIGKILL)
        launch.wait(30)
        left = _gone(workers + family, 60.0)
        assert left == [], [psutil.Process(p).cmdline() for p in left if alive(p)]
        # they stopped as on SIGTERM: the trials went back to the queue, no attempt counted
        running = [d for d in jobs(mongo_url, "lifeline") if d.get("requeues")]
        assert len(running) == 2 and all(d["state"] == JOB_STATE_NEW and d["attempts"] == 0 for d in running)
        assert {d["requeues"][-1]["reason"] for d in running} == {"worker shutdown"}
    finally:
        if launch.poll() is None:
            launch.kill()
        for p in _family(tmp_path) + [d["pid"] for d in db.workers.find()]:
            if alive(p):
                psutil.Process(p).kill()


CHATTY = """
    import sys
    w = sys.stdout.write
    for i in range(1, 200_001):
        w(f"{i}/200000 - loss: 0.31 - score: {i / 200_000:.6f}\\n")
"""


def test_a_child_printing_200000_metric_lines_is_one_small_ok_trial(mongo_url, tmp_path):
    import bson

    script = write(tmp_path, "chatty.py", CHATTY)
    res = run_cli("launch", "--study", "chatty", "--mongo", mongo_url, "--max-evals", 1, "--workers", 1, "-q",
                  "--pruner", "none",
                  "--command", f"{PY} {script} {{x}}", "--param", "x:0:1", "--metric", "score", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    (doc,) = jobs(mongo_url, "chatty")
    size = len(bson.encode(doc))
    assert doc["state"] == JOB_STATE_DONE and doc["result"]["status"] == "ok", doc["result"]
    assert doc["result"]["readings"] == 200_000 and doc["result"]["score"] == 1.0
    assert size < 1_000_000, size
    curve = [(p["step"], p["value"]) for p in doc["curve"]]
    assert curve[-1] == (200_000, 1.0)  # the last reading is always written
    took = doc["result"]["duration_s"]
    assert len(curve) <= 5 + 4 * took + 2, (len(curve), took)  # a few writes a second
    print(f"200,000 lines: {took:.1f} s, {len(curve)} curve points, document {size} bytes")
