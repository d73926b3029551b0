"""Configurations too big for the worker's device fail fast, recorded, and the worker goes on."""

from __future__ import annotations

import pytest
from hyperopt.base import JOB_STATE_DONE

from mongotune.pool.coordinator import Coordinator
from mongotune.devices import parse_bytes
from mongotune.data import DataSpec
from mongotune.objectives.keras_launch import keras_objective
from mongotune.objectives.keras_trial import Training
from mongotune.store.studies import Study

from helpers import db_of, log_text, mongotune, stop

pytestmark = pytest.mark.timeout(300)


def test_parse_bytes():
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("2 GiB") == 2 * 2**30
    assert parse_bytes("1e9") == 10**9
    with pytest.raises(ValueError):
        parse_bytes("lots")


def test_oversized_trials_fail_with_reason_and_worker_continues(mongo_url, tmp_path):
    coord = Coordinator(mongo_url)
    coord.create(Study(name="mg", max_evals=2, search={"algo": "rand"},
                       objective=keras_objective("baseline", DataSpec("digits"), Training(epochs=1))))
    # 1 KiB: smaller than any baseline configuration (even the 650-parameter softmax-only
    # one needs ~10 KiB with its gradients and Adam slots)
    w = mongotune("worker", "--mongo", mongo_url, "--study", "mg", log=tmp_path / "w.log",
                  extra_env={"MONGOTUNE_MEMORY_LIMIT": "1KiB"})
    try:
        snap = coord.run("mg")
        assert w.poll() is None, "the worker must survive failed trials"
    finally:
        assert stop(w) == 0, log_text(tmp_path / "w.log")[-2000:]
    assert snap.counts["failed"] == 2
    for d in db_of(mongo_url).jobs.find({"exp_key": "mongotune:mg"}):
        assert d["state"] == JOB_STATE_DONE
        f = d["result"]["failure"]
        assert f["kind"] == "memory-guard"
        assert "GiB" in f["reason"] and "parameters" in f["reason"] and "0.0 GiB this worker has" in f["reason"]
