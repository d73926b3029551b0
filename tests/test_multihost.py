"""Hosts that share nothing but the database: each worker's files land under its own roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import db_of, log_text, mongotune, stop

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def test_coordinator_and_workers_with_their_own_homes_roots_and_caches(mongo_url, tmp_path):
    hosts = {name: tmp_path / name for name in ("launcher", "gpu-box-1", "gpu-box-2")}
    def host_env(root: Path, artifacts: bool = True) -> dict:
        e = {"MONGOTUNE_HOME": root / "home", "MONGOTUNE_DATA_DIR": root / "data-cache"}
        if artifacts:
            e["MONGOTUNE_ARTIFACTS"] = root / "artifacts"
        return e

    shared = tmp_path / "not-mounted-on-the-workers"  # a shared root the workers were not told to trust
    workers = [mongotune("worker", "--mongo", mongo_url, "--study", "mh", "--gpu", "none",
                         log=tmp_path / f"{name}.log", extra_env=host_env(hosts[name]))
               for name in ("gpu-box-1", "gpu-box-2")]
    launcher = hosts["launcher"]
    launch = mongotune("launch", "baseline", "--study", "mh", "--dataset", "digits", "--max-evals", 4,
                       "--epochs", 1, "--max-train-samples", 400, "--algo", "rand", "--artifacts", shared,
                       "--mongo", mongo_url, "-q", log=tmp_path / "launch.log",
                       extra_env=host_env(launcher, artifacts=False))
    try:
        assert launch.wait(480) == 0, log_text(tmp_path / "launch.log")[-3000:]
    finally:
        codes = [stop(w) for w in workers]
        stop(launch)
    assert codes == [0, 0], [log_text(tmp_path / f"{n}.log")[-2000:] for n in ("gpu-box-1", "gpu-box-2")]
    db = db_of(mongo_url)
    docs = list(db.jobs.find({"exp_key": "mongotune:mh"}))
    assert len(docs) == 4 and all(d["state"] == 2 and d["result"]["status"] == "ok" for d in docs), \
        [d.get("result") for d in docs]
    roots = {w.pid: hosts[name] / "artifacts" for w, name in zip(workers, ("gpu-box-1", "gpu-box-2"))}
    for d in docs:
        path = Path(d["artifacts"]["path"])
        root = roots[d["worker"]["pid"]]
        assert root in path.parents, (path, root)  # the worker's own root, not the launcher's nor the shared one
        assert path.name == "attempt-1" and path.parent.name == f"trial-{d['tid']:05d}"
        assert (path / "params.json").exists() and (path / "history.json").exists()
    assert {d["worker"]["pid"] for d in docs} == set(roots)  # both hosts trained
    _check_kept_models(docs)
    assert not (launcher / "home" / "artifacts").exists() and not (launcher / "data-cache").exists()
    assert not shared.exists()
    for name in ("gpu-box-1", "gpu-box-2"):  # each host prepared its own dataset cache
        assert any(p.name.startswith("digits-") for p in (hosts[name] / "data-cache").iterdir())


def _check_kept_models(docs: list[dict]) -> None:
    """--keep-models 3 (the default): after each trial a worker deletes, in its own root only, the models
    of the trials outside the best three so far.  So the best three keep theirs, and a trial outside the
    best three of those finished by its worker's last trial has lost its model (the two simulated hosts
    share a host name, but neither deletes in the other's root)."""
    def has_model(d):
        return (Path(d["artifacts"]["path"]) / "model.keras").exists()

    def best3(seq):
        return {d["tid"] for d in sorted(seq, key=lambda d: d["result"]["loss"])[:3]}

    assert all(has_model(d) for d in docs if d["tid"] in best3(docs))
    for pid in {d["worker"]["pid"] for d in docs}:
        last = max(d["finished"] for d in docs if d["worker"]["pid"] == pid)
        top = best3([d for d in docs if d["finished"] <= last])
        for d in docs:
            if d["worker"]["pid"] == pid and d["tid"] not in top:
                assert not has_model(d), (d["tid"], d["result"]["loss"], top)
