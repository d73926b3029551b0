"""`mongotune slurm` on a real single-node Slurm (munged + slurmctld + slurmd, CPU only).

The module brings its own private Slurm up (``slurm_cluster.SlurmCluster``)
and tears it down; where Slurm is not installed and cannot be (not root, no
apt-get) the Slurm tests skip with the reason, loudly.  Studies use the
``synthetic`` objective; ``record_dir`` counts how often each trial really ran
to the end, so "nothing lost, nothing twice" is checked, not assumed.
The dry-run and bad-input tests need no Slurm.
"""

from __future__ import annotations

import collections
import os
import re
import stat
import subprocess
import threading
import uuid
import warnings
from pathlib import Path

import pytest
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_NEW, JOB_STATE_RUNNING

from mongotune.pool.coordinator import Coordinator
from mongotune.store.embedded import free_port
from mongotune.store.studies import Study

from authserver import AuthServer
from helpers import db_of, log_text, run_cli, wait_for
from slurm_cluster import SlurmCluster, ensure_installed

pytestmark = pytest.mark.timeout(300)


# ---------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    why = ensure_installed(log=root / "apt.log")
    if why is None and os.geteuid() != 0:
        why = "the test Slurm runs slurmd as root and we are not root"
    if why:
        warnings.warn(f"Slurm tests NOT RUN: {why}")
        pytest.skip(f"Slurm tests NOT RUN: {why}")
    cluster = SlurmCluster(root)
    try:
        cluster.start()
    except RuntimeError as exc:
        cluster.stop()
        pytest.fail(f"Slurm is installed but would not start: {exc}")
    yield cluster
    cluster.stop()


def _study(name, max_evals, **options):
    return Study(name=name, max_evals=max_evals, objective={"kind": "synthetic", **options},
                 search={"algo": "rand"})


def _runs_per_tid(record_dir: Path) -> collections.Counter:
    return collections.Counter(p.name.split("-")[0] for p in record_dir.iterdir()) if record_dir.exists() else {}


def _cli(cluster, *args, **env):
    return run_cli(*args, timeout=120, **cluster.env, **env)


def _submit(cluster, url, *args) -> str:
    r = _cli(cluster, "slurm", "submit", "--gpus-per-worker", 0, "--mongo", url, *args)
    assert r.returncode == 0, r.stdout + r.stderr
    return re.search(r"submitted array job (\d+)", r.stdout).group(1)


def _slurm(cluster, *args) -> subprocess.CompletedProcess:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=60, env={**os.environ, **cluster.env})
    assert r.returncode == 0, f"{args}: {r.stderr}"
    return r


def _tasks(cluster, job) -> dict:
    """``{task id: state}`` of the array's tasks that squeue still knows."""
    r = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%K %T"], capture_output=True, text=True,
                       timeout=60, env={**os.environ, **cluster.env})
    return dict(line.split() for line in r.stdout.splitlines() if line.strip())


def _coordinate(url, name):
    """Run the study's coordinator in a thread; returns (thread, stop event, result holder)."""
    coord = Coordinator(url)
    stop_ev, done = threading.Event(), {}
    t = threading.Thread(target=lambda: done.setdefault("snap", coord.run(name, stop=stop_ev)), daemon=True)
    t.start()
    return t, stop_ev, done


def _worker_of_task(db, job, task, **extra):
    return db.workers.find_one({"slurm.array_job": job, "slurm.array_task": str(task), **extra})


def _log(tmp_home: Path, name: str, job: str, task: int) -> str:
    return log_text(tmp_home / "slurm" / "logs" / f"{name}_{job}_{task}.log")


@pytest.fixture
def home() -> Path:
    return Path(os.environ["MONGOTUNE_HOME"])


