"""The embedded MongoDB-wire-compatible server (mongoeco over SQLite).

Real pymongo clients talk to it over TCP exactly as to ``mongod``.  One
server owns one database directory: it holds an exclusive lock on
``server.lock`` there and advertises its port in ``server.json`` so that
every mongotune command pointed at the same directory finds and shares it.

Run it in the foreground with ``mongotune server`` (or ``python -m
mongotune.store.embedded``); ``ensure_embedded`` starts one in the background
when none is running and returns a handle that stops it again.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConnectionFailure
from .. import paths

log = logging.getLogger("mongotune.embedded")

DB_FILE = "mongotune.sqlite"
STATE_FILE = "server.json"
LOCK_FILE = "server.lock"
DEFAULT_PORT = 27117
DEFAULT_DB = "mongotune"


def url_for(port: int, host: str = "127.0.0.1", db: str = DEFAULT_DB) -> str:
    return f"mongodb://{host}:{port}/{db}"


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def read_state(dbpath: Path) -> dict | None:
    """The running server's ``{pid, port, host}``, or None if none holds the lock."""
    dbpath = Path(dbpath)
    lock = dbpath / LOCK_FILE
    if not lock.exists():
        return None
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: a server is alive
        else:
            fcntl.flock(fh, fcntl.LOCK_UN)
            return None
    try:
        return json.loads((dbpath / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


async def _serve(dbpath: Path, host: str, port: int, ready: asyncio.Event | None = None) -> None:
    from mongoeco.engines.sqlite import SQLiteEngine
    from mongoeco.wire import AsyncMongoEcoProxyServer

    server = AsyncMongoEcoProxyServer(engine=SQLiteEngine(str(dbpath / DB_FILE)), host=host, port=port)
    address = await server.start()
    state = {"pid": os.getpid(), "host": address.host, "port": address.port, "dbpath": str(dbpath)}
    tmp = dbpath / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, dbpath / STATE_FILE)
    log.info("embedded MongoDB-compatible server on %s:%d (data in %s)", address.host, address.port, dbpath)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        try:
            (dbpath / STATE_FILE).unlink()
        except OSError:
            pass
        await server.close()


def serve(dbpath: str | Path | None = None, port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> None:
    """Serve ``dbpath`` until SIGTERM/SIGINT.  Raises ConnectionFailure if taken."""
    dbpath = Path(dbpath or paths.embedded_db_dir()).expanduser().resolve()
    dbpath.mkdir(parents=True, exist_ok=True)
    lock_fh = open(dbpath / LOCK_FILE, "a+")
    try:
        fcntl.flock(lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        state = read_state(dbpath) or {}
        raise ConnectionFailure(
            f"another server (pid {state.get('pid', '?')}, port {state.get('port', '?')}) already serves {dbpath}"
        ) from None
    if port and not _port_free(host, port):
        raise ConnectionFailure(f"port {port} on {host} is already in use; pick another with --port")
    try:
        asyncio.run(_serve(dbpath, host, port))
    finally:
        fcntl.flock(lock_fh, fcntl.LOCK_UN)
        lock_fh.close()


@dataclass
class EmbeddedServer:
    """A handle on a server process; ``stop()`` only stops what we started."""

    dbpath: Path
    port: int
    host: str = "127.0.0.1"
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return url_for(self.port, self.host)

    @property
    def owned(self) -> bool:
        return self.process is not None

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _wait_ready(proc: subprocess.Popen, dbpath: Path, timeout: float, log_path: Path) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text()[-400:].strip().splitlines()
            raise ConnectionFailure(
                f"embedded server exited with code {proc.returncode}: {tail[-1] if tail else 'no output'}"
            )
        state = read_state(dbpath)
        if state and state.get("pid") == proc.pid:
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex((state["host"], state["port"])) == 0:
                    return state
        time.sleep(0.05)
    proc.kill()
    raise ConnectionFailure(f"embedded server did not start within {timeout:.0f}s (log: {log_path})")


def start_server(dbpath: str | Path | None = None, port: int | None = None, host: str = "127.0.0.1",
                 timeout: float = 60.0) -> EmbeddedServer:
    """Start a server process on ``dbpath`` (fails if one already runs there)."""
    dbpath = Path(dbpath or paths.embedded_db_dir()).expanduser().resolve()
    dbpath.mkdir(parents=True, exist_ok=True)
    if port is None:
        port = DEFAULT_PORT if _port_free(host, DEFAULT_PORT) else free_port(host)
    log_path = dbpath / "server.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mongotune.store.embedded", "--dbpath", str(dbpath), "--port", str(port),
             "--host", host],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    state = _wait_ready(proc, dbpath, timeout, log_path)
    return EmbeddedServer(dbpath, state["port"], state["host"], proc)


def ensure_embedded(dbpath: str | Path | None = None) -> EmbeddedServer:
    """The server already serving ``dbpath``, or a new one that we own."""
    dbpath = Path(dbpath or paths.embedded_db_dir()).expanduser().resolve()
    state = read_state(dbpath)
    if state:
        return EmbeddedServer(dbpath, state["port"], state["host"], None)
    return start_server(dbpath)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mongotune's embedded MongoDB-wire-compatible server")
    parser.add_argument("--dbpath", default=None)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve(args.dbpath, args.port, args.host)
    except ConnectionFailure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
