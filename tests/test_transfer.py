"""Studies that travel: export/import round trips byte for byte, copy between two server processes, bad input."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
from bson.raw_bson import RawBSONDocument

from helpers import db_of, log_text, mongotune, one_line_error, queue_trials, run_cli, stop, wait_for
from mongotune.store.artifacts import GridFSStore
from mongotune.store.studies import Study, StudyStore

pytestmark = [pytest.mark.timeout(300)]


def _finished_study(mongo_url, tmp_path, name="trav") -> None:
    """Two trials finished by a real worker, one left running (its worker killed), objects in GridFS."""
    db = db_of(mongo_url)
    StudyStore(db).create(Study(name=name, max_evals=3, objective={"kind": "synthetic", "steps": 3, "sleep_s": 0.1},
                                artifact_store="gridfs"))
    queue_trials(mongo_url, name, [{"x": 0.2}, {"x": 0.6}])
    w = mongotune("worker", "--mongo", mongo_url, "--study", name, log=tmp_path / "w.log")
    try:
        wait_for(lambda: db.jobs.count_documents({"exp_key": f"mongotune:{name}", "state": 2}) == 2, 120, 0.1,
                 what="two finished trials")
    finally:
        assert stop(w) == 0, log_text(tmp_path / "w.log")[-2000:]
    queue_trials(mongo_url, name, [{"x": 0.9}], first_tid=3)
    db.jobs.update_one({"tid": 3, "exp_key": f"mongotune:{name}"},
                       {"$set": {"state": 1, "owner": "gone", "lease_token": "t" * 32}})
    store = GridFSStore(db, name)
    for key, size in (("trial-00001/model.keras", 1_500_000), ("trial-00003/ckpt-00002-x-1/checkpoint.tar", 10)):
        blob = tmp_path / "blob"
        blob.write_bytes(hashlib.sha256(key.encode()).digest() * (size // 32 + 1))
        store.put(key, blob)


def _raw_trials(db, name):
    coll = db.jobs.with_options(codec_options=db.jobs.codec_options.with_options(document_class=RawBSONDocument))
    return {d["tid"]: bytes(d.raw) for d in coll.find({"exp_key": f"mongotune:{name}"})}


def _objects(db, name, tmp_path):
    store, out = GridFSStore(db, name), {}
    for info in store.list():
        path = tmp_path / uuid.uuid4().hex
        store.get(info.key, path)
        out[info.key] = path.read_bytes()
    return out


def test_export_import_round_trips_every_trial_and_artifact_byte_for_byte(mongo_server, mongo_url, tmp_path):
    _finished_study(mongo_url, tmp_path)
    src = db_of(mongo_url)
    archive = tmp_path / "trav.tar"
    r = run_cli("export", "trav", archive, "--mongo", mongo_url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 trials, 1 running ones as queued, 2 artifacts" in r.stdout
    target = f"{mongo_server.base}/t_{uuid.uuid4().hex[:12]}"
    r = run_cli("import", archive, "--mongo", target)
    assert r.returncode == 0, r.stdout + r.stderr
    dst = db_of(target)
    before, after = _raw_trials(src, "trav"), _raw_trials(dst, "trav")
    assert after[1] == before[1] and after[2] == before[2]  # finished trials: the very same bytes
    moved = dst.jobs.find_one({"tid": 3})  # the running one arrives queued, nobody's
    assert moved["state"] == 0 and moved["owner"] is None and moved["lease_token"] is None
    assert moved["requeues"][-1]["reason"] == "export"
    assert _objects(dst, "trav", tmp_path) == _objects(src, "trav", tmp_path)
    st = dst.studies.find_one({"_id": "trav"})
    assert st["coordinator"] is None and st["objective"] == src.studies.find_one({"_id": "trav"})["objective"]
    # the import of an export of the import: the same archive contents, byte for byte
    again = tmp_path / "again.tar"
    assert run_cli("export", "trav", again, "--mongo", target).returncode == 0
    assert run_cli("import", again, "--as", "trav2", "--mongo", target).returncode == 0
    assert dst.jobs.count_documents({"exp_key": "mongotune:trav2"}) == 3
    assert _objects(dst, "trav2", tmp_path) == _objects(src, "trav", tmp_path)


def test_copy_between_two_servers_and_bad_input(mongo_url, tmp_path):
    from mongotune.store.embedded import start_server

    _finished_study(mongo_url, tmp_path, "cp")
    other = start_server(tmp_path / "other-db", port=0)
    try:
        target = f"mongodb://{other.host}:{other.port}/group"
        r = run_cli("copy", "cp", "--from", mongo_url, "--to", target)
        assert r.returncode == 0, r.stdout + r.stderr
        dst, src = db_of(target), db_of(mongo_url)
        assert _raw_trials(dst, "cp")[1] == _raw_trials(src, "cp")[1]
        assert _objects(dst, "cp", tmp_path) == _objects(src, "cp", tmp_path)
        counts = (dst.jobs.count_documents({}), dst.studies.count_documents({}), dst["artifacts.files"].count_documents({}))
        # a name that exists at the target, an unknown URL scheme, a file that is not an archive: one line, exit 2
        one_line_error(run_cli("copy", "cp", "--from", mongo_url, "--to", target), "already exists")
        one_line_error(run_cli("copy", "cp", "--from", mongo_url, "--to", "s3://bucket/x"), "unknown scheme")
        one_line_error(run_cli("launch", "baseline", "--dataset", "digits", "--artifact-store", "s3://b",
                               "--mongo", target), "unknown artifact store")
        junk = tmp_path / "junk.tar"
        junk.write_bytes(b"not a tar file at all" * 100)
        one_line_error(run_cli("import", junk, "--mongo", target), "not a mongotune study archive")
        archive = tmp_path / "cp.tar"
        assert run_cli("export", "cp", archive, "--mongo", mongo_url).returncode == 0
        one_line_error(run_cli("import", archive, "--mongo", target), "already exists")
        # an archive with one artifact's bytes changed is refused before anything is written
        raw = bytearray(archive.read_bytes())
        at = raw.find(hashlib.sha256(b"trial-00001/model.keras").digest())
        raw[at] ^= 0xFF
        bad = tmp_path / "bad.tar"
        bad.write_bytes(bytes(raw))
        one_line_error(run_cli("import", bad, "--as", "cp3", "--mongo", target), "checksum")
        assert (dst.jobs.count_documents({}), dst.studies.count_documents({}),
                dst["artifacts.files"].count_documents({})) == counts  # nothing half-written
        assert not list(tmp_path.glob(".cp.tar.tmp-*"))
    finally:
        other.stop()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_copied_keras_study_runs_final_on_the_target_with_the_same_params_and_accuracy(mongo_url, tmp_path):
    from mongotune.store.embedded import start_server

    r = run_cli("launch", "baseline", "--study", "kc", "--dataset", "digits", "--max-evals", 2, "--epochs", 2,
                "--patience", 1, "--algo", "rand", "--pruner", "none", "--workers", 1, "--seed", 7,
                "--mongo", mongo_url, "-q", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    other = start_server(tmp_path / "group-db", port=0)
    try:
        target = f"mongodb://{other.host}:{other.port}/group"
        r = run_cli("copy", "kc", "--from", mongo_url, "--to", target)
        assert r.returncode == 0, r.stdout + r.stderr
        finals = {}
        for name, url in (("source", mongo_url), ("target", target)):
            r = run_cli("final", "kc", "--mongo", url, "--out", tmp_path / f"final-{name}", timeout=600)
            assert r.returncode == 0, r.stdout + r.stderr
            finals[name] = db_of(url).studies.find_one({"_id": "kc"})["final"]
    finally:
        other.stop()
    src_best = db_of(mongo_url).studies.find_one({"_id": "kc"})["best"]
    assert finals["target"]["tid"] == finals["source"]["tid"] == src_best["tid"]
    assert finals["target"].get("params", src_best.get("params")) == src_best.get("params")
    assert finals["target"]["test_accuracy"] == pytest.approx(finals["source"]["test_accuracy"], abs=1e-9)


def test_gc_deletes_what_no_trial_needs_and_keeps_the_rest(mongo_url, tmp_path):
    import datetime

    import bson

    db = db_of(mongo_url)
    StudyStore(db).create(Study(name="gc", max_evals=3, objective={"kind": "synthetic"}, artifact_store="gridfs"))
    queue_trials(mongo_url, "gc", [{"x": 0.1}, {"x": 0.2}])
    store, blob = GridFSStore(db, "gc"), tmp_path / "blob"
    blob.write_bytes(b"x" * 100_000)
    for key in ("trial-00001/ckpt-00003-a-1/model.keras", "trial-00002/ckpt-00002-b-1/model.keras",
                "trial-00002/ckpt-00003-b-2/model.keras", "trial-00001/model.keras"):
        store.put(key, blob)
    ref = {"step": 3, "lease": "a", "files": {"model.keras": {}}, "prefix": "trial-00001/ckpt-00003-a-1"}
    db.jobs.update_one({"tid": 1}, {"$set": {"state": 2, "checkpoint": ref}})  # finished; its worker died after
    db.jobs.update_one({"tid": 2}, {"$set": {"state": 1, "checkpoint": {**ref, "prefix": "trial-00002/ckpt-00002-b-1"}}})
    old = bson.ObjectId.from_datetime(datetime.datetime(2020, 1, 1))
    db["artifacts.chunks"].insert_one({"files_id": old, "n": 0, "data": b"y" * 5000})  # an upload cut off long ago
    r = run_cli("gc", "gc", "--dry-run", "--mongo", mongo_url)
    assert r.returncode == 0 and "would delete 1 objects" in r.stdout, r.stdout + r.stderr
    assert len(store.list()) == 4
    r = run_cli("gc", "gc", "--grace", 0, "--mongo", mongo_url)  # the running trial's unnamed save counts as stale
    assert r.returncode == 0 and "deleted 2 objects" in r.stdout and "1 pointers" in r.stdout, r.stdout + r.stderr
    assert [i.key for i in store.list()] == ["trial-00001/model.keras", "trial-00002/ckpt-00002-b-1/model.keras"]
    assert db.jobs.find_one({"tid": 1}).get("checkpoint") is None and db.jobs.find_one({"tid": 2})["checkpoint"]
    assert db["artifacts.chunks"].count_documents({"files_id": old}) == 0
    one_line_error(run_cli("gc", "nope", "--mongo", mongo_url), "nope")


def test_status_shows_the_size_of_the_artifact_store(mongo_url, tmp_path):
    db = db_of(mongo_url)
    StudyStore(db).create(Study(name="sz", max_evals=1, objective={"kind": "synthetic"}, artifact_store="gridfs"))
    blob = tmp_path / "blob"
    blob.write_bytes(b"z" * (3 << 20))
    GridFSStore(db, "sz").put("trial-00001/model.keras", blob)
    r = run_cli("status", "sz", "--mongo", mongo_url)
    assert r.returncode == 0 and "artifacts: 1 objects, 3.0 MiB (gridfs store)" in r.stdout, r.stdout + r.stderr
    r = run_cli("status", "sz", "--mongo", mongo_url, "--json")
    assert json.loads(r.stdout)["artifacts"] == {"store": "gridfs", "objects": 1, "bytes": 3 << 20}


def test_launch_stores_the_artifact_store_and_checkpoint_interval(tmp_path):
    from mongotune.objectives.launch import LaunchOptions, plan_launch

    keras = plan_launch(LaunchOptions(model="baseline", dataset="digits", max_evals=1, epochs=3, checkpoint_every=60,
                                      artifact_store="gridfs")).study
    assert keras.artifact_store == "gridfs" and keras.objective["training"]["checkpoint_every"] == 60
    cmd = plan_launch(LaunchOptions(study="c", command="echo {x}", param=["x:0:1"], metric=["m"], cwd=str(tmp_path),
                                    checkpoint_every=5)).study
    assert cmd.objective["checkpoint_every"] == 5 and cmd.artifact_store is None
    for bad, needle in ((["--checkpoint-every", "-1"], "--checkpoint-every"), (["--artifact-store", "nfs"], "nfs")):
        one_line_error(run_cli("launch", "baseline", "--dataset", "digits", "--max-evals", 1, *bad), needle)
