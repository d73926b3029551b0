"""The MongoDB side of mongotune.

* ``trialdoc``: the trial document (schema, transitions, queries); ``studies``:
  study documents; ``workers``: the worker registry; ``embedded`` and
  ``local_server``: the embedded MongoDB-wire-compatible server;
* ``MongoJobs``, ``MongoTrials``, ``MongoWorker``: drop-in replacements for
  the classes of ``hyperopt.mongoexp`` (which call APIs pymongo 4 removed);
* URL parsing and redaction, a NaN-safe codec, connections with retries.

The names below are imported on first use, so that a module of this package
that needs neither hyperopt nor pymongo (the embedded server, the URL
helpers) does not pay for them, and commands that only read studies never
import hyperopt.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "decode": "._codec", "encode": "._codec",
    "RetryPolicy": "._connection", "open_client": "._connection",
    "MongoCtrl": "._hyperopt_worker", "MongoWorker": "._hyperopt_worker", "PickleRefused": "._hyperopt_worker",
    "ReserveTimeout": "._hyperopt_worker", "Shutdown": "._hyperopt_worker", "WaitQuit": "._hyperopt_worker",
    "main_worker_helper": "._hyperopt_worker",
    "MongoJobs": "._jobs", "OperationFailure": "._jobs", "utcnow": "._jobs",
    "MongoTrials": "._trials",
    "MongoURL": "._url", "as_mongo_str": "._url", "parse_mongo_url": "._url", "parse_url": "._url",
    "redact": "._url",
}

__all__ = [
    "MongoJobs", "MongoTrials", "MongoWorker", "MongoCtrl", "ReserveTimeout", "Shutdown", "WaitQuit",
    "OperationFailure", "PickleRefused", "main_worker_helper", "parse_url", "parse_mongo_url", "as_mongo_str",
    "redact", "MongoURL", "open_client", "RetryPolicy", "encode", "decode", "utcnow",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
