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
        return redact(self.client_uri, self.password)

    def __repr__(self) -> str:
        return f"MongoURL({self.redacted!r})"


def _split_credentials(rest: str) -> tuple[str | None, str]:
    """``user:pw@hosts/path?query`` -> (``user:pw`` or None, ``hosts/path?query``).

    Host names cannot hold '@', so the credentials end at the *last* '@': a
    password with an unescaped '/', '#', '?', ':' or '@' (a common mistake) is
    taken whole, never split into a host, a path or options.  (An '@' in the
    options must be percent-encoded.)
    """
    at = rest.rfind("@")
    if at < 0:
        return None, rest
    return rest[:at], rest[at + 1:]


def redact(uri: str, password: str | None = None) -> str:
    """``uri`` with its password (if any) replaced by ``***``; safe for any characters in the password.

    ``password`` also scrubs that exact text (raw and percent-encoded) from
    anywhere in ``uri``, for messages that quote it elsewhere.
    """
    if not isinstance(uri, str):
        return uri
    text = uri
    scheme, sep, rest = uri.partition("://")
    if sep:
        userinfo, hostpart = _split_credentials(rest)
        if userinfo is not None:
            user, colon, _ = userinfo.partition(":")
            text = f"{scheme}{sep}{user}{':***' if colon else ''}@{hostpart}"
    else:
        # not a URL: whatever precedes an '@' may be credentials
        _, at, tail = uri.rpartition("@")
        text = f"***@{tail}" if at else uri
    return scrub(text, password)


def scrub(text: str, password: str | None) -> str:
    """Remove ``password`` (raw, and percent-encoded) from ``text``."""
    if password:
        for form in {password, urllib.parse.quote(password, safe=""), urllib.parse.quote(password)}:
            text = text.replace(form, "***")
    return text


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


def _read_secret_file(path: str, what: str) -> str:
    try:
        with open(os.path.expanduser(path)) as fh:
            return fh.read().rstrip("\n")
    except OSError as exc:
        raise ConnectionFailure(f"cannot read {what} file {path}: {exc.strerror}") from None


def url_from_env(default: str | None = None) -> str | None:
    """The URL in ``$MONGOTUNE_MONGO``, or in the file ``$MONGOTUNE_MONGO_FILE``, else ``default``.

    A file (mode 0600) keeps a URL with a password out of every command line
    and environment listing; ``launch --workers`` hands its URL to the workers
    it starts this way.
    """
    if os.environ.get("MONGOTUNE_MONGO"):
        return os.environ["MONGOTUNE_MONGO"]
    if os.environ.get("MONGOTUNE_MONGO_FILE"):
        return _read_secret_file(os.environ["MONGOTUNE_MONGO_FILE"], "MongoDB URL") or default
    return default


_NOT_IN_HOSTS = frozenset(' []{}<>"\'\\|^`')


def _check_host(host: str, safe: str, pw: str | None) -> None:
    """``host[:port]``, ``[IPv6][:port]`` or a percent-encoded socket path; ConnectionFailure otherwise."""
    import ipaddress

    if host.startswith("["):
        end = host.find("]")
        address = host[1:end].split("%", 1)[0] if end > 0 else ""
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            raise ConnectionFailure(f"bad MongoDB URL {safe}: {scrub(host, pw)!r} is not an [IPv6] address") from None
        if host[end + 1:] and not host[end + 1:].startswith(":"):
            raise ConnectionFailure(f"bad MongoDB URL {safe}: bad host {scrub(host, pw)!r}")
        return
    name = host.rsplit(":", 1)[0]
    if not name or any(c in _NOT_IN_HOSTS or c.isspace() for c in name):
        raise ConnectionFailure(f"bad MongoDB URL {safe}: bad host {scrub(host, pw)!r}")


def parse_mongo_url(url: str, pwfile: str | None = None) -> MongoURL:
    """Parse either URL form; raise ``ConnectionFailure`` with one clear line (never the password).

    A URL with a user and no password takes it from ``pwfile``, then from the
    file named by ``$MONGOTUNE_MONGO_PASSWORD_FILE``, then from
    ``$MONGOTUNE_MONGO_PASSWORD``: all three keep it out of command lines.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConnectionFailure(
            f"bad MongoDB URL {redact(url) if isinstance(url, str) else type(url).__name__}: "
            "expected mongodb://host:port/db or mongo://host:port/db/jobs"
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("mongo", "mongodb", "mongodb+srv"):
        raise ConnectionFailure(
            f"bad MongoDB URL {redact(url)}: unknown scheme {scheme!r} (use mongodb:// or mongo://)"
        )
    userinfo, rest = _split_credentials(url.split("://", 1)[1])
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    hostlist, path_query = rest[:cut], rest[cut:]
    path, _, query_s = path_query.lstrip("/").partition("?") if not path_query.startswith("?") else (
        "", "", path_query[1:])
    user = pw = None
    if userinfo is not None:
        u, colon, p = userinfo.partition(":")
        user = urllib.parse.unquote(u)
        pw = urllib.parse.unquote(p) if colon else None
    safe = redact(url, pw)
    if not hostlist:
        raise ConnectionFailure(f"bad MongoDB URL {safe}: no host")
    if user and pw is None:
        if pwfile:
            pw = _read_secret_file(pwfile, "password")
        elif os.environ.get("MONGOTUNE_MONGO_PASSWORD_FILE"):
            pw = _read_secret_file(os.environ["MONGOTUNE_MONGO_PASSWORD_FILE"], "password")
        elif os.environ.get("MONGOTUNE_MONGO_PASSWORD"):
            pw = os.environ["MONGOTUNE_MONGO_PASSWORD"]
    hosts = tuple(h for h in hostlist.split(",") if h)
    for h in hosts:
        _check_host(h, safe, pw)
        hp = h.rsplit(":", 1)
        if len(hp) == 2 and not h.endswith("]"):
            if not hp[1].isdigit() or not 0 < int(hp[1]) < 65536:
                raise ConnectionFailure(f"bad MongoDB URL {safe}: bad port in {scrub(h, pw)!r}")
    db, coll = _split_path(path, safe)
    query = urllib.parse.parse_qs(query_s, keep_blank_values=True)
    if scheme == "mongo" and user and "authSource" not in query:
        # hyperopt's convention: credentials live in the admin database.
        query["authSource"] = ["admin"]
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
