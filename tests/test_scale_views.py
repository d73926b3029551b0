"""The views of a 2,000-trial study give the answers the documents hold.

A small version of ``bench/bench_views.py`` (issue 23): 2,000 realistic trial
documents (``bench/trialdocs.py``: Keras-like results with history and curves;
failed, pruned, queued and running ones; some losses tied, some trials
breaking a constraint) on the test server, then ``status``, ``leaderboard``
(ran and pruned) and ``report`` as real processes.  The store reads the top of
the ranking by a sorted read that stops early and counts by counts; here their
answers are checked against the documents read whole.  Speed is the bench's
business: nothing is timed.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from helpers import db_of

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import trialdocs  # noqa: E402  (bench/trialdocs.py)

from mongotune.store import encode  # noqa: E402
from mongotune.store.best import ranked  # noqa: E402
from mongotune.store.studies import Study, StudyStore  # noqa: E402
from mongotune.store.trialdoc import DONE, TrialStore, _record  # noqa: E402

pytestmark = pytest.mark.timeout(600)
N = 2000
NAME = "big"


def _docs() -> list[dict]:
    start = datetime.datetime(2026, 1, 1)
    docs = trialdocs.trial_docs(NAME, N, start=start, seed=7, running=3, queued=6)
    rng = random.Random(7)
    for d in docs:
        res = d.get("result") or {}
        if d["state"] == DONE and res.get("status") == "ok":
            roll = rng.random()
            if roll < 0.05:
                res["loss"] = -0.99  # ties, broken by tid
            elif roll < 0.08:
                res["loss"] = -1  # an int loss among floats
            elif roll < 0.10:
                res["constraints"] = [0.5]  # infeasible: ranks after every feasible trial
            if rng.random() < 0.1:
                res["pruned"] = True
        if d["tid"] % 211 == 17:
            d["state"] = 3  # hyperopt's error state
    return docs


@pytest.fixture(scope="module")
def big_study(mongo_server, tmp_path_factory):
    """The study on a server of its own (the session's shared one holds hundreds of databases by now, which
    makes 2,000 inserts there several times slower), or on ``MONGOTUNE_TEST_MONGO``'s."""
    own = None
    if os.environ.get("MONGOTUNE_TEST_MONGO"):
        url = f"{mongo_server.base}/scaleviews{getattr(mongo_server, 'query', '')}"
    else:
        from mongotune.store.embedded import start_server

        own = start_server(tmp_path_factory.mktemp("scale-views-db"), port=0)
        url = f"mongodb://{own.host}:{own.port}/scaleviews"
    try:
        yield from _filled(url)
    finally:
        if own is not None:
            own.stop()


def _filled(url: str):
    db = db_of(url)
    db.client.drop_database(db.name)
    TrialStore(db).ensure_indexes()
    StudyStore(db).create(Study(name=NAME, max_evals=N + 50, space=trialdocs.SPACE,
                                objective={"kind": "synthetic", "training": {"epochs": 15}},
                                metric={"name": "val_accuracy", "goal": "max"}))
    docs = _docs()
    for i in range(0, len(docs), 200):
        db.jobs.insert_many([encode(d) for d in docs[i:i + 200]])
    records = [_record(d) for d in db.jobs.find({"exp_key": f"mongotune:{NAME}"})]
    db.client.close()
    yield url, records


def _cli(url: str, *argv: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MONGOTUNE_HOME": str(home), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "mongotune", *argv, "--mongo", url], capture_output=True,
                          text=True, timeout=300, env=env)


def _expected_top(records, include_pruned: bool) -> list[int]:
    ok = [r for r in records if r.state == DONE and (r.result or {}).get("status") == "ok"
          and (include_pruned or not (r.result or {}).get("pruned"))]
    return [r.tid for r in ranked(ok, lambda r: r.rank_facts)]


def test_status_counts_and_best_match_the_documents(big_study, tmp_path):
    url, records = big_study
    r = _cli(url, "status", NAME, "--json", home=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    snap = json.loads(r.stdout)
    assert snap["counts"] == {k: Counter(rec.outcome for rec in records).get(k, 0)
                              for k in ("queued", "running", "ok", "failed", "pruned", "error")}
    assert snap["best"]["tid"] == _expected_top(records, True)[0]
    assert sorted(t["tid"] for t in snap["running"]) == sorted(rec.tid for rec in records if rec.state == 1)


@pytest.mark.parametrize("pruned", [False, True])
def test_leaderboard_top_rows_match_the_documents(big_study, tmp_path, pruned):
    url, records = big_study
    r = _cli(url, "leaderboard", NAME, "--top", "40", "--json", *(["--pruned"] if pruned else []), home=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    rows = out["trials"]
    assert [row["tid"] for row in rows] == _expected_top(records, pruned)[:40]


def test_report_of_the_whole_study(big_study, tmp_path):
    url, records = big_study
    out = tmp_path / "report.html"
    r = _cli(url, "report", NAME, "--out", str(out), home=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    html = out.read_text()
    assert f"#{_expected_top(records, True)[0]}" in html or str(_expected_top(records, True)[0]) in html
    assert out.stat().st_size < 20_000_000
