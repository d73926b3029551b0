"""Paths from the database never reach the file system unchecked: real worker processes, hostile documents.

Whoever can write to the database writes study documents and trial fields as they like (no `launch`, no
validation): a study name that is absolute or climbs out with ``..``, a trial whose recorded artifact
path names someone else's files, a test objective that writes wherever its options say.  The workers
here are real ``mongotune worker`` processes; the documents are written straight into the database.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import db_of, log_text, mongotune, queue_trials, stop, wait_for

pytestmark = pytest.mark.timeout(600)


def _insert_study(db, name: str, objective: dict | None = None) -> None:
    from mongotune.store import encode
    from mongotune.store.studies import Study

    study = Study(name=name, max_evals=5, objective=objective or {"kind": "synthetic"},
                  space={"x": {"hp": "uniform", "low": -1.0, "high": 1.0}}, search={"algo": "rand"})
    db.studies.insert_one(encode(study.to_doc()))  # never validated: a hostile writer skips `launch`


def _tree(top: Path, skip: list[Path]) -> set[str]:
    """Every path under ``top`` (symlinks not followed), except those under ``skip``."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        out.update(str(here / n) for n in dirnames + filenames if here / n not in skip)
    return out


def _run_until_done(url: str, n: int, root: Path, log: Path, **env) -> None:
    """A real worker with ``root`` as its artifact root, until ``n`` trials are finished; it must exit cleanly."""
    db = db_of(url)
    w = mongotune("worker", "--mongo", url, "--artifacts", root, log=log, extra_env=env)
    try:
        wait_for(lambda: db.jobs.count_documents({"state": 2}) >= n, 120, 0.1, what=f"{n} finished trials")
    finally:
        code = stop(w)
        db.client.close()
    assert code == 0, log_text(log)[-3000:]


def test_a_hostile_study_name_makes_a_worker_create_nothing_outside_its_root(mongo_url, tmp_path):
    root = tmp_path / "sandbox" / "a" / "b" / "art"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root.mkdir(parents=True)
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)  # planted in a shared root
    hostile = [str(tmp_path / "abs-target" / "evil"), "../../escape", "ok/../../../up", "..", ".", "sub/dir",
               "~", "-rf", "linked"]
    db = db_of(mongo_url)
    for name in [*hostile, "fine"]:
        _insert_study(db, name)
    for tid, name in enumerate([*hostile, "fine"], 1):
        queue_trials(mongo_url, name, [{"x": 0.1}], first_tid=tid)
    skip = [root, tmp_path / "mongotune-home", tmp_path / "data-cache", tmp_path / "w.log"]
    before = _tree(tmp_path, skip)
    _run_until_done(mongo_url, len(hostile) + 1, root, tmp_path / "w.log")
    docs = {d["exp_key"].split(":", 1)[1]: d for d in db.jobs.find({})}
    for name in hostile:
        failure = docs[name]["result"].get("failure") or {}
        assert docs[name]["result"]["status"] == "fail" and failure.get("kind") == "config", (name, failure)
        why = "resolves outside" if name == "linked" else "bad study name"
        assert why in failure["reason"], (name, failure)
    assert docs["fine"]["result"]["status"] == "ok"
    assert (root / "fine" / f"trial-{len(hostile) + 1:05d}" / "attempt-1" / "result.txt").is_file()
    assert _tree(tmp_path, skip) == before  # nothing new outside the root
    assert not (tmp_path / "abs-target").exists() and list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in root.iterdir()) == ["fine", "linked"]


def _plant(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.keras").write_bytes(b"weights")
    return path / "model.keras"


def test_keep_models_deletes_only_the_studys_own_attempt_directories(mongo_url, tmp_path):
    """``keep_models`` 1: after a trial ends, the worker deletes the models of the other trials of its host,
    but only those in ``ROOT/STUDY/trial-N/attempt-N``, whatever path the database records."""
    root = tmp_path / "art"
    db = db_of(mongo_url)
    _insert_study(db, "kb", {"kind": "synthetic", "training": {"keep_models": 1}})
    # loss (x - 0.3)^2: trial 1 is the best; trials 2..5 rank below it, as does trial 6 (run later)
    queue_trials(mongo_url, "kb", [{"x": 0.3}, {"x": 0.9}, {"x": 0.8}, {"x": 0.85}, {"x": 0.95}])
    _run_until_done(mongo_url, 5, root, tmp_path / "w1.log")
    attempt = {tid: root / "kb" / f"trial-{tid:05d}" / "attempt-1" for tid in range(1, 7)}
    best, mine = _plant(attempt[1]), _plant(attempt[3])
    victim = _plant(tmp_path / "victim")  # someone else's files, which the database now names
    other = _plant(root / "other" / "trial-00001" / "attempt-1")  # another study's directory
    loose = _plant(root / "kb" / "trial-00005")  # not an attempt directory
    paths = {2: str(tmp_path / "victim"), 4: str(attempt[4] / ".." / ".." / ".." / "other" / "trial-00001" /
                                                 "attempt-1"), 5: str(root / "kb" / "trial-00005")}
    for tid, path in paths.items():
        db.jobs.update_one({"tid": tid}, {"$set": {"artifacts.path": path}})
    queue_trials(mongo_url, "kb", [{"x": 0.7}], first_tid=6)
    _run_until_done(mongo_url, 6, root, tmp_path / "w2.log")
    assert not mine.exists(), "the worker deletes a model of its own study that is not among the best"
    assert best.exists() and victim.exists() and other.exists() and loose.exists()
    log = log_text(tmp_path / "w2.log")
    assert log.count("not deleting the model of trial") == 3, log[-3000:]


def test_the_synthetic_objective_runs_only_where_the_tests_switch_it_on(mongo_url, tmp_path):
    """Outside the test suite it is user code (left alone without --allow-user-code) and, taken, refused
    with a clear failure: its record_dir writes wherever the database says."""
    record = tmp_path / "record"
    db = db_of(mongo_url)
    _insert_study(db, "syn", {"kind": "synthetic", "record_dir": str(record)})
    queue_trials(mongo_url, "syn", [{"x": 0.1}])
    off = {"MONGOTUNE_TEST_OBJECTIVES": "0"}
    w = mongotune("worker", "--mongo", mongo_url, "--idle-timeout", "3", log=tmp_path / "plain.log", extra_env=off)
    assert w.wait(60) == 0, log_text(tmp_path / "plain.log")[-3000:]
    assert db.jobs.find_one({"tid": 1})["state"] == 0  # still queued: not taken
    assert "not taking trials of syn: they run user code" in log_text(tmp_path / "plain.log")
    w = mongotune("worker", "--mongo", mongo_url, "--allow-user-code", "--idle-timeout", "3",
                  log=tmp_path / "allowed.log", extra_env=off)
    assert w.wait(60) == 0, log_text(tmp_path / "allowed.log")[-3000:]
    result = db.jobs.find_one({"tid": 1})["result"]
    assert result["status"] == "fail" and result["failure"]["kind"] == "config", result
    assert "mongotune's own tests" in result["failure"]["reason"]
    assert "MONGOTUNE_TEST_OBJECTIVES=1" in result["failure"]["reason"]
    assert not record.exists()
