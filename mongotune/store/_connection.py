"""Opening MongoDB clients, and surviving a server that comes and goes."""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import pymongo
import pymongo.errors
from pymongo.write_concern import WriteConcern

from ..errors import ConnectionFailure
from ._url import MongoURL, parse_mongo_url, scrub

log = logging.getLogger("mongotune.store")

T = TypeVar("T")

#: Errors after which the same operation may succeed once the server is back (or a new primary is elected).
TRANSIENT_ERRORS = (
    pymongo.errors.AutoReconnect,  # includes NetworkTimeout and NotPrimaryError
    pymongo.errors.ServerSelectionTimeoutError,
    pymongo.errors.ConnectionFailure,
    pymongo.errors.ExecutionTimeout,
    pymongo.errors.WTimeoutError,
)
#: Server error codes of a replica set changing primary or shutting down.
_TRANSIENT_CODES = {6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436}


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    if isinstance(exc, pymongo.errors.PyMongoError) and (
            exc.has_error_label("RetryableWriteError") or exc.has_error_label("TransientTransactionError")):
        return True
    return isinstance(exc, pymongo.errors.OperationFailure) and exc.code in _TRANSIENT_CODES


def _has_option(uri: str, name: str) -> bool:
    query = uri.partition("?")[2].lower()
    return any(part.split("=", 1)[0] == name.lower() for part in query.split("&") if part)


def open_client(url: str | MongoURL, *, timeout_ms: int = 5000, check: bool = True):
    """Return ``(client, database, parsed_url)``.

    Every option of the URL is honoured as given (write concern, read
    preference, TLS, replica set, ``directConnection``); a single seed of a
    replica set discovers the whole set.  Without a ``w`` in the URL, a
    replica set gets majority writes (so an acknowledged reservation or
    result survives a failover) and a standalone server its default.

    With ``check`` the server is pinged once so that a wrong host or port is
    reported now, as one line, rather than at the first query.
    """
    parsed = url if isinstance(url, MongoURL) else parse_mongo_url(url)
    options = {"appname": "mongotune"} if not _has_option(parsed.client_uri, "appname") else {}
    if not _has_option(parsed.client_uri, "serverSelectionTimeoutMS"):
        options["serverSelectionTimeoutMS"] = timeout_ms
    if not _has_option(parsed.client_uri, "connectTimeoutMS"):
        options["connectTimeoutMS"] = timeout_ms
    try:
        client = pymongo.MongoClient(parsed.client_uri, **options)
    except (pymongo.errors.ConfigurationError, ValueError, TypeError) as exc:
        raise ConnectionFailure(f"bad MongoDB URL {parsed.redacted}: {scrub(str(exc), parsed.password)}") from None
    db = client[parsed.database]
    if check:
        try:
            hello = client.admin.command("hello")
        except pymongo.errors.OperationFailure as exc:
            client.close()
            detail = exc.details.get("errmsg", exc) if exc.details else exc
            raise ConnectionFailure(f"MongoDB at {parsed.redacted} refused us: {scrub(str(detail), parsed.password)}") from None
        except pymongo.errors.PyMongoError as exc:
            client.close()
            reason = str(exc).split(",")[0].split("Timeout:")[0].strip()
            raise ConnectionFailure(f"cannot reach MongoDB at {parsed.redacted}: {scrub(reason, parsed.password)}") from None
        if hello.get("setName") and not _has_option(parsed.client_uri, "w"):
            db = client.get_database(parsed.database, write_concern=WriteConcern("majority"))
    return client, db, parsed


@dataclass
class RetryPolicy:
    """Retries with exponential backoff for transient server errors.

    ``max_wait_s=None`` retries for ever (workers and coordinators: an outage
    pauses them, it does not end them), logging a line at the first failure
    and then every ``log_every_s`` seconds.
    """

    max_wait_s: float | None = 180.0
    first_delay_s: float = 0.25
    max_delay_s: float = 8.0
    log_every_s: float = 30.0

    def call(self, fn: Callable[[], T], what: str) -> T:
        started = time.monotonic()
        deadline = None if self.max_wait_s is None else started + self.max_wait_s
        delay = self.first_delay_s
        attempt = 0
        last_log = -math.inf
        while True:
            attempt += 1
            try:
                result = fn()
            except Exception as exc:  # noqa: BLE001 - only transient errors are retried
                if not is_transient(exc):
                    raise
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    log.error("MongoDB still unreachable during %s after %d attempts; giving up", what, attempt)
                    raise
                left = math.inf if deadline is None else deadline - now
                wait = min(delay, left) * (0.75 + 0.5 * random.random())
                if now - last_log >= self.log_every_s:
                    last_log = now
                    more = "" if deadline is None else f", {left:.0f}s left"
                    log.warning("MongoDB unreachable during %s for %.0fs (%s); retrying every %.1fs%s",
                                what, now - started, type(exc).__name__, min(delay, self.max_delay_s), more)
                time.sleep(wait)
                delay = min(delay * 2, self.max_delay_s)
                continue
            if attempt > 1:
                log.info("MongoDB reachable again: %s went through after %.0fs", what, time.monotonic() - started)
            return result


DEFAULT_RETRY = RetryPolicy()
FOREVER = RetryPolicy(max_wait_s=None, max_delay_s=2.0)  # workers, coordinators: wait out any outage, retry every 2 s


def retrying(what: str):
    """Decorate a method so transient errors are retried with ``self.retry``."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            policy = getattr(self, "retry", None) or DEFAULT_RETRY
            return policy.call(lambda: fn(self, *args, **kwargs), what)

        return wrapper

    return deco
