"""Stock hyperopt.fmin with each algorithm drives mongotune's store unchanged."""

from __future__ import annotations

import math

import pytest
from hyperopt import anneal, hp, rand, tpe

from helpers import fmin_with_thread_worker

pytestmark = pytest.mark.timeout(180)


def objective(x):
    # NaN on part of the space: the loss must survive the embedded server as NaN
    return {"status": "ok", "loss": math.nan if x > 0.8 else (x - 0.25) ** 2}


# hyperopt's anneal.suggest takes one new trial id at a time, so it runs with
# fmin's default queue length of 1 (mongotune's coordinator uses suggest_batch)
@pytest.mark.parametrize("algo,queue", [(tpe.suggest, 2), (rand.suggest, 2), (anneal.suggest, 1)],
                         ids=["tpe", "rand", "anneal"])
def test_fmin_with_each_algorithm(mongo_url, algo, queue, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    best, trials, n_run = fmin_with_thread_worker(mongo_url, tmp_path, objective, hp.uniform("x", -1, 1), algo, 8,
                                                  queue=queue, seed=3, poll_interval=0.2)
    assert n_run == 8
    assert len(trials) == 8 and len({t["tid"] for t in trials.trials}) == 8
    losses = trials.losses()
    finite = [l for l in losses if not math.isnan(l)]
    assert finite and -1 <= best["x"] <= 0.8
    assert min(finite) == pytest.approx((best["x"] - 0.25) ** 2)
    xs = [t["misc"]["vals"]["x"][0] for t in trials.trials]
    assert all(math.isnan(l) for x, l in zip(xs, losses) if x > 0.8)


def test_store_raises_hyperopts_own_exception_classes(mongo_url):
    """Code written for hyperopt.mongoexp catches what mongotune's store raises."""
    import hyperopt.mongoexp as hx

    from mongotune.store import MongoJobs, MongoWorker, ReserveTimeout, Shutdown, WaitQuit

    assert issubclass(ReserveTimeout, hx.ReserveTimeout)
    assert issubclass(Shutdown, hx.Shutdown) and issubclass(WaitQuit, hx.WaitQuit)
    w = MongoWorker(MongoJobs.new_from_connection_str(mongo_url.split("?")[0] + "/jobs"), poll_interval=0.1,
                    exp_key="nothing-queued", logfilename=None)
    with pytest.raises(hx.ReserveTimeout):
        w.run_one(reserve_timeout=0.3)