# ---------------------------------------------------------------- on Slurm
def test_study_runs_on_an_array_with_its_password_kept_out_of_slurm(slurm, tmp_path, home):
    password = "Pw-" + uuid.uuid4().hex
    server = AuthServer(tmp_path / "authdb", "alice", password)
    try:
        url = server.url("slurm1")
        rec = tmp_path / "runs"
        Coordinator(url).create(_study("s1", 6, sleep_s=0.5, record_dir=str(rec)))
        job = _submit(slurm, url, "--workers", 2, "--study", "s1", "--time", "10")
        t, stop_ev, done = _coordinate(url, "s1")
        t.join(150)
        assert not t.is_alive(), "study did not finish: " + _log(home, "mongotune-s1", job, 0)[-2000:]
        db = db_of(url)
        assert {w["slurm"]["array_task"] for w in db.workers.find({"slurm.array_job": job})} == {"0", "1"}

        status = _cli(slurm, "slurm", "status", "--mongo", url)
        assert status.returncode == 0, status.stderr
        for task in (0, 1):
            worker = _worker_of_task(db, job, task)
            line = next(ln for ln in status.stdout.splitlines() if f"{job}_{task}" in ln)
            assert "RUNNING" in line and worker["_id"] in line, status.stdout

        # the password reached the workers (the server refuses anyone without it) and nothing of Slurm's holds it
        seen = {
            "script": Path(db.slurm_arrays.find_one({"_id": job})["script"]).read_text(),
            "scontrol show job -dd": _slurm(slurm, "scontrol", "show", "job", "-dd", job).stdout,
            "scontrol write batch_script": _slurm(slurm, "scontrol", "write", "batch_script", job, "-").stdout,
            "sacct": subprocess.run(["sacct", "-j", job, "--format=JobID,JobName,State,WorkDir%200"],
                                    capture_output=True, text=True, env={**os.environ, **slurm.env}).stdout,
            "logs": "".join(_log(home, "mongotune-s1", job, i) for i in (0, 1)),
            "status output": status.stdout + status.stderr,
        }
        state_files = [p for p in (slurm.root / "state").rglob("*") if p.is_file()]
        env_files = [p for p in state_files if p.name == "environment"]
        assert env_files and any(b"MONGOTUNE_HOME" in p.read_bytes() for p in env_files)  # the job's stored env
        seen.update({str(p): p.read_bytes().decode(errors="replace") for p in state_files})
        for pid in slurm.job_processes():
            seen[f"/proc/{pid}/cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert "export MONGOTUNE_MONGO=" in seen["script"] and "alice@127.0.0.1" in seen["script"]
        assert seen["scontrol write batch_script"].strip() == seen["script"].strip()
        leaks = [where for where, text in seen.items() if password in text]
        assert not leaks, f"password found in {leaks}"
        pwfile = next((home / "slurm" / "secrets").iterdir())
        assert pwfile.read_text() == password and stat.S_IMODE(pwfile.stat().st_mode) == 0o600

        cancel = _cli(slurm, "slurm", "cancel", "--mongo", url)
        assert cancel.returncode == 0 and job in cancel.stdout, cancel.stdout + cancel.stderr
        wait_for(lambda: not _tasks(slurm, job), 60, 0.5, what="cancelled tasks to end")
        gone = list(db.workers.find({"slurm.array_job": job}))
        assert len(gone) == 2 and all(w["status"] == "stopped" and w["exit"] == "stopped" for w in gone)
        docs = list(db.jobs.find({"exp_key": "mongotune:s1"}))
    finally:
        server.stop()
    assert len(docs) == 6 and all(d["state"] == JOB_STATE_DONE and d["result"]["status"] == "ok" for d in docs)
    runs = _runs_per_tid(rec)
    assert len(runs) == 6 and set(runs.values()) == {1}
    assert done["snap"].counts["ok"] == 6


def test_scancel_and_requeue_of_tasks_mid_trial_lose_nothing(slurm, mongo_url, tmp_path, home):
    rec = tmp_path / "runs"
    Coordinator(mongo_url).create(_study("s2", 6, sleep_s=3.0, record_dir=str(rec)))
    job = _submit(slurm, mongo_url, "--workers", 2, "--study", "s2", "--time", "10")
    t, stop_ev, done = _coordinate(mongo_url, "s2")
    db = db_of(mongo_url)
    try:
        # scancel task 0 while it runs a trial: its worker hands the trial back and leaves
        victim = wait_for(lambda: _worker_of_task(db, job, 0, status="running", current={"$ne": None}), 90, 0.1,
                          what="task 0 running a trial")
        tid0 = victim["current"]["tid"]
        _slurm(slurm, "scancel", f"{job}_0")
        handed = wait_for(lambda: db.jobs.find_one({"exp_key": "mongotune:s2", "tid": tid0, "requeues": {"$exists": True}}),
                          60, 0.1, what="trial of the cancelled task handed back")
        assert handed["requeues"][0]["reason"] == "worker shutdown"
        wait_for(lambda: db.workers.find_one({"_id": victim["_id"], "status": "stopped"}), 30, 0.1,
                 what="cancelled worker gone")
        # requeue task 1 mid-trial (what preemption does): trial back, and the task comes back as a new worker
        second = wait_for(lambda: _worker_of_task(db, job, 1, status="running", current={"$ne": None},
                                                  **{"slurm.restarts": 0}), 60, 0.1, what="task 1 running a trial")
        tid1 = second["current"]["tid"]
        _slurm(slurm, "scontrol", "requeue", f"{job}_1")
        wait_for(lambda: db.jobs.find_one({"exp_key": "mongotune:s2", "tid": tid1, "requeues.reason": "worker shutdown"}),
                 60, 0.1, what="trial of the requeued task handed back")
        rejoined = wait_for(lambda: _worker_of_task(db, job, 1, **{"slurm.restarts": 1}), 120, 0.5,
                            what="requeued task back in the pool")
        t.join(150)
        assert not t.is_alive(), "study did not finish: " + _log(home, "mongotune-s2", job, 1)[-2000:]
    finally:
        stop_ev.set()
        run_cli("slurm", "cancel", job, **slurm.env)
    wait_for(lambda: not _tasks(slurm, job), 60, 0.5, what="tasks to end")
    docs = {d["tid"]: d for d in db.jobs.find({"exp_key": "mongotune:s2"})}
    assert len(docs) == 6 and all(d["state"] == JOB_STATE_DONE and d["result"]["status"] == "ok"
                                  for d in docs.values())
    runs = _runs_per_tid(rec)
    assert len(runs) == 6 and set(runs.values()) == {1}, runs  # nothing lost, nothing run twice
    assert docs[tid0]["worker"]["id"] != victim["_id"] and docs[tid1]["worker"]["id"] != second["_id"]
    assert not docs[tid0].get("attempts") and not docs[tid1].get("attempts")  # handed back, not a lost lease
    assert db.jobs.count_documents({"exp_key": "mongotune:s2", "worker.id": rejoined["_id"]}) >= 1
    log1 = _log(home, "mongotune-s2", job, 1)
    assert "restart 0)" in log1 and "restart 1)" in log1 and "handed back" in log1  # one file across requeue


def test_time_limit_hands_the_trial_back(slurm, mongo_url, tmp_path, home):
    rec = tmp_path / "runs"
    coord = Coordinator(mongo_url)
    coord.create(_study("s3", 1, sleep_s=600.0, record_dir=str(rec)))
    job = _submit(slurm, mongo_url, "--workers", 1, "--study", "s3", "--time", "10", "--signal-before", "90")
    t, stop_ev, done = _coordinate(mongo_url, "s3")
    db = db_of(mongo_url)
    try:
        running = wait_for(lambda: db.jobs.find_one({"exp_key": "mongotune:s3", "state": JOB_STATE_RUNNING}), 90, 0.2,
                           what="a running trial")
        # Slurm counts limits in minutes and checks them every 30 s, so a 1-minute --time could signal a worker
        # still importing. Instead the running task's limit is cut to 60-120 s from now: Slurm's warning signal
        # (90 s before the limit) comes at its next check, and the limit itself at least 30 s after that.
        elapsed = _slurm(slurm, "squeue", "-h", "-j", f"{job}_0", "-o", "%M").stdout.strip()
        secs = sum(int(x) * 60 ** i for i, x in enumerate(reversed(elapsed.replace("-", ":").split(":"))))
        _slurm(slurm, "scontrol", "update", f"JobId={job}_0", f"TimeLimit={secs // 60 + 2}")
        wait_for(lambda: not _tasks(slurm, job), 120, 0.5, what="the task to reach its time limit")
        doc = db.jobs.find_one({"_id": running["_id"]})
        log = _log(home, "mongotune-s3", job, 0)
        assert doc["state"] == JOB_STATE_NEW and doc["requeues"][0]["reason"] == "worker shutdown", log[-2000:]
        assert not doc.get("attempts") and _runs_per_tid(rec) == {}
        assert "handed back" in log and "TIME LIMIT" not in log  # the worker left before Slurm killed it
        assert _worker_of_task(db, job, 0)["exit"] == "stopped"

        # the trial is not lost: with a shorter sleep, a fresh array finishes it, once
        coord.studies.update("s3", objective={"kind": "synthetic", "sleep_s": 0.2, "record_dir": str(rec)})
        job2 = _submit(slurm, mongo_url, "--workers", 1, "--study", "s3", "--time", "5")
        t.join(120)
        assert not t.is_alive(), _log(home, "mongotune-s3", job2, 0)[-2000:]
    finally:
        stop_ev.set()
        run_cli("slurm", "cancel", "--mongo", mongo_url, **slurm.env)
    assert db.jobs.find_one({"_id": running["_id"]})["state"] == JOB_STATE_DONE
    assert _runs_per_tid(rec) == {f"tid{running['tid']}": 1}


# ---------------------------------------------------------------- no Slurm needed
def test_dry_run_prints_the_script_and_writes_nothing(tmp_path, home):
    secret = "Dry-" + uuid.uuid4().hex
    url = f"mongodb://bob:{secret}@db.example.org:27017/pool?authSource=admin"
    r = run_cli("slurm", "submit", "--workers", 3, "--time", "02:00:00", "--partition", "gpu", "--account", "lab",
                "--sbatch-arg=--mem=8G", "--sbatch-arg", "--qos=high", "--study", "s", "--mongo", url, "--dry-run")
    assert r.returncode == 0, r.stderr
    script = r.stdout
    for needle in ("#!/bin/bash", "#SBATCH --array=0-2", "#SBATCH --gres=gpu:1", "#SBATCH --time=02:00:00",
                   "#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --mem=8G", "#SBATCH --qos=high",
                   "#SBATCH --signal=B:TERM@120", "#SBATCH --requeue", "_%A_%a.log", "#SBATCH --open-mode=append",
                   "export MONGOTUNE_MONGO='mongodb://bob@db.example.org:27017/pool?authSource=admin'",
                   "-m mongotune worker --study s", "exec "):
        assert needle in script, needle
    assert "--gpu none" not in script
    assert secret not in r.stdout + r.stderr
    assert "--dry-run did not write" in r.stderr
    assert not (home / "slurm").exists()
    (tmp_path / "job.sh").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sh")]).returncode == 0

    cpu = run_cli("slurm", "submit", "--workers", 1, "--gpus-per-worker", 0, "--mongo", "mongodb://h:1/db",
                  "--dry-run")
    assert cpu.returncode == 0 and "--gpu none" in cpu.stdout and "gres" not in cpu.stdout
    assert "password" not in cpu.stdout.lower().replace("the mongodb password is not in this file", "")


def _one_error_line(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_bad_input_gives_one_error_line(tmp_path, mongo_url):
    _one_error_line(run_cli("slurm", "submit", "--workers", 0, "--mongo", mongo_url), "--workers")
    _one_error_line(run_cli("slurm", "submit", "--workers", 2, "--time", "soon", "--mongo", mongo_url), "--time")
    _one_error_line(run_cli("slurm", "submit", "--workers", 2, "--time", "1", "--mongo", mongo_url), "--signal-before")
    _one_error_line(run_cli("slurm", "submit", "--workers", 2), "MongoDB URL")

    empty = tmp_path / "empty-bin"
    empty.mkdir()
    _one_error_line(run_cli("slurm", "submit", "--workers", 2, "--mongo", mongo_url, PATH=str(empty)),
                    "sbatch not found")

    # an unreachable database is refused before anything is submitted: this sbatch would leave a mark
    bin_dir, mark = tmp_path / "bin", tmp_path / "sbatch-was-called"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ntouch {mark}\necho 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    dead = f"mongodb://127.0.0.1:{free_port()}/nowhere"
    _one_error_line(run_cli("slurm", "submit", "--workers", 2, "--mongo", dead,
                            PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}"), "cannot reach MongoDB")
    open_pw = tmp_path / "mongo.pw"
    open_pw.write_text("secret")
    open_pw.chmod(0o644)
    _one_error_line(run_cli("slurm", "submit", "--workers", 2, "--mongo", "mongodb://bob@127.0.0.1:1/x",
                            "--password-file", open_pw, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}"),
                    "chmod 600")
    assert not mark.exists()
    _one_error_line(run_cli("slurm", "status"), "MongoDB URL")
