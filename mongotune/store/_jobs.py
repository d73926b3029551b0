"""``MongoJobs``: hyperopt's jobs-collection interface, on pymongo 4.

Same constructor, methods and document schema as ``hyperopt.mongoexp.MongoJobs``
(``tid, spec, result, misc, state, owner, book_time, refresh_time, exp_key,
version, _attachments``).  Differences a caller may notice:

* every write encodes non-finite floats and every read decodes them
  (see ``_codec``), so NaN losses survive the embedded server;
* transient connection errors are retried with backoff instead of failing;
* ``reserve`` takes the oldest queued job first (hyperopt took any).
"""

from __future__ import annotations

import copy
import datetime
import logging
import warnings

import gridfs
import pymongo
import pymongo.errors
from bson import ObjectId
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_ERROR, JOB_STATE_NEW, JOB_STATE_RUNNING

from ..errors import ConnectionFailure
from ._codec import decode, encode
from ._connection import RetryPolicy, open_client, retrying
from ._url import parse_mongo_url

log = logging.getLogger("mongotune.store")


class OperationFailure(Exception):
    """hyperopt's name for a failed database operation (kept for compatibility)."""


def utcnow() -> datetime.datetime:
    """Millisecond-precision naive UTC time, as hyperopt's ``coarse_utcnow``."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    return now.replace(microsecond=(now.microsecond // 1000) * 1000)


class MongoJobs:
    """Interface to a jobs collection structured as hyperopt expects."""

    def __init__(self, db, jobs, gfs, conn, tunnel, config_name, retry: RetryPolicy | None = None):
        self.db = db
        self.jobs = jobs
        self.gfs = gfs
        self.conn = conn
        self.tunnel = tunnel
        self.config_name = config_name
        self.retry = retry

    collection = property(lambda s: s.jobs)

    # ------------------------------------------------------------ construction
    @classmethod
    def alloc(cls, dbname, host="localhost", auth_dbname="admin", port=27017, jobs_coll="jobs",
              gfs_coll="fs", ssh=False, user=None, pw=None):
        if ssh:
            raise ConnectionFailure("ssh tunnels are not supported; open the tunnel yourself and connect to it")
        cred = ""
        if user:
            cred = user + (f":{pw}" if pw else "") + "@"
        url = f"mongodb://{cred}{host}:{port}/{dbname}/{jobs_coll}"
        if user:
            url += f"?authSource={auth_dbname or 'admin'}"
        return cls.new_from_connection_str(url, gfs_coll=gfs_coll)

    @classmethod
    def new_from_connection_str(cls, conn_str, gfs_coll="fs", config_name="spec", check=True):
        parsed = parse_mongo_url(conn_str)
        client, db, parsed = open_client(parsed, check=check)
        return cls(db, db[parsed.collection], gridfs.GridFS(db, collection=gfs_coll), client, None, config_name)

    # ------------------------------------------------------------ reading
    def __iter__(self):
        return (decode(d) for d in self.jobs.find())

    def __len__(self):
        try:
            return self.jobs.count_documents({})
        except pymongo.errors.PyMongoError:
            return 0

    def create_jobs_indexes(self):
        for k in ["exp_key", "result.loss", "book_time"]:
            self.db.jobs.create_index(k)
        self.db.jobs.create_index([("state", 1), ("exp_key", 1), ("tid", 1)])
        self.db.jobs.create_index("lease_token", sparse=True)

    def create_drivers_indexes(self):
        self.db.drivers.create_index("exp_key", unique=True)

    @retrying("create indexes")
    def create_indexes(self):
        self.create_jobs_indexes()
        self.create_drivers_indexes()

    def _find(self, query):
        return [decode(d) for d in self.jobs.find(filter=query)]

    def jobs_complete(self, cursor=False):
        return self.jobs.find(filter={"state": JOB_STATE_DONE}) if cursor else self._find({"state": JOB_STATE_DONE})

    def jobs_error(self, cursor=False):
        return self.jobs.find(filter={"state": JOB_STATE_ERROR}) if cursor else self._find({"state": JOB_STATE_ERROR})

    def jobs_running(self, cursor=False):
        if cursor:
            raise NotImplementedError()
        return [r for r in self._find({"state": JOB_STATE_RUNNING}) if not r.get("MIA", False)]

    def jobs_dead(self, cursor=False):
        if cursor:
            raise NotImplementedError()
        return [r for r in self._find({"state": JOB_STATE_RUNNING}) if r.get("MIA", False)]

    def jobs_queued(self, cursor=False):
        return self.jobs.find(filter={"state": JOB_STATE_NEW}) if cursor else self._find({"state": JOB_STATE_NEW})

    # ------------------------------------------------------------ writing
    def insert(self, job):
        """Insert a copy of ``job`` and return it with its ``_id``.

        Retries are safe: the ``_id`` is chosen before the first attempt, so
        an insert whose acknowledgement was lost is not inserted twice.
        """
        cpy = copy.deepcopy(job)
        cpy.setdefault("_id", ObjectId())
        stored = encode(cpy)
        fields = {k: v for k, v in stored.items() if k != "_id"}
        # An upsert on the _id alone stores the same document (MongoDB >= 5.0 validates the new
        # document as an insert) and, like the DuplicateKeyError branch below, leaves an existing
        # one alone.  The embedded server's insert command decodes every document of the
        # collection to check the new _id (28 ms per insert at 500 trials, growing with the
        # study); its upsert stays in SQL.  Top-level names an update would read as paths, or no
        # fields at all, still go through insert_one.
        as_upsert = bool(fields) and not any(k.startswith("$") or "." in k for k in fields)

        def attempt():
            try:
                if as_upsert:
                    self.jobs.update_one({"_id": stored["_id"]}, {"$setOnInsert": fields}, upsert=True)
                    return
                self.jobs.insert_one(stored)
            except pymongo.errors.DuplicateKeyError:
                if self.jobs.find_one({"_id": stored["_id"]}, projection=["_id"]) is None:
                    raise
            except pymongo.errors.OperationFailure as e:
                raise OperationFailure(e) from e

        (self.retry or _default_retry()).call(attempt, "insert job")
        return cpy

    def delete(self, job):
        try:
            self.jobs.delete_one({"_id": job["_id"]} if "_id" in job else job)
        except pymongo.errors.OperationFailure as e:
            raise OperationFailure(e) from e

    def delete_all(self, cond=None):
        cond = {} if cond is None else cond
        try:
            for d in self.jobs.find(filter=cond, projection=["_id", "_attachments"]):
                for name, file_id in d.get("_attachments", []):
                    try:
                        self.gfs.delete(file_id)
                    except gridfs.errors.NoFile:
                        log.error("failed to remove attachment %s:%s", name, file_id)
                self.jobs.delete_one({"_id": d["_id"]})
        except pymongo.errors.OperationFailure as e:
            raise OperationFailure(e) from e

    def delete_all_error_jobs(self):
        return self.delete_all(cond={"state": JOB_STATE_ERROR})

    def reserve(self, host_id, cond=None, exp_key=None, extra_set=None):
        """Atomically take the oldest queued job; return it, or None.

        ``extra_set`` adds fields to the same atomic update (mongotune's
        workers record their lease there).
        """
        now = utcnow()
        cond = {} if cond is None else copy.copy(cond)
        if exp_key is not None:
            cond["exp_key"] = exp_key
        if cond.get("owner") is not None:
            raise ValueError("refusing to reserve owned job")
        cond["owner"] = None
        cond["state"] = JOB_STATE_NEW
        update = {"owner": host_id, "book_time": now, "state": JOB_STATE_RUNNING, "refresh_time": now}
        if extra_set:
            update.update(encode(extra_set))
        change = {"$set": update, "$inc": {"version": 1}}
        after = pymongo.ReturnDocument.AFTER
        try:
            # Look, then take.  Look: the queued jobs, found by their state alone (there are
            # few), the rest of ``cond`` checked here when it is equalities or $exists, oldest
            # tid first.  Take: an atomic find_one_and_update of one of them by _id, still
            # conditional on NEW (a NEW job is always unowned: every write that makes a job NEW
            # clears its owner), so two workers never take the same job.  The same result as
            # one sorted find_one_and_update on ``cond``; on the embedded server, a sorted
            # filter decodes every document and each field in a filter costs full-collection
            # scans, so the filters here are as small as the atomicity allows.
            local, remote = _split_cond({k: v for k, v in cond.items() if k not in ("owner", "state")})
            for _ in range(3):
                rows = [d for d in self.jobs.find({"state": JOB_STATE_NEW, **remote},
                                                  projection=["tid", "owner", *local])
                        if d.get("owner") is None and _matches(d, local)]
                if not rows:
                    return None
                rows.sort(key=lambda d: (d.get("tid") is not None, d.get("tid") or 0))
                for q in rows[:4]:
                    doc = self.jobs.find_one_and_update({"_id": q["_id"], "state": JOB_STATE_NEW}, change,
                                                        return_document=after)
                    if doc is not None:
                        return decode(doc)
            # still losing races after 12 tries: take whatever is oldest in one step
            doc = self.jobs.find_one_and_update(cond, change, sort=[("tid", pymongo.ASCENDING)],
                                                return_document=after)
        except pymongo.errors.OperationFailure as e:
            log.error("Error during reserve_job: %s", e)
            return None
        return decode(doc) if doc is not None else None

    def refresh(self, doc):
        self.update(doc, dict(refresh_time=utcnow()))

    def update(self, doc, dct, collection=None, do_sanity_checks=True):
        """Set ``dct`` on ``doc`` in the database (version-guarded) and return ``doc``."""
        if collection is None:
            collection = self.collection
        dct = copy.deepcopy(dct)
        if "_id" not in doc:
            raise ValueError('doc must have an "_id" key to be updated')
        if "_id" in dct:
            if dct["_id"] != doc["_id"]:
                raise ValueError("cannot update the _id field")
            del dct["_id"]
        if "version" in dct and dct["version"] != doc["version"]:
            warnings.warn('Ignoring "version" field in update dictionary')
        if "version" in doc:
            query = dict(_id=doc["_id"], version=doc["version"])
            dct["version"] = doc["version"] + 1
        else:
            query = dict(_id=doc["_id"])
            dct["version"] = 1
        try:
            collection.update_one(query, {"$set": encode(dct)}, upsert=False)
        except pymongo.errors.OperationFailure as e:
            raise OperationFailure(e) from e
        doc.update(dct)
        if do_sanity_checks:
            if collection.find_one(dict(_id=doc["_id"], version=doc["version"]), projection=["_id"]) is None:
                raise OperationFailure("updated doc not found : %s" % str(doc))
        return doc

    # ------------------------------------------------------------ attachments
    def attachment_names(self, doc):
        return [str(a[0]) for a in doc.get("_attachments", [])]

    def set_attachment(self, doc, blob, name, collection=None):
        attachments = doc.get("_attachments", [])
        old = [a for a in attachments if a[0] == name]
        new_id = self.gfs.put(blob, filename="{}_{}".format(doc["_id"], name))
        new_attachments = [list(a) for a in attachments if a[0] != name] + [[name, new_id]]
        self.update(doc, {"_attachments": new_attachments}, collection=collection)
        for _, file_id in old:
            try:
                self.gfs.delete(file_id)
            except gridfs.errors.NoFile:
                log.warning("leak during set_attachment: old_file_id=%s", file_id)

    def get_attachment(self, doc, name):
        file_ids = [a[1] for a in doc.get("_attachments", []) if a[0] == name]
        if not file_ids:
            raise OperationFailure("Attachment not found: %s" % name)
        if len(file_ids) > 1:
            raise OperationFailure("multiple name matches", (name, file_ids))
        return self.gfs.get(file_ids[0]).read()

    def delete_attachment(self, doc, name, collection=None):
        attachments = list(doc.get("_attachments", []))
        for i, a in enumerate(attachments):
            if a[0] == name:
                file_id = a[1]
                del attachments[i]
                break
        else:
            raise OperationFailure("Attachment not found: %s" % name)
        self.update(doc, {"_attachments": attachments}, collection=collection)
        self.gfs.delete(file_id)


def _split_cond(cond: dict) -> tuple[dict, dict]:
    """``cond`` as (what ``_matches`` checks: top-level equalities to a scalar, and $exists;
    the rest, for the server)."""
    local, remote = {}, {}
    for key, want in cond.items():
        scalar = want is None or isinstance(want, (str, int, float))
        exists = isinstance(want, dict) and set(want) == {"$exists"}
        plain_key = "." not in key and not key.startswith("$")
        (local if plain_key and (scalar or exists) else remote)[key] = want
    return local, remote


def _matches(doc: dict, local: dict) -> bool:
    """MongoDB's answer to ``local`` (from ``_split_cond``) for ``doc``."""
    for key, want in local.items():
        if isinstance(want, dict):
            if (key in doc) != bool(want["$exists"]):
                return False
            continue
        have = doc.get(key)
        values = have if isinstance(have, list) else [have]  # a scalar equals an array that holds it
        if not any(v == want and isinstance(v, bool) == isinstance(want, bool) for v in values):
            return False
    return True


def _default_retry():
    from ._connection import DEFAULT_RETRY

    return DEFAULT_RETRY
