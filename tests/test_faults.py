"""The faults a cluster has, injected between real workers and a real server by a TCP proxy.

Workers reach the server only through ``FaultProxy``; the coordinator talks
to it directly (as a coordinator on the database's own network would).  Over
one study the proxy adds latency, cuts connections, loses the reply of a
reservation and of a result, and goes dark for longer than the lease and
longer than pymongo's own server-selection timeout.  Exactly ``max_evals``
trials must finish, each evaluated to its end once, and no worker may crash.
"""

from __future__ import annotations

import collections
import threading
import time

import pytest

from faultproxy import FaultProxy, is_finish, is_reservation
from helpers import db_of, log_text, mongotune, stop, wait_for
from mongotune.pool.coordinator import Coordinator
from mongotune.store.studies import Study
from mongotune.store.trialdoc import server_now

pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]


def _done(db, name):
    return db.jobs.count_documents({"exp_key": f"mongotune:{name}", "state": 2})


def test_latency_cuts_lost_replies_and_a_long_blackout(mongo_url, mongo_server, tmp_path):
    if not hasattr(mongo_server, "port"):
        pytest.skip("FAULT TEST NOT RUN: needs the embedded server's host and port (MONGOTUNE_TEST_MONGO is set)")
    rec = tmp_path / "runs"
    max_evals = 12
    coord = Coordinator(mongo_url)
    coord.create(Study(name="faults", max_evals=max_evals, lease_s=3.0, search={"algo": "rand"},
                       objective={"kind": "synthetic", "sleep_s": 4.0, "record_dir": str(rec)}))
    result: dict = {}
    runner = threading.Thread(target=lambda: result.setdefault("snap", coord.run("faults")), daemon=True)
    runner.start()
    proxy = FaultProxy(mongo_server.host, mongo_server.port)
    db_name = mongo_url.rsplit("/", 1)[1].split("?")[0]
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    workers = [mongotune("worker", "--mongo", proxy.url(db_name), "--study", "faults", log=logs[i]) for i in range(2)]
    db = db_of(mongo_url)
    try:
        proxy.latency_s = 0.05
        wait_for(lambda: _done(db, "faults") >= 1, 120, 0.2, what="a first trial through the slow proxy")

        proxy.lose_reply_of(is_reservation)  # the server takes the reservation; the worker never hears of it
        wait_for(lambda: proxy.lost_replies, 60, 0.1, what="a lost reservation reply")

        proxy.drop_connections()
        time.sleep(1.0)
        proxy.drop_connections()

        proxy.lose_reply_of(is_finish)  # a result reaches the database, its acknowledgement does not
        wait_for(lambda: len(proxy.lost_replies) >= 2, 60, 0.1, what="a lost result reply")

        # dark for longer than the 3 s lease, pymongo's 5 s server selection and the 5 s step-report retry
        # a trial booked under a second ago: it has about 3 s of its 4 s still to run when the lights go
        # out, so its lease must expire (a trial seen running may otherwise finish just before the cut)
        def fresh_running():
            now = server_now(db)
            return any(d.get("book_time") and (now - d["book_time"]).total_seconds() < 1.0
                       for d in db.jobs.find({"exp_key": "mongotune:faults", "state": 1}, projection=["book_time"]))
        wait_for(fresh_running, 90, 0.05, what="a trial reserved just before the blackout")
        proxy.blackout()
        time.sleep(12.0)
        assert all(w.poll() is None for w in workers), "a worker died during the blackout"
        proxy.restore()

        runner.join(240)
        assert not runner.is_alive(), "the coordinator did not finish"
    finally:
        codes = [stop(w) for w in workers]
        proxy.close()
    text = "".join(log_text(p) for p in logs)
    assert codes == [0, 0], text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert "unreachable" in text  # the workers said they were waiting
    snap = result["snap"]
    assert snap.counts["ok"] == max_evals and snap.finished == max_evals
    docs = list(db.jobs.find({"exp_key": "mongotune:faults"}))
    assert len(docs) == max_evals and len({d["tid"] for d in docs}) == max_evals
    assert all(d["state"] == 2 and d["result"]["status"] == "ok" for d in docs)
    runs = collections.Counter(p.name.split("-")[0] for p in rec.iterdir())
    assert len(runs) == max_evals and set(runs.values()) == {1}, runs  # none evaluated to its end twice
    # the lost reservation was found again by its token, not left to expire
    taken = proxy.lost_replies[0]["query"]  # the take names the trial by _id (or, before, by tid)
    lost = next(d for d in docs if d["_id"] == taken.get("_id", object()) or d["tid"] == taken.get("tid"))
    assert "found the reservation whose reply was lost" in text or lost.get("lease_expiries"), lost
    assert any(d.get("lease_expiries") for d in docs)  # the blackout outlasted the lease
