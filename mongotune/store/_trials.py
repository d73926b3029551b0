"""``MongoTrials``: a hyperopt ``Trials`` whose documents live in MongoDB.

Drop-in for ``hyperopt.mongoexp.MongoTrials`` (same constructor and methods)
with three mongotune options:

* ``pickle_domain=False`` stops ``fmin`` from pickling the objective (and any
  data it captured) into GridFS: mongotune's workers rebuild the objective
  from the study document instead.
* ``on_poll``: a callable run (throttled) whenever ``fmin`` polls the queue;
  the coordinator uses it to requeue trials whose worker stopped heart-beating,
  so ``fmin`` never waits forever for a dead worker.
* ``retry``: the backoff policy for transient server errors.
"""

from __future__ import annotations

import time

import gridfs
import pymongo
from hyperopt.base import JOB_STATE_ERROR, JOB_STATES, Trials

from ._codec import decode
from ._connection import RetryPolicy, retrying
from ._jobs import MongoJobs, OperationFailure

DOMAIN_ATTACHMENT = "FMinIter_Domain"


class MongoTrials(Trials):
    asynchronous = True

    def __init__(self, arg, exp_key=None, cmd=None, workdir=None, refresh=True, *,
                 pickle_domain=True, on_poll=None, poll_every_s=1.0, retry: RetryPolicy | None = None):
        if isinstance(arg, MongoJobs):
            self.handle = arg
        else:
            self.handle = MongoJobs.new_from_connection_str(arg)
        self.retry = retry or self.handle.retry
        if retry is not None:
            self.handle.retry = retry
        self.pickle_domain = pickle_domain
        self.on_poll = on_poll
        self.poll_every_s = poll_every_s
        self._last_poll = 0.0
        self.handle.create_indexes()
        self._exp_key = exp_key
        self.cmd = cmd
        self.workdir = workdir
        self._by_id: dict = {}
        if refresh:
            self.refresh()

    def view(self, exp_key=None, cmd=None, workdir=None, refresh=True):
        return self.__class__(
            self.handle,
            exp_key=self._exp_key if exp_key is None else exp_key,
            cmd=self.cmd if cmd is None else cmd,
            workdir=self.workdir if workdir is None else workdir,
            refresh=refresh,
            pickle_domain=self.pickle_domain,
            on_poll=self.on_poll,
            retry=self.retry,
        )

    # ------------------------------------------------------------ syncing
    def _query(self):
        query = {"exp_key": self._exp_key} if self._exp_key is not None else {}
        # every state but error, spelled as $in: the same set as {"$ne": JOB_STATE_ERROR} for
        # hyperopt's documents, and one the embedded server answers from its index
        query["state"] = {"$in": [s for s in JOB_STATES if s != JOB_STATE_ERROR]}
        return query

    @retrying("refresh trials")
    def refresh_tids(self, tids):
        """Bring local documents up to date with the database.

        Only documents whose ``version`` changed are downloaded again, so a
        poll of a 1000-trial study costs one small projection query.
        """
        query = self._query()
        if tids is not None:
            query["tid"] = {"$in": list(tids)}
        remote = {d["_id"]: d for d in self.handle.jobs.find(query, projection=["version", "tid"])}
        local = self._by_id if tids is None else {k: v for k, v in self._by_id.items() if v["tid"] in set(tids)}
        stale = {i: d.get("tid") for i, d in remote.items()
                 if i not in local or local[i].get("version", 0) != d.get("version", 0)}
        self._download(stale, query)
        for i in list(local):
            if i not in remote:
                self._by_id.pop(i, None)
        self._publish()

    _FETCH_CHUNK = 200  # ids per $in (the embedded server rejects ~500 and more)
    _FETCH_ONE_BY_ONE = 8  # up to this many stale documents are read one find_one({_id}) each

    def _download(self, stale: dict, query) -> None:
        """Fetch the documents ``stale`` names (``_id`` -> ``tid``) that still match ``query``;
        those that no longer match leave the local view.

        A few (the usual case: the trials that changed since the last poll) are read one
        ``find_one({"_id": ...})`` each, more by lists of ``tid`` (or ``_id`` for documents
        without one) alone; ``query`` (``_query()``'s study and states) is checked here.  The
        embedded server reads a single document by ``_id`` from its primary key, while it
        answers any other filter by parsing every stored document, after three
        full-collection type probes per filter field.
        """
        ids = list(stale)
        if len(ids) <= self._FETCH_ONE_BY_ONE:
            for i in ids:
                doc = self.handle.jobs.find_one({"_id": i})
                if doc is not None and self._matches(doc, query):
                    self._by_id[i] = decode(doc)
                else:  # deleted, or moved to the error state (which refresh leaves out)
                    self._by_id.pop(i, None)
            return
        for start in range(0, len(ids), self._FETCH_CHUNK):
            chunk = set(ids[start:start + self._FETCH_CHUNK])
            found = set()
            tids = list({stale[i] for i in chunk if stale[i] is not None})
            no_tid = [i for i in chunk if stale[i] is None]  # not hyperopt's documents: by _id
            queries = ([{"tid": {"$in": tids}}] if tids else []) + ([{"_id": {"$in": no_tid}}] if no_tid else [])
            for q in queries:
                for doc in self.handle.jobs.find(q):
                    if doc["_id"] in chunk and self._matches(doc, query):
                        self._by_id[doc["_id"]] = decode(doc)
                        found.add(doc["_id"])
            for i in chunk - found:  # deleted, or moved to the error state (which refresh leaves out)
                self._by_id.pop(i, None)

    @staticmethod
    def _matches(doc: dict, query: dict) -> bool:
        """``doc`` against a filter of ``_query()``'s shape (equalities and ``$in`` lists)."""
        for key, want in query.items():
            have = doc.get(key)
            if isinstance(want, dict) and "$in" in want:
                if have not in want["$in"]:
                    return False
            elif have != want:
                return False
        return True

    def _publish(self) -> None:
        """Expose the local documents, in insertion order, as hyperopt's Trials lists."""
        docs = sorted(self._by_id.values(), key=lambda d: d["_id"])
        self._trials = docs
        self._specs = [d["spec"] for d in docs]
        self._results = [d["result"] for d in docs]
        self._miscs = [d["misc"] for d in docs]

    def refresh(self):
        self.refresh_tids(None)

    def _insert_trial_docs(self, docs):
        return [self.handle.insert(doc) for doc in docs]

    def _maybe_poll(self):
        if self.on_poll is None:
            return
        now = time.monotonic()
        if now - self._last_poll >= self.poll_every_s:
            self._last_poll = now
            self.on_poll(self)

    @retrying("count trials")
    def count_by_state_unsynced(self, arg):
        self._maybe_poll()
        if isinstance(arg, int):
            if arg not in JOB_STATES:
                raise ValueError("invalid state", arg)
            query = {"state": arg}
        else:
            states = list(arg)
            if not all(x in JOB_STATES for x in states):
                raise ValueError("invalid states", states)
            query = {"state": {"$in": states}}
        if self._exp_key is not None:
            query["exp_key"] = self._exp_key
        return self.handle.jobs.count_documents(query)

    def delete_all(self, cond=None):
        cond = {} if cond is None else dict(cond)
        if self._exp_key:
            cond["exp_key"] = self._exp_key
        self.handle.delete_all(cond)
        gfs = self.handle.gfs
        for filename in gfs.list():
            try:
                fdoc = gfs.get_last_version(filename=filename, **cond)
            except gridfs.errors.NoFile:
                continue
            gfs.delete(fdoc._id)
        self._by_id = {}
        self.refresh()

    @retrying("allocate trial ids")
    def new_trial_ids(self, n):
        """Reserve ``n`` ids, unique across the whole database (as hyperopt)."""
        doc = self.handle.db.job_ids.find_one_and_update(
            {"a": 0}, {"$inc": {"last_id": n}}, upsert=True, return_document=pymongo.ReturnDocument.AFTER
        )
        last = doc["last_id"]
        return list(range(last - n, last))

    # ------------------------------------------------------------ attachments
    def trial_attachments(self, trial):
        return _TrialAttachments(self.handle, trial)

    @property
    def attachments(self):
        query = {"exp_key": self._exp_key} if self._exp_key else {}
        return _StudyAttachments(self.handle.gfs, query, self.pickle_domain)


