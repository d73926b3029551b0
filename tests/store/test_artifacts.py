"""The artifact store on a real server process: both backends, checksums, writes cut off by SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from helpers import db_of, env, wait_for
from mongotune.store.artifacts import (ArtifactCorrupt, ArtifactError, ArtifactMissing, DirectoryStore, GridFSStore,
                                       file_sha256, open_store)

pytestmark = [pytest.mark.timeout(300)]


@pytest.fixture(params=["local", "gridfs"])
def store(request, mongo_url, tmp_path):
    if request.param == "local":
        return DirectoryStore(tmp_path / "root", "s1")
    return GridFSStore(db_of(mongo_url), "s1")


def _blob(path, n: int, seed: int = 1):
    path.write_bytes(os.urandom(n) if seed else b"\0" * n)
    return path


def test_put_get_list_delete_round_trip_with_checksums(store, tmp_path):
    a = _blob(tmp_path / "a.bin", 3_000_000)
    info = store.put("trial-00001/ckpt-1/model.keras", a)
    assert (info.sha256, info.size) == file_sha256(a)
    store.put("trial-00002/x.json", _blob(tmp_path / "b.bin", 10))
    assert [i.key for i in store.list()] == ["trial-00001/ckpt-1/model.keras", "trial-00002/x.json"]
    assert [i.key for i in store.list("trial-00001/")] == ["trial-00001/ckpt-1/model.keras"]
    out = tmp_path / "out" / "m.keras"
    out.parent.mkdir()
    assert store.get("trial-00001/ckpt-1/model.keras", out).sha256 == info.sha256
    assert out.read_bytes() == a.read_bytes()
    # a second put under the same key replaces the first, once complete
    store.put("trial-00002/x.json", _blob(tmp_path / "c.bin", 20))
    assert store.info("trial-00002/x.json").size == 20 and len(store.list("trial-00002")) == 1
    store.delete("trial-00001/ckpt-1/model.keras")
    with pytest.raises(ArtifactMissing):
        store.get("trial-00001/ckpt-1/model.keras", out)
    assert [i.key for i in store.list()] == ["trial-00002/x.json"]


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../b", ".hidden", "a//b", "", "a/b/", 5])
def test_keys_from_the_database_never_name_a_path_outside(store, tmp_path, key):
    with pytest.raises(ArtifactError):
        store.put(key, _blob(tmp_path / "a.bin", 1))


@pytest.mark.parametrize("name", ["..", "../x", "/abs", "a/b", ""])
def test_bad_study_names_are_refused(mongo_url, tmp_path, name):
    with pytest.raises(ArtifactError):
        DirectoryStore(tmp_path, name)
    with pytest.raises(ArtifactError):
        GridFSStore(db_of(mongo_url), name)


def test_a_truncated_object_is_never_handed_out(store, mongo_url, tmp_path):
    store.put("k/model.keras", _blob(tmp_path / "a.bin", 2_500_000))
    if isinstance(store, DirectoryStore):
        path = store.base / "k" / "model.keras"
        path.write_bytes(path.read_bytes()[:1000])
    else:  # a chunk lost
        db = db_of(mongo_url)
        fid = db["artifacts.files"].find_one({"filename": "s1/k/model.keras"})["_id"]
        db["artifacts.chunks"].delete_one({"files_id": fid, "n": 1})
    out = tmp_path / "out.keras"
    with pytest.raises(ArtifactCorrupt):
        store.get("k/model.keras", out)
    assert not out.exists()


def test_a_gridfs_upload_cut_off_by_sigkill_is_invisible(mongo_url, tmp_path):
    """A process killed in the middle of an upload leaves chunks, never a file that can be read."""
    big = _blob(tmp_path / "big.bin", 40_000_000, seed=0)
    code = ("import sys; from pathlib import Path; from helpers import db_of; "
            "from mongotune.store.artifacts import GridFSStore; "
            "GridFSStore(db_of(sys.argv[1]), 's1').put('t/ckpt/model.keras', Path(sys.argv[2]))")
    proc = subprocess.Popen([sys.executable, "-c", code, mongo_url, str(big)],
                            env=env(PYTHONPATH=f"{os.path.dirname(__file__)}/..{os.pathsep}"
                                              f"{os.path.dirname(__file__)}/../.."))
    db = db_of(mongo_url)
    try:
        wait_for(lambda: db["artifacts.chunks"].count_documents({}) >= 2, 60, 0.05, what="an upload under way")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    store = open_store("gridfs", db, "s1", tmp_path)
    assert store.list() == [] and store.info("t/ckpt/model.keras") is None
    with pytest.raises(ArtifactMissing):
        store.get("t/ckpt/model.keras", tmp_path / "out")
    assert db["artifacts.chunks"].count_documents({}) >= 2  # orphan chunks, for gc


def test_auto_is_the_directory_on_the_embedded_server(mongo_server, mongo_url, tmp_path):
    store = open_store(None, db_of(mongo_url), "s1", tmp_path)
    expected = "gridfs" if os.environ.get("MONGOTUNE_TEST_MONGO") else "local"
    assert store.kind == expected


def test_an_object_is_read_in_batches_that_keep_every_reply_small(mongo_url, tmp_path):
    """The embedded server answers a query in one reply of at most 48 MB, so an object of any size is read
    READ_BATCH chunks per query: a 17 MB object takes two queries or more, none answered with more than
    READ_BATCH chunks (so no reply exceeds READ_BATCH MB, whatever the object's size), and round-trips."""
    import pymongo
    from pymongo import monitoring

    from mongotune.store.artifacts import CHUNK, READ_BATCH

    class Replies(monitoring.CommandListener):
        def __init__(self):
            self.sizes = []

        def started(self, event):
            pass

        def succeeded(self, event):
            if event.command_name in ("find", "getMore"):
                cursor = event.reply.get("cursor") or {}
                batch = cursor.get("firstBatch", cursor.get("nextBatch", []))
                if cursor.get("ns", "").endswith(".artifacts.chunks"):
                    self.sizes.append(len(batch))

        def failed(self, event):
            pass

    replies = Replies()
    client = pymongo.MongoClient(mongo_url, event_listeners=[replies])
    try:
        store = GridFSStore(client.get_default_database(), "big")
        src = _blob(tmp_path / "big.bin", (READ_BATCH + 1) * CHUNK)
        info = store.put("big/model.keras", src)
        replies.sizes.clear()
        out = tmp_path / "out.bin"
        assert store.get("big/model.keras", out).sha256 == info.sha256 and out.read_bytes() == src.read_bytes()
    finally:
        client.close()
    assert len(replies.sizes) >= 2 and max(replies.sizes) == READ_BATCH, replies.sizes
