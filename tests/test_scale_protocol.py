"""The pool's protocol with 64 workers at once: nothing lost, nothing run twice.

A small version of ``bench/bench_scale.py``'s load (issue 23): 64 simulated
workers in 2 processes, each speaking the real protocol through ``TrialStore``
(register, reserve, heartbeat, a curve point per epoch, finish) against the
test server, with a feeder keeping 16 trials queued.  Short trials (2 epochs of
0.3 s) so the queue's head is contended the whole time.  Speed is the bench's
business; here only correctness is checked: every trial reserved is done
exactly once, none is left running, and no trial was reserved twice.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import db_of

pytestmark = pytest.mark.timeout(300)

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_scale.py"


def test_64_workers_at_once_lose_nothing_and_run_nothing_twice(mongo_url, tmp_path):
    out = tmp_path / "scale.json"
    r = subprocess.run([sys.executable, str(BENCH), "--workers", "64", "--processes", "2", "--duration", "8",
                        "--epochs", "2", "--epoch-s", "0.3", "--heartbeat-s", "0.5", "--mongo", mongo_url,
                        "--out", str(out)], capture_output=True, text=True, timeout=280)
    assert out.exists(), r.stderr[-3000:]
    row = json.loads(out.read_text())["rows"][0]
    assert row["workers"] == 64
    assert row["reserved"] > 0, row  # how many depends on the server's speed; what is checked is that none is lost
    assert row["lost"] == 0 and row["doubled"] == 0, row
    assert row["left_running"] == 0 and row["stuck_threads"] == 0, row
    assert row["finished"] == row["reserved"], row
    assert r.returncode == 0, r.stderr[-3000:]
    # the documents themselves: each finished trial finished by one lease, its curve one point per epoch
    db = db_of(mongo_url)
    try:
        done = list(db.jobs.find({"state": 2}, projection=["tid", "curve", "finished_lease", "result.status"]))
        assert len(done) == row["finished"]
        assert all(d["result"]["status"] == "ok" and d.get("finished_lease") for d in done)
        assert all(sorted(p["step"] for p in d["curve"]) == [1, 2] for d in done), \
            [d["curve"] for d in done if sorted(p["step"] for p in d["curve"]) != [1, 2]][:3]
    finally:
        db.client.close()
