"""MongoDB trial storage compatible with hyperopt's job protocol, on pymongo 4.

``MongoJobs``, ``MongoTrials`` and ``MongoWorker`` are drop-in replacements
for the classes of ``hyperopt.mongoexp`` (which call APIs pymongo 4 removed).
"""

from ._codec import decode, encode
from ._connection import RetryPolicy, open_client
from ._hyperopt_worker import (
    MongoCtrl,
    MongoWorker,
    PickleRefused,
    ReserveTimeout,
    Shutdown,
    WaitQuit,
    main_worker_helper,
)
from ._jobs import MongoJobs, OperationFailure, utcnow
from ._trials import MongoTrials
from ._url import MongoURL, as_mongo_str, parse_mongo_url, parse_url, redact

__all__ = [
    "MongoJobs", "MongoTrials", "MongoWorker", "MongoCtrl", "ReserveTimeout", "Shutdown", "WaitQuit",
    "OperationFailure", "PickleRefused", "main_worker_helper", "parse_url", "parse_mongo_url", "as_mongo_str",
    "redact", "MongoURL", "open_client", "RetryPolicy", "encode", "decode", "utcnow",
]
