"""The cache: corruption is detected and rebuilt, the lock builds once, the
memo hands out one object per process."""

import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import make_npz

from mongotune import data
from mongotune.data import DataSpec, default_cache_dir, list_cached, load, prepare, verify
from mongotune.data._cache import check_entry
from mongotune.errors import DataError

DIGITS = DataSpec("digits", size=12)


def _stages(calls):
    return {stage for stage, _, _ in calls}


def test_prepare_reuses_an_intact_cache_and_verifies_it(cache_dir):
    first = prepare(DIGITS, cache_dir)
    calls = []
    second = prepare(DIGITS, cache_dir, progress=lambda *a: calls.append(a))
    assert second.meta["build_id"] == first.meta["build_id"]
    assert "verify" in _stages(calls) and "resize train" not in _stages(calls)
    forced = prepare(DIGITS, cache_dir, force=True)
    assert forced.meta["build_id"] != first.meta["build_id"]
    np.testing.assert_array_equal(forced.x_train, first.x_train)


def test_layout_and_meta(cache_dir):
    ds = prepare(DIGITS, cache_dir)
    path = cache_dir / DIGITS.cache_key()
    assert ds.path == path
    names = sorted(p.name for p in path.iterdir())
    assert names == ["meta.json", "x_test.npy", "x_train.npy", "x_val.npy",
                     "y_test.npy", "y_train.npy", "y_val.npy"]
    meta = json.loads((path / "meta.json").read_text())
    assert meta["key"] == DIGITS.cache_key()
    assert meta["class_names"] == [str(i) for i in range(10)]
    assert meta["splits"] == {"train": 1294, "val": 144, "test": 359}
    assert meta["image_shape"] == [12, 12, 1] and meta["native_shape"] == [8, 8, 1]
    assert meta["preprocessing"]["interpolation"] == "area"
    assert meta["files"]["x_train.npy"]["bytes"] == (path / "x_train.npy").stat().st_size
    assert meta["files"]["x_train.npy"]["shape"] == [1294, 12, 12, 1]
    assert meta["source"]["kind"] == "sklearn"
    assert len(meta["content_hash"]) == 64
    # uint8 on disk: the image payload is exactly N*H*W*C bytes
    assert (path / "x_train.npy").stat().st_size - 1294 * 144 < 256
    assert not list(cache_dir.glob(".tmp-*"))


@pytest.mark.parametrize("damage", ["truncate", "delete", "no_meta", "edit_meta", "bad_header",
                                    "garbage_meta"])
def test_damaged_cache_is_detected_and_rebuilt(cache_dir, damage):
    ds = prepare(DIGITS, cache_dir)
    path = ds.path
    good = np.array(ds.x_train)
    del ds
    data.clear_memo()
    if damage == "truncate":
        f = path / "x_train.npy"
        f.write_bytes(f.read_bytes()[:-500])
    elif damage == "delete":
        (path / "y_val.npy").unlink()
    elif damage == "no_meta":
        (path / "meta.json").unlink()
    elif damage == "edit_meta":
        meta = json.loads((path / "meta.json").read_text())
        meta["class_names"][0] = "zero"
        (path / "meta.json").write_text(json.dumps(meta))
    elif damage == "bad_header":
        f = path / "x_val.npy"
        raw = bytearray(f.read_bytes())
        raw[0:6] = b"NOTNPY"
        f.write_bytes(bytes(raw))
    elif damage == "garbage_meta":
        (path / "meta.json").write_text("{ half written")
    problem = check_entry(path, DIGITS, full=False)
    assert problem is not None
    with pytest.raises(DataError):
        verify(DIGITS, cache_dir)
    calls = []
    fixed = load(DIGITS, cache_dir, progress=lambda *a: calls.append(a))
    assert "resize train" in _stages(calls)  # rebuilt, not silently used
    np.testing.assert_array_equal(fixed.x_train, good)
    assert check_entry(path, DIGITS, full=True) is None
    assert fixed.meta["class_names"][0] == "0"


