"""Connection URLs, password redaction, the NaN-safe codec, and failing fast."""

from __future__ import annotations

import math
import socket
import time
import urllib.parse

import bson
import numpy as np
import pymongo
import pytest

from mongotune.errors import ConnectionFailure, UserError
from mongotune.store import MongoJobs, MongoTrials, open_client, parse_mongo_url, redact
from mongotune.store import _codec
from mongotune.store._url import DEFAULT_DB, DEFAULT_JOBS

SECRET = "s3cr3t-Pw"


def _query(parsed) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(parsed.client_uri.partition("?")[2])


# ---------------------------------------------------------------- parse_mongo_url


def test_hyperopt_form_with_credentials_defaults_auth_source_to_admin():
    p = parse_mongo_url(f"mongo://alice:{SECRET}@db.example:27017/hyperoptdb/jobs")
    assert p.client_uri.startswith(f"mongodb://alice:{SECRET}@db.example:27017/hyperoptdb?")
    assert _query(p)["authSource"] == ["admin"]
    assert "directConnection" not in _query(p)  # pymongo discovers: a replica-set seed finds the whole set
    assert (p.database, p.collection) == ("hyperoptdb", "jobs")
    assert (p.username, p.password, p.hosts) == ("alice", SECRET, ("db.example:27017",))


def test_hyperopt_form_keeps_an_explicit_auth_source():
    p = parse_mongo_url(f"mongo://alice:{SECRET}@h:27017/db/jobs?authSource=db1")
    assert _query(p)["authSource"] == ["db1"]


def test_hyperopt_form_without_credentials_adds_no_auth_source():
    p = parse_mongo_url("mongo://127.0.0.1:22334/foo/jobs")
    assert "authSource" not in _query(p)
    assert p.username is None and p.password is None


def test_percent_encoded_password_is_decoded_and_re_encoded():
    p = parse_mongo_url("mongo://alice:p%40ss%2Fw@h:1/db/jobs")
    assert p.password == "p@ss/w"
    assert p.client_uri.startswith("mongodb://alice:p%40ss%2Fw@h:1/db?")


def test_standard_form_keeps_options():
    p = parse_mongo_url("mongodb://h1:1234/study?replicaSet=rs0&w=majority&appname=x")
    q = _query(p)
    assert q["replicaSet"] == ["rs0"] and q["w"] == ["majority"] and q["appname"] == ["x"]
    assert "directConnection" not in q  # a replica set name means: discover it
    assert "authSource" not in q  # only hyperopt's mongo:// form implies admin
    assert (p.database, p.collection) == ("study", DEFAULT_JOBS)


def test_standard_form_with_explicit_direct_connection_is_left_alone():
    p = parse_mongo_url("mongodb://h:1/db?directConnection=false")
    assert _query(p)["directConnection"] == ["false"]


def test_standard_form_several_hosts():
    p = parse_mongo_url("mongodb://h1:1,h2:2/db")
    assert p.hosts == ("h1:1", "h2:2")
    assert p.client_uri == "mongodb://h1:1,h2:2/db"


def test_srv_form():
    p = parse_mongo_url(f"mongodb+srv://alice:{SECRET}@cluster0.example.net/prod?retryWrites=true")
    assert p.client_uri.startswith(f"mongodb+srv://alice:{SECRET}@cluster0.example.net/prod?")
    q = _query(p)
    assert q == {"retryWrites": ["true"]}  # no directConnection, no implied authSource
    assert p.database == "prod" and p.hosts == ("cluster0.example.net",)


@pytest.mark.parametrize(
    "url, db, coll",
    [
        ("mongodb://h:1/mydb/mycoll", "mydb", "mycoll"),
        ("mongodb://h:1/mydb/mycoll?w=1", "mydb", "mycoll"),
        ("mongo://h:1/mydb/jobs", "mydb", "jobs"),
        ("mongodb://h:1/mydb", "mydb", DEFAULT_JOBS),
        ("mongodb://h:1/", DEFAULT_DB, DEFAULT_JOBS),
        ("mongodb://h:1", DEFAULT_DB, DEFAULT_JOBS),
        ("mongodb://h:1?w=1", DEFAULT_DB, DEFAULT_JOBS),
    ],
)
def test_database_and_collection_path(url, db, coll):
    p = parse_mongo_url(url)
    assert (p.database, p.collection) == (db, coll)
    # -- pymongo is given the database only, never the collection
    assert urllib.parse.urlsplit(p.client_uri).path == "/" + db


