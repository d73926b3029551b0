"""A MongoDB-wire server process that demands a password (mongoeco over SQLite, SCRAM auth).

mongotune's embedded server has no users; the tests that follow a password
(Slurm tasks, launch's workers, ``ps``) need one that refuses a wrong or
missing password, so that a pool which finishes its study proves the password
reached every worker.

    python authserver.py DBDIR USER    (password in $AUTH_SERVER_PASSWORD)

prints ``PORT <n>`` once it listens on 127.0.0.1, then serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


async def _serve(dbdir: Path, user: str, password: str) -> None:
    from mongoeco.engines.sqlite import SQLiteEngine
    from mongoeco.wire import AsyncMongoEcoProxyServer, WireAuthUser

    server = AsyncMongoEcoProxyServer(engine=SQLiteEngine(str(dbdir / "auth.sqlite")), host="127.0.0.1", port=0,
                                      auth_users=(WireAuthUser(user, password, source="admin"),))
    address = await server.start()
    print(f"PORT {address.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()


class AuthServer:
    """Start the server above as a child process; ``url(db)`` carries user and password."""

    def __init__(self, dbdir: Path, user: str, password: str):
        self.user, self.password = user, password
        dbdir.mkdir(parents=True, exist_ok=True)
        self.log = dbdir / "server.log"
        env = {**os.environ, "AUTH_SERVER_PASSWORD": password}
        self.proc = subprocess.Popen([sys.executable, __file__, str(dbdir), user], stdout=subprocess.PIPE,
                                     stderr=open(self.log, "ab"), stdin=subprocess.DEVNULL, env=env, text=True)
        deadline = time.monotonic() + 60
        line = ""
        while time.monotonic() < deadline and not line.startswith("PORT"):
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"auth server exited: {self.log.read_text()[-500:]}")
        self.port = int(line.split()[1])

    def url(self, db: str, password: str | None = None) -> str:
        pw = self.password if password is None else password
        # mongoeco answers SCRAM-SHA-256 (pymongo would fall back to SHA-1 without the hint)
        return f"mongodb://{self.user}:{pw}@127.0.0.1:{self.port}/{db}?authSource=admin&authMechanism=SCRAM-SHA-256"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    asyncio.run(_serve(Path(sys.argv[1]), sys.argv[2], os.environ["AUTH_SERVER_PASSWORD"]))
