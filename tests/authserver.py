"""A MongoDB-wire server that requires a password (mongoeco with SCRAM users), for tests.

    PASSWORD=... python tests/authserver.py DBFILE USER     # prints its port, serves until killed

The embedded server mongotune ships runs without authentication; the tests
that check a password never leaks need a server that asks for one.
"""

from __future__ import annotations

import asyncio
import os
import sys


async def _serve(path: str, user: str, password: str) -> None:
    from mongoeco.engines.sqlite import SQLiteEngine
    from mongoeco.wire import AsyncMongoEcoProxyServer
    from mongoeco.wire.auth import WireAuthUser

    server = AsyncMongoEcoProxyServer(engine=SQLiteEngine(path), host="127.0.0.1", port=0,
                                      auth_users=(WireAuthUser(user, password, "admin"),))
    address = await server.start()
    print(address.port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1], sys.argv[2], os.environ["PASSWORD"]))