def test_flipped_byte_is_caught_by_the_full_hash(cache_dir):
    ds = prepare(DIGITS, cache_dir)
    f = ds.path / "x_test.npy"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0xFF  # same size, valid header: only hashing can tell
    f.write_bytes(bytes(raw))
    assert check_entry(ds.path, DIGITS, full=False) is None
    assert check_entry(ds.path, DIGITS, full=True) == "x_test.npy content hash mismatch (corrupt)"
    with pytest.raises(DataError, match="x_test.npy content hash mismatch"):
        verify(DIGITS, cache_dir)
    rebuilt = prepare(DIGITS, cache_dir)
    assert rebuilt.meta["build_id"] != ds.meta["build_id"]
    assert verify(DIGITS, cache_dir)["build_id"] == rebuilt.meta["build_id"]


def test_stale_temp_dirs_are_cleaned(cache_dir):
    stale = cache_dir / f".tmp-{DIGITS.cache_key()}-999-dead"
    stale.mkdir(parents=True)
    (stale / "x_train.npy").write_bytes(b"half")
    prepare(DIGITS, cache_dir)
    assert not stale.exists()


def test_load_memo_returns_same_object(cache_dir):
    a = load(DIGITS, cache_dir)
    b = load(DataSpec.from_dict(DIGITS.to_dict()), cache_dir)
    assert a is b
    assert isinstance(a.x_train, np.memmap) and a.x_train.filename is not None
    c = load(DataSpec("digits", size=12, seed=1), cache_dir)
    assert c is not a
    data.clear_memo()
    assert load(DIGITS, cache_dir) is not a


def test_load_with_default_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MONGOTUNE_DATA_DIR", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    ds = load(DataSpec("digits"))
    assert ds.path.parent == tmp_path / "env-cache"
    monkeypatch.delenv("MONGOTUNE_DATA_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "mongotune" / "data"


def test_list_cached(cache_dir):
    assert list_cached(cache_dir) == []
    prepare(DIGITS, cache_dir)
    prepare(DataSpec("digits"), cache_dir)
    broken = cache_dir / "npz-s9-cnative-area-v0.1-seed0-deadbeef"
    broken.mkdir()
    entries = {e["key"]: e for e in list_cached(cache_dir)}
    assert set(entries) == {DIGITS.cache_key(), DataSpec("digits").cache_key(), broken.name}
    e = entries[DIGITS.cache_key()]
    assert e["name"] == "digits" and e["size"] == 12 and e["status"] == "ok"
    assert e["shapes"] == {"train": [1294, 12, 12, 1], "val": [144, 12, 12, 1],
                           "test": [359, 12, 12, 1]}
    on_disk = sum(f.stat().st_size for f in (cache_dir / DIGITS.cache_key()).iterdir())
    assert e["bytes"] == on_disk
    assert e["created"].endswith("+00:00")
    assert entries[DataSpec("digits").cache_key()]["size"] is None
    assert entries[broken.name]["status"].startswith("corrupt: ")


# --- two processes, one build ----------------------------------------------------


def _prepare_in_child(spec_dict, cache_dir, barrier, queue):
    from mongotune.data import DataSpec, prepare

    calls = []
    barrier.wait()
    ds = prepare(DataSpec.from_dict(spec_dict), cache_dir, progress=lambda *a: calls.append(a[0]))
    queue.put((os.getpid(), ds.meta["build_id"], "resize train" in calls, "wait for lock" in calls))


def test_two_processes_build_once(tmp_path, cache_dir):
    path = tmp_path / "big.npz"
    make_npz(path, n=3000, shape=(28, 28), with_test=False)
    spec = DataSpec("npz", source=str(path), size=96, interpolation="lanczos")
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_prepare_in_child,
                         args=(spec.to_dict(), str(cache_dir), barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    build_ids = {r[1] for r in results}
    assert len(build_ids) == 1, results            # both opened the same build
    assert sum(r[2] for r in results) == 1, results  # exactly one of them resized
    assert any(r[3] for r in results), results      # the other waited on the lock
    assert prepare(spec, cache_dir).meta["build_id"] in build_ids
    assert not list(cache_dir.glob(".tmp-*"))