class _TrialAttachments:
    """Dictionary view of one trial's GridFS attachments."""

    def __init__(self, handle: MongoJobs, trial):
        self.handle = handle
        self.trial = trial

    def __contains__(self, name):
        return name in self.handle.attachment_names(doc=self.trial)

    def __len__(self):
        return len(self.handle.attachment_names(doc=self.trial))

    def __iter__(self):
        return iter(self.handle.attachment_names(doc=self.trial))

    def __getitem__(self, name):
        try:
            return self.handle.get_attachment(doc=self.trial, name=name)
        except OperationFailure:
            raise KeyError(name) from None

    def __setitem__(self, name, value):
        self.handle.set_attachment(doc=self.trial, blob=value, name=name, collection=self.handle.db.jobs)

    def __delitem__(self, name):
        raise NotImplementedError("delete trial_attachment")

    def keys(self):
        return list(self)

    def values(self):
        return [self[k] for k in self]

    def items(self):
        return [(k, self[k]) for k in self]


class _StudyAttachments:
    """Dictionary view of the attachments shared by an experiment (exp_key)."""

    def __init__(self, gfs, query, pickle_domain):
        self.gfs = gfs
        self.query = query
        self.pickle_domain = pickle_domain

    def __iter__(self):
        names = self.gfs.list()
        return iter([n for n in names if n in self] if self.query else names)

    def __contains__(self, name):
        return self.gfs.exists(filename=name, **self.query)

    def __getitem__(self, name):
        try:
            return self.gfs.get_version(filename=name, **self.query).read()
        except gridfs.errors.NoFile:
            raise KeyError(name) from None

    def __setitem__(self, name, value):
        if name == DOMAIN_ATTACHMENT and not self.pickle_domain:
            return  # mongotune workers never need the pickled objective
        if self.gfs.exists(filename=name, **self.query):
            self.gfs.delete(self.gfs.get_last_version(filename=name, **self.query)._id)
        self.gfs.put(value, filename=name, encoding="utf-8", **self.query)

    def __delitem__(self, name):
        self.gfs.delete(self.gfs.get_last_version(filename=name, **self.query)._id)
