"""The dashboard's only way to the database: a facade that can read and nothing else.

The dashboard's code never holds a ``pymongo`` database or collection: it gets
a ``ReadOnlyDatabase``, whose collections offer ``find``, ``find_one``,
``count_documents``, ``estimated_document_count`` and ``distinct`` and no
other method, and whose client answers only the ``hello`` and ``ping``
commands.  A write from dashboard code is therefore an ``AttributeError``,
not a change to the pool's data.  (With a real MongoDB, also give the
dashboard a user with the built-in ``read`` role; tests record every command
the dashboard sends over the wire and check that each is a read.)
"""

from __future__ import annotations

READ_METHODS = ("find", "find_one", "count_documents", "estimated_document_count", "distinct")
READ_COMMANDS = ("hello", "ping")


class ReadOnlyError(AttributeError):
    pass


class ReadOnlyCollection:
    __slots__ = ("_coll",)

    def __init__(self, coll):
        object.__setattr__(self, "_coll", coll)

    def __getattr__(self, name):
        if name in READ_METHODS:
            return getattr(self._coll, name)
        raise ReadOnlyError(f"the dashboard is read-only: collection method {name!r} is not available")

    def __setattr__(self, name, value):
        raise ReadOnlyError("the dashboard is read-only")

    @property
    def name(self) -> str:
        return self._coll.name


class _ReadOnlyAdmin:
    __slots__ = ("_admin",)

    def __init__(self, admin):
        object.__setattr__(self, "_admin", admin)

    def command(self, name, *args, **kwargs):
        if not isinstance(name, str) or name not in READ_COMMANDS:
            raise ReadOnlyError(f"the dashboard is read-only: command {name!r} is not available")
        return self._admin.command(name, *args, **kwargs)


class _ReadOnlyClient:
    __slots__ = ("admin",)

    def __init__(self, client):
        object.__setattr__(self, "admin", _ReadOnlyAdmin(client.admin))


class ReadOnlyDatabase:
    """``db.jobs`` / ``db["jobs"]`` give read-only collections; ``db.client.admin.command`` only hello/ping."""

    __slots__ = ("_db", "client")

    def __init__(self, db):
        object.__setattr__(self, "_db", db)
        object.__setattr__(self, "client", _ReadOnlyClient(db.client))

    def __getitem__(self, name: str) -> ReadOnlyCollection:
        return ReadOnlyCollection(self._db[name])

    def __getattr__(self, name: str) -> ReadOnlyCollection:
        if name.startswith("_"):
            raise AttributeError(name)
        return ReadOnlyCollection(self._db[name])

    def __setattr__(self, name, value):
        raise ReadOnlyError("the dashboard is read-only")

    @property
    def name(self) -> str:
        return self._db.name
