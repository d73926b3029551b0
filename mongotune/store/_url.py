"""MongoDB connection URLs: hyperopt's ``mongo://`` form and standard URIs.

hyperopt names a jobs collection with ``mongo://[user[:pw]@]host:port/db/jobs``.
The standard form is ``mongodb://[user:pw@]host[:port][,host2...]/db?options``.
mongotune accepts both, plus ``mongodb+srv://``.  A trailing ``/collection``
after the database is allowed on either and names the jobs collection.

Passwords never leave this module in clear text through ``redacted``.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, field

from ..errors import ConnectionFailure

DEFAULT_DB = "mongotune"
DEFAULT_JOBS = "jobs"


@dataclass(frozen=True)
class MongoURL:
    """A parsed connection URL.

    ``client_uri`` is what pymongo is given; ``redacted`` is safe to log.
    """

    client_uri: str = field(repr=False)  # holds the password: never in repr
    database: str
    collection: str = DEFAULT_JOBS
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    hosts: tuple[str, ...] = ()

    @property
    def redacted(self) -> str:
        return redact(self.client_uri)


def redact(uri: str) -> str:
    """Replace the password of a URI (if any) with ``***``."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        # not a URL: whatever precedes an '@' may be credentials
        _, at, tail = uri.rpartition("@")
        return f"***@{tail}" if at else uri
    netloc, slash, tail = rest.partition("/")
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hosts}" if colon else f"{user}@{hosts}"
    return f"{scheme}{sep}{netloc}{slash}{tail}"


def _split_path(path: str, url: str) -> tuple[str, str]:
    parts = [p for p in path.split("/") if p]
    if len(parts) > 2:
        raise ConnectionFailure(f"bad MongoDB URL {redact(url)}: expected /database[/collection]")
    db = urllib.parse.unquote(parts[0]) if parts else DEFAULT_DB
    coll = urllib.parse.unquote(parts[1]) if len(parts) > 1 else DEFAULT_JOBS
    for ch in ' ."$':
        if ch in db:
            raise ConnectionFailure(f"bad MongoDB URL {redact(url)}: invalid database name {db!r}")
    return db, coll


def _with_defaults(query: dict[str, list[str]], n_hosts: int, srv: bool) -> dict[str, list[str]]:
    q = dict(query)
    lower = {k.lower() for k in q}
    # A single host without a replica-set name: talk to it directly, which is
    # what both a standalone mongod and the embedded server want.
    if n_hosts == 1 and not srv and "replicaset" not in lower and "directconnection" not in lower:
        q["directConnection"] = ["true"]
    return q


def parse_mongo_url(url: str, pwfile: str | None = None) -> MongoURL:
    """Parse either URL form; raise ``ConnectionFailure`` with one clear line."""
    if not isinstance(url, str) or "://" not in url:
        raise ConnectionFailure(
            f"bad MongoDB URL {redact(url) if isinstance(url, str) else url!r}: "
            "expected mongodb://host:port/db or mongo://host:port/db/jobs"
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("mongo", "mongodb", "mongodb+srv"):
        raise ConnectionFailure(
            f"bad MongoDB URL {redact(url)}: unknown scheme {scheme!r} (use mongodb:// or mongo://)"
        )
    rest = url.split("://", 1)[1]
    netloc, _, path_query = rest.partition("/")
    path, _, query_s = path_query.partition("?")
    if "?" in netloc:  # mongodb://host?opts with no path
        netloc, _, query_s = netloc.partition("?")
    userinfo, at, hostlist = netloc.rpartition("@")
    if not at:
        userinfo, hostlist = "", netloc
    if not hostlist:
        raise ConnectionFailure(f"bad MongoDB URL {redact(url)}: no host")
    user = pw = None
    if userinfo:
        u, colon, p = userinfo.partition(":")
        user = urllib.parse.unquote(u)
        pw = urllib.parse.unquote(p) if colon else None
    if user and pw is None and pwfile:
        with open(pwfile) as fh:
            pw = fh.read().rstrip("\n")
    if user and pw is None and os.environ.get("MONGOTUNE_MONGO_PASSWORD"):
        # keeps the password out of command lines, unit files and `ps`
        pw = os.environ["MONGOTUNE_MONGO_PASSWORD"]
    hosts = tuple(h for h in hostlist.split(",") if h)
    for h in hosts:
        hp = h.rsplit(":", 1)
        if len(hp) == 2 and not h.endswith("]"):
            if not hp[1].isdigit() or not 0 < int(hp[1]) < 65536:
                raise ConnectionFailure(f"bad MongoDB URL {redact(url)}: bad port in {h!r}")
    db, coll = _split_path(path, url)
    query = urllib.parse.parse_qs(query_s, keep_blank_values=True)
    if scheme == "mongo" and user and "authSource" not in query:
        # hyperopt's convention: credentials live in the admin database.
        query["authSource"] = ["admin"]
    query = _with_defaults(query, len(hosts), scheme == "mongodb+srv")
    client_scheme = "mongodb+srv" if scheme == "mongodb+srv" else "mongodb"
    cred = ""
    if user:
        cred = urllib.parse.quote(user, safe="")
        if pw is not None:
            cred += ":" + urllib.parse.quote(pw, safe="")
        cred += "@"
    qs = urllib.parse.urlencode([(k, v) for k, vals in query.items() for v in vals])
    client_uri = f"{client_scheme}://{cred}{','.join(hosts)}/{urllib.parse.quote(db)}"
    if qs:
        client_uri += "?" + qs
    return MongoURL(client_uri, db, coll, user, pw, hosts)


def parse_url(url: str, pwfile: str | None = None):
    """hyperopt.mongoexp.parse_url's 8-tuple, for drop-in compatibility.

    Returns ``(protocol, username, password, hostname, port, dbname,
    collection, authdbname)``.
    """
    protocol = url[: url.find(":")]
    parsed = urllib.parse.urlparse("ftp" + url[url.find(":"):])
    query = urllib.parse.parse_qs(parsed.query)
    auth_db = query["authSource"][-1] if query.get("authSource") else None
    try:
        _, dbname, collection = parsed.path.split("/")
    except ValueError:
        raise ConnectionFailure(f"bad MongoDB URL {redact(url)}: expected /db/collection") from None
    password = parsed.password
    if password is None and parsed.username is not None and pwfile:
        with open(pwfile) as fh:
            password = fh.read()[:-1]
    port = int(float(parsed.port)) if parsed.port is not None else 27017
    return (protocol, parsed.username, password, parsed.hostname, port, dbname, collection, auth_db)


def as_mongo_str(s: str) -> str:
    """hyperopt's helper: prefix ``mongo://`` unless a scheme is present."""
    if "://" in s:
        return s
    return "mongo://" + s


def url_from_env(default: str | None = None) -> str | None:
    """The URL in ``$MONGOTUNE_MONGO`` if set, else ``default``."""
    return os.environ.get("MONGOTUNE_MONGO") or default