@pytest.mark.parametrize(
    "url, says",
    [
        (f"http://alice:{SECRET}@h:1/db", "unknown scheme"),
        (f"postgres://alice:{SECRET}@h:1/db", "unknown scheme"),
        (f"alice:{SECRET}@h:27017/db", "expected mongodb://"),
        (f"mongodb:/alice:{SECRET}@h:27017/db", "expected mongodb://"),
        (f"mongodb://alice:{SECRET}@h:99999/db", "bad port"),
        (f"mongodb://alice:{SECRET}@h:0/db", "bad port"),
        (f"mongo://alice:{SECRET}@h:abc/db/jobs", "bad port"),
        (f"mongodb://alice:{SECRET}@h1:1,h2:x/db", "bad port"),
        (f"mongodb://alice:{SECRET}@/db", "no host"),
        ("mongodb:///db", "no host"),
        (f"mongodb://alice:{SECRET}@h:1/a/b/c", "expected /database[/collection]"),
        (f"mongodb://alice:{SECRET}@h:1/my.db", "invalid database name"),
        ("", "expected mongodb://"),
    ],
)
def test_bad_urls_raise_one_line_without_the_password(url, says):
    with pytest.raises(ConnectionFailure) as info:
        parse_mongo_url(url)
    msg = str(info.value)
    assert says in msg
    assert "\n" not in msg
    assert SECRET not in msg
    assert isinstance(info.value, UserError)  # the CLI prints it as one line, exit 2


def test_non_string_url_raises_connection_failure():
    with pytest.raises(ConnectionFailure, match="bad MongoDB URL"):
        parse_mongo_url(None)


def test_parsed_url_repr_hides_the_password():
    p = parse_mongo_url(f"mongodb://alice:{SECRET}@h:1/db")
    assert SECRET not in repr(p)
    assert SECRET not in str(p)
    assert SECRET not in p.redacted
    assert p.redacted.startswith("mongodb://alice:***@h:1/db")


# ---------------------------------------------------------------- redact


@pytest.mark.parametrize(
    "uri, expected",
    [
        (f"mongodb://alice:{SECRET}@h:1/db?x=1", "mongodb://alice:***@h:1/db?x=1"),
        (f"mongo://alice:{SECRET}@h:1/db/jobs", "mongo://alice:***@h:1/db/jobs"),
        (f"mongodb+srv://alice:{SECRET}@c.example.net/db", "mongodb+srv://alice:***@c.example.net/db"),
        (f"mongodb://alice:{SECRET}@h1:1,h2:2", "mongodb://alice:***@h1:1,h2:2"),
        ("mongodb://alice:p@ss@h:1/db", "mongodb://alice:***@h:1/db"),  # raw '@' in the password
        ("mongodb://alice@h:1/db", "mongodb://alice@h:1/db"),  # no password: nothing to hide
        ("mongodb://h:1/db", "mongodb://h:1/db"),
        ("not a url", "not a url"),
    ],
)
def test_redact(uri, expected):
    assert redact(uri) == expected


def test_redact_hides_credentials_of_a_url_without_scheme():
    out = redact(f"alice:{SECRET}@h:27017/db")
    assert SECRET not in out
    assert out.endswith("@h:27017/db")


# ---------------------------------------------------------------- codec


