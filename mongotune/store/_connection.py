"""Opening MongoDB clients, and surviving a server that comes and goes."""

from __future__ import annotations

import functools
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import pymongo
import pymongo.errors

from ..errors import ConnectionFailure
from ._url import MongoURL, parse_mongo_url

log = logging.getLogger("mongotune.store")

T = TypeVar("T")

#: Errors after which the same operation may succeed once the server is back.
TRANSIENT_ERRORS = (
    pymongo.errors.AutoReconnect,  # includes NetworkTimeout
    pymongo.errors.ServerSelectionTimeoutError,
    pymongo.errors.ConnectionFailure,
    pymongo.errors.ExecutionTimeout,
)


def open_client(url: str | MongoURL, *, timeout_ms: int = 5000, check: bool = True):
    """Return ``(client, database, parsed_url)``.

    With ``check`` the server is pinged once so that a wrong host or port is
    reported now, as one line, rather than at the first query.
    """
    parsed = url if isinstance(url, MongoURL) else parse_mongo_url(url)
    try:
        client = pymongo.MongoClient(
            parsed.client_uri,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            w=1,
            appname="mongotune",
        )
    except pymongo.errors.ConfigurationError as exc:
        raise ConnectionFailure(f"bad MongoDB URL {parsed.redacted}: {exc}") from None
    if check:
        try:
            client.admin.command("ping")
        except pymongo.errors.OperationFailure as exc:
            client.close()
            raise ConnectionFailure(
                f"MongoDB at {parsed.redacted} refused us: {exc.details.get('errmsg', exc) if exc.details else exc}"
            ) from None
        except pymongo.errors.PyMongoError as exc:
            client.close()
            reason = str(exc).split(",")[0].split("Timeout:")[0].strip()
            raise ConnectionFailure(f"cannot reach MongoDB at {parsed.redacted}: {reason}") from None
    return client, client[parsed.database], parsed


@dataclass
class RetryPolicy:
    """Bounded retries with exponential backoff for transient server errors."""

    max_wait_s: float = 180.0
    first_delay_s: float = 0.25
    max_delay_s: float = 8.0

    def call(self, fn: Callable[[], T], what: str) -> T:
        deadline = time.monotonic() + self.max_wait_s
        delay = self.first_delay_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except TRANSIENT_ERRORS as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.error("MongoDB still unreachable during %s after %d attempts; giving up", what, attempt)
                    raise
                wait = min(delay, left) * (0.75 + 0.5 * random.random())
                log.warning(
                    "MongoDB unreachable during %s (%s); retry %d in %.1fs (%.0fs left)",
                    what, type(exc).__name__, attempt, wait, left,
                )
                time.sleep(wait)
                delay = min(delay * 2, self.max_delay_s)


DEFAULT_RETRY = RetryPolicy()


def retrying(what: str):
    """Decorate a method so transient errors are retried with ``self.retry``."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            policy = getattr(self, "retry", None) or DEFAULT_RETRY
            return policy.call(lambda: fn(self, *args, **kwargs), what)

        return wrapper

    return deco
