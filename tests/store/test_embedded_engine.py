"""The embedded server's engine keeps MongoDB's answers while it stops re-reading the collection on each write.

``store/embedded_engine.py`` keeps the engine's cached facts about a collection
(an array somewhere at ``tags``? a Decimal128 at ``x``? every ``v`` a number?)
across writes and updates them from the written documents.  Each test first
asks a query that makes the engine learn such a fact while it holds, then
writes a document that breaks it (by an insert, an update, an upsert, a bulk
insert, a replacement) and asks again: the answers must be MongoDB's.  They
run against ``MONGOTUNE_TEST_MONGO`` too.
"""

from __future__ import annotations

import pymongo
import pytest
from bson import Decimal128, ObjectId
from pymongo.errors import DuplicateKeyError


FILLER = {"filler": {"$exists": False}}


@pytest.fixture
def coll(mongo_url):
    """A collection large enough that the engine keeps its facts across writes (``SMALL_COLLECTION``): 600
    documents without any field the tests ask about."""
    from mongotune.store.embedded_engine import SMALL_COLLECTION

    client = pymongo.MongoClient(mongo_url)
    c = client.get_default_database()["facts"]
    c.insert_many([{"_id": f"filler-{i}", "filler": True} for i in range(SMALL_COLLECTION + 100)])
    yield c
    client.close()


def ids(cursor) -> list:
    return sorted(d["_id"] for d in cursor)


def test_an_array_written_later_is_matched_by_element(coll):
    coll.insert_many([{"_id": i, "tags": f"t{i}"} for i in range(20)])
    assert ids(coll.find({"tags": "x"})) == []
    coll.update_one({"_id": 3}, {"$set": {"tags": ["x", "y"]}})
    assert ids(coll.find({"tags": "x"})) == [3]
    coll.insert_one({"_id": 50, "tags": ["z", "x"]})
    assert ids(coll.find({"tags": "x"})) == [3, 50]
    coll.update_one({"_id": 51}, {"$set": {"tags": ["x"]}}, upsert=True)
    assert ids(coll.find({"tags": "x"})) == [3, 50, 51]
    coll.delete_one({"_id": 50})
    assert ids(coll.find({"tags": "x"})) == [3, 51]
    assert ids(coll.find({"tags": {"$size": 2}})) == [3]


def test_a_dotted_path_through_a_new_array(coll):
    coll.insert_many([{"_id": i, "a": {"b": i}} for i in range(20)])
    assert ids(coll.find({"a.b": 100})) == []
    coll.replace_one({"_id": 4}, {"a": [{"b": 7}, {"b": 100}]})
    assert ids(coll.find({"a.b": 100})) == [4]
    assert ids(coll.find({"a.b": {"$gte": 19}})) == [4, 19]
    coll.insert_many([{"_id": 30, "a": [{"b": 100}]}, {"_id": 31, "a": {"b": 1}}])
    assert ids(coll.find({"a.b": 100})) == [4, 30]


def test_sort_order_after_a_string_joins_numbers(coll):
    coll.insert_many([{"_id": i, "v": (i * 7) % 11} for i in range(11)])
    assert [d["v"] for d in coll.find(FILLER).sort("v", 1)] == list(range(11))
    coll.insert_one({"_id": 99, "v": "abc"})
    coll.update_one({"_id": 0}, {"$set": {"v": 2.5}})
    got = [d["v"] for d in coll.find(FILLER).sort("v", 1)]
    assert got == [1, 2, 2.5, 3, 4, 5, 6, 7, 8, 9, 10, "abc"]  # numbers before strings, as BSON orders them
    assert ids(coll.find({"v": {"$in": [2.5, "abc"]}})) == [0, 99]


def test_a_decimal_and_a_double_written_later_compare_as_numbers(coll):
    coll.insert_many([{"_id": i, "x": i} for i in range(10)])
    assert ids(coll.find({"x": {"$gt": 8}})) == [9]
    coll.insert_one({"_id": 20, "x": Decimal128("8.5")})
    coll.update_one({"_id": 1}, {"$set": {"x": 8.25}})
    assert ids(coll.find({"x": {"$gt": 8}})) == [1, 9, 20]
    assert ids(coll.find({"x": {"$lt": 8.4, "$gt": 8}})) == [1]


def test_non_ascii_text_written_later_compares_by_bytes(coll):
    coll.insert_many([{"_id": i, "name": f"n{i:02d}"} for i in range(10)])
    assert ids(coll.find({"name": {"$gt": "z"}})) == []
    coll.insert_one({"_id": 20, "name": "\u00e9t\u00e9"})
    assert ids(coll.find({"name": {"$gt": "z"}})) == [20]
    assert [d["_id"] for d in coll.find().sort("name", -1).limit(2)] == [20, 9]


def test_duplicate_ids_still_refused(coll):
    oid = ObjectId()
    coll.insert_many([{"_id": ObjectId()} for _ in range(30)] + [{"_id": oid}, {"_id": 1}, {"_id": "s"}])
    for dup in (oid, 1, 1.0, "s"):
        with pytest.raises(DuplicateKeyError):
            coll.insert_one({"_id": dup})
    assert coll.count_documents(FILLER) == 33


def test_reads_by_a_one_field_index_follow_every_write(coll):
    coll.create_index("state")
    coll.insert_many([{"_id": i, "state": i % 4, "tid": i, "big": "x" * 100} for i in range(40)])
    want = lambda s: [i for i in range(40) if i % 4 == s]  # noqa: E731
    assert ids(coll.find({"state": 0})) == want(0)
    assert ids(coll.find({"state": {"$in": [1, 3]}})) == sorted(want(1) + want(3))
    assert all(set(d) == {"_id", "tid"} for d in coll.find({"state": 2}, projection=["tid"]))
    coll.update_one({"_id": 5}, {"$set": {"state": 0}})
    coll.update_many({"state": 2}, {"$set": {"state": 9}})
    coll.insert_one({"_id": 40, "state": 0.0})  # 0.0 equals 0
    assert ids(coll.find({"state": 0})) == sorted(want(0) + [5, 40])
    assert ids(coll.find({"state": 2})) == []
    coll.delete_one({"_id": 0})
    coll.insert_one({"_id": 41, "state": [0, 7]})  # an array there: matched by element
    assert ids(coll.find({"state": 0})) == sorted([i for i in want(0) if i] + [5, 40, 41])
    assert ids(coll.find({"state": {"$in": [7]}})) == [41]
    assert ids(coll.find({"state": "0"})) == []