def _same(a, b) -> bool:
    """Equality where NaN equals NaN and types must match."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("x, tag", [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf")])
def test_non_finite_floats_become_tags_and_come_back(x, tag):
    enc = _codec.encode(x)
    assert enc == {"__float__": tag}
    back = _codec.decode(enc)
    assert isinstance(back, float) and _same(back, x)


def test_round_trip_nested_structures_through_bson():
    doc = {
        "loss": math.nan,
        "losses": [1.5, math.inf, [-math.inf, {"deep": math.nan}]],
        "result": {"status": "ok", "hist": (0.1, math.nan), "none": None, "flag": True},
        "n": 3,
        "blob": b"\x00\x01",
        "name": "x",
        "finite": -0.0,
    }
    enc = _codec.encode(doc)
    # -- encoded: no non-finite float anywhere, and storable as BSON
    raw = bson.decode(bson.encode(enc))
    back = _codec.decode(raw)
    expected = dict(doc, result=dict(doc["result"], hist=[0.1, math.nan]))  # tuples become lists
    assert _same(back, expected)
    assert doc["loss"] is not enc["loss"] and math.isnan(doc["loss"])  # input untouched


def test_encode_numpy_scalars_and_arrays():
    doc = {
        "f32": np.float32(1.5),
        "f64nan": np.float64("nan"),
        "i64": np.int64(7),
        "b": np.bool_(True),
        "arr": np.array([[1.0, np.nan], [np.inf, 2.0]]),
        "iarr": np.arange(3, dtype=np.int32),
    }
    enc = _codec.encode(doc)
    bson.encode(enc)  # plain BSON types only
    assert type(enc["f32"]) is float and enc["f32"] == 1.5
    assert enc["f64nan"] == {"__float__": "nan"}
    assert type(enc["i64"]) is int and enc["i64"] == 7
    assert enc["b"] is True
    assert enc["arr"] == [[1.0, {"__float__": "nan"}], [{"__float__": "inf"}, 2.0]]
    assert enc["iarr"] == [0, 1, 2] and all(type(v) is int for v in enc["iarr"])
    back = _codec.decode(enc)
    assert _same(back["arr"], [[1.0, math.nan], [math.inf, 2.0]])


def test_decode_leaves_lookalike_dicts_alone():
    assert _codec.decode({"__float__": "nan", "other": 1}) == {"__float__": "nan", "other": 1}
    assert _codec.decode({"__float__": "banana"}) == {"__float__": "banana"}
    assert _codec.decode({"x": [{"__float__": "1.0"}]}) == {"x": [{"__float__": "1.0"}]}


def test_encode_update_encodes_each_operand():
    upd = _codec.encode_update({"$set": {"result.loss": math.nan}, "$inc": {"version": 1}})
    assert upd == {"$set": {"result.loss": {"__float__": "nan"}}, "$inc": {"version": 1}}


# ---------------------------------------------------------------- against the server


def test_nan_loss_written_by_update_reads_back_as_nan(mongo_url):
    trials = MongoTrials(mongo_url, exp_key="nan")
    [tid] = trials.new_trial_ids(1)
    doc = {
        "tid": tid,
        "spec": None,
        "result": {"status": "new"},
        "misc": {"tid": tid, "cmd": None, "idxs": {"x": [tid]}, "vals": {"x": [0.5]}},
        "state": 0,
        "owner": None,
        "version": 0,
        "book_time": None,
        "refresh_time": None,
        "exp_key": "nan",
    }
    trials.insert_trial_doc(doc)
    trials.refresh()
    [stored] = trials.trials

    mj = MongoJobs.new_from_connection_str(mongo_url)
    mj.update(stored, {"result": {"status": "ok", "loss": math.nan, "curve": [1.0, -math.inf]}, "state": 2})

    # -- on disk: the portable tag, whatever the server
    raw = mj.jobs.find_one({"tid": tid})
    assert raw["result"]["loss"] == {"__float__": "nan"}

    trials.refresh()
    [t] = trials.trials
    assert t["state"] == 2 and t["version"] == 1
    assert isinstance(t["result"]["loss"], float) and math.isnan(t["result"]["loss"])
    assert t["result"]["curve"][0] == 1.0 and t["result"]["curve"][1] == -math.inf
    [loss] = trials.losses()
    assert math.isnan(loss)


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: nobody listens there


def test_open_client_on_a_closed_port_fails_fast():
    port = _unused_port()
    url = f"mongo://alice:{SECRET}@127.0.0.1:{port}/db/jobs"
    t0 = time.monotonic()
    with pytest.raises(ConnectionFailure) as info:
        open_client(url, timeout_ms=300)
    elapsed = time.monotonic() - t0
    assert elapsed < 5.0, f"took {elapsed:.1f}s"
    msg = str(info.value)
    assert msg.startswith("cannot reach MongoDB at mongodb://alice:***@127.0.0.1:")
    assert str(port) in msg
    assert "\n" not in msg and SECRET not in msg


def test_open_client_reaches_the_server(mongo_url):
    client, db, parsed = open_client(mongo_url, timeout_ms=5000)
    try:
        assert isinstance(client, pymongo.MongoClient)
        assert db.name == parsed.database == urllib.parse.urlsplit(mongo_url).path.strip("/")
        assert db.command("ping")["ok"] == 1
    finally:
        client.close()
