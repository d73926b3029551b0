"""The embedded MongoDB-wire-compatible server process (mongoeco over SQLite).

Real pymongo clients talk to it over TCP exactly as to ``mongod``.  One server
owns one database directory:

* ``server.lock``  the server holds an exclusive ``flock`` on it for as long as
  it lives (the kernel drops it when the process dies, even by ``kill -9``);
* ``server.json``  written once the port listens: pid, host, port, start
  time, idle timeout.  A clean stop removes it; a crashed server leaves it
  behind, which is how clients tell "died" from "was stopped";
* ``server.log``   the output of a background server.

This module is the server side: :func:`serve` runs one in the current process
(``mongotune server run``), ``python -m mongotune.store.embedded --daemon``
runs one detached from its caller.  Finding, starting and stopping the
per-user background server is :mod:`mongotune.store.local_server`.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import fcntl
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import paths
from ..errors import ConfigError, ConnectionFailure

log = logging.getLogger("mongotune.embedded")

DB_FILE = "mongotune.sqlite"
STATE_FILE = "server.json"
LOCK_FILE = "server.lock"
LOG_FILE = "server.log"
DEFAULT_PORT = 27117
DEFAULT_DB = "mongotune"
LOG_ROTATE_BYTES = 5 * 1024 * 1024


class ServerBusy(ConnectionFailure):
    """Another live server already holds the database directory."""


def url_for(port: int, host: str = "127.0.0.1", db: str = DEFAULT_DB) -> str:
    return f"mongodb://{connect_host(host)}:{port}/{db}"


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def check_port(port: int) -> int:
    """``port`` if it is a TCP port number (0 = any free port), else ConfigError."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError(f"port must be between 1 and 65535 (or 0 for any free port), got {port}")
    return port


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


def resolve_dbpath(dbpath: str | Path | None = None) -> Path:
    return Path(dbpath or paths.embedded_db_dir()).expanduser().resolve()


def lock_held(dbpath: Path) -> bool:
    """True while a live server holds ``dbpath``'s lock.

    Probes with a shared, non-blocking lock held for microseconds; a server
    that starts at that instant retries its own exclusive lock (see serve).
    """
    try:
        fd = os.open(dbpath / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our probe lock too
    return False


def read_state_file(dbpath: Path) -> dict | None:
    """``server.json`` as written, live or stale; None if absent or unreadable."""
    try:
        state = json.loads((Path(dbpath) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and "port" in state else None


def read_state(dbpath: str | Path) -> dict | None:
    """The live server's state (``pid``, ``host``, ``port``, ...), or None if none holds the lock."""
    dbpath = Path(dbpath)
    if not lock_held(dbpath):
        return None
    return read_state_file(dbpath)


def _take_lock(dbpath: Path, wait_s: float = 2.0):
    """Open and exclusively lock ``server.lock``; ServerBusy if a server holds it."""
    fh = open(dbpath / LOCK_FILE, "a+")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fh
        except BlockingIOError:
            # clients probe with a shared lock for microseconds; a server holds it for good
            if time.monotonic() >= deadline:
                fh.close()
                state = read_state_file(dbpath) or {}
                raise ServerBusy(
                    f"another server (pid {state.get('pid', '?')}, port {state.get('port', '?')}) "
                    f"already serves {dbpath}"
                ) from None
            time.sleep(0.02)


def _write_state(dbpath: Path, state: dict) -> None:
    tmp = dbpath / f"{STATE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, dbpath / STATE_FILE)


def _remove_state(dbpath: Path) -> None:
    try:
        (dbpath / STATE_FILE).unlink()
    except OSError:
        pass


def _activity(server) -> tuple[int, int]:
    """(open client connections, events so far) from mongoeco's public diagnostics."""
    snap = server.diagnostics
    events = int(snap.get("dropped_events", 0)) + len(snap.get("events", ()))
    return int(snap.get("resources", {}).get("connections", 0)), events


async def _start_proxy(dbpath: Path, host: str, port: int, port_fallback: bool):
    from mongoeco.engines.sqlite import SQLiteEngine
    from mongoeco.wire import AsyncMongoEcoProxyServer

    def make(p):
        # capacity 1: the smallest ring that keeps mongoeco's connection count and event total current
        return AsyncMongoEcoProxyServer(engine=SQLiteEngine(str(dbpath / DB_FILE)), host=host or None, port=p,
                                        diagnostic_capacity=1)

    server = make(port)
    try:
        return server, await server.start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or not port:
            raise ConnectionFailure(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        if not port_fallback:
            raise ConnectionFailure(f"port {port} on {host} is already in use; pick another with --port") from None
    log.info("port %d on %s is taken by another program; listening on a free port instead", port, host)
    server = make(0)
    return server, await server.start()


async def _serve(dbpath: Path, host: str, port: int, *, port_fallback: bool, idle_timeout: float | None,
                 mode: str, on_ready: Callable[[dict], None] | None) -> str:
    server, address = await _start_proxy(dbpath, host, port, port_fallback)
    started = time.time()
    state = {"pid": os.getpid(), "host": host, "port": address.port, "url": url_for(address.port, host),
             "dbpath": str(dbpath), "started_at": started,
             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
             "idle_timeout": idle_timeout, "mode": mode, "log": str(dbpath / LOG_FILE)}
    _write_state(dbpath, state)
    log.info("embedded MongoDB-compatible server on %s:%d (data in %s, pid %d, %s)", host, address.port, dbpath,
             os.getpid(), f"stops after {idle_timeout:g}s without clients" if idle_timeout else "no idle stop")
    stop = asyncio.Event()
    reason = {"why": "stopped"}
    loop = asyncio.get_running_loop()

    def on_signal(signame):
        reason["why"] = signame
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    idle_task = asyncio.create_task(_idle_watch(server, idle_timeout, stop, reason)) if idle_timeout else None
    try:
        if on_ready is not None:
            on_ready(state)
        await stop.wait()
    finally:
        if idle_task is not None:
            idle_task.cancel()
        # the state file goes first: a client that sees the lock without it waits for the lock to go
        current = read_state_file(dbpath)
        if current is None or current.get("pid") == os.getpid():
            _remove_state(dbpath)
        await server.close()
    log.info("embedded server on port %d stopped (%s)", address.port, reason["why"])
    return reason["why"]


async def _idle_watch(server, idle_timeout: float, stop: asyncio.Event, reason: dict) -> None:
    """Stop the server once no client has been connected, and nothing has happened, for ``idle_timeout`` s.

    Every mongotune process that uses the database (command, coordinator,
    worker, even one waiting for trials) holds pymongo's monitor connection
    for as long as it runs, and a running trial always has its worker
    connected (it heartbeats); so "no connection for N seconds" means nobody
    needs the server.  Any event (a connection opened and closed between two
    looks, such as a client's probe) restarts the clock.
    """
    interval = max(0.2, min(5.0, idle_timeout / 10))
    last_events = -1
    quiet_since = time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(interval)
        conns, events = _activity(server)
        now = time.monotonic()
        if conns > 0 or events != last_events:
            quiet_since = now
            last_events = events
        elif now - quiet_since >= idle_timeout:
            reason["why"] = f"idle for {now - quiet_since:.0f}s with no client"
            stop.set()


def serve(dbpath: str | Path | None = None, port: int = DEFAULT_PORT, host: str = "127.0.0.1", *,
          idle_timeout: float | None = None, port_fallback: bool = False, mode: str = "foreground",
          on_ready: Callable[[dict], None] | None = None) -> str:
    """Serve ``dbpath`` until SIGTERM/SIGINT or ``idle_timeout`` s without clients; returns why it stopped.

    Raises ServerBusy if another server holds the directory, ConnectionFailure
    if the port is taken (unless ``port_fallback``: then any free port),
    ConfigError for a port that is not one.
    """
    check_port(port)
    dbpath = resolve_dbpath(dbpath)
    dbpath.mkdir(parents=True, exist_ok=True)
    lock_fh = _take_lock(dbpath)
    try:
        # from here on server.json is ours or absent: drop what a crashed predecessor left
        _remove_state(dbpath)
        return asyncio.run(_serve(dbpath, host, port, port_fallback=port_fallback, idle_timeout=idle_timeout,
                                  mode=mode, on_ready=on_ready))
    finally:
        fcntl.flock(lock_fh, fcntl.LOCK_UN)
        lock_fh.close()


# ---------------------------------------------------------------- a server as a child process
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


def _rotate_log(log_path: Path) -> None:
    try:
        if log_path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(log_path, log_path.with_name(log_path.name + ".1"))
    except OSError:
        pass


def spawn(dbpath: Path, port: int, host: str = "127.0.0.1", *, daemon: bool, port_fallback: bool = False,
          idle_timeout: float | None = None, timeout: float = 60.0) -> tuple[dict, subprocess.Popen | None]:
    """Start ``python -m mongotune.store.embedded`` on ``dbpath`` and wait until it listens.

    With ``daemon`` the server forks away from the child we start (it is
    nobody's child, in its own session) and outlives us; otherwise the
    returned Popen is the server.  The server reports readiness, or why it
    could not start, on a pipe.  Returns (state, process or None).
    """
    dbpath.mkdir(parents=True, exist_ok=True)
    log_path = dbpath / LOG_FILE
    _rotate_log(log_path)
    rfd, wfd = os.pipe()
    cmd = [sys.executable, "-m", "mongotune.store.embedded", "--dbpath", str(dbpath), "--port", str(port),
           "--host", host, "--ready-fd", str(wfd), "--mode", "background" if daemon else "child"]
    if daemon:
        cmd.append("--daemon")
    if port_fallback:
        cmd.append("--port-fallback")
    if idle_timeout:
        cmd += ["--idle-timeout", str(idle_timeout)]
    env = os.environ.copy()
    # the server finds this very mongotune whatever the caller's working directory
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, pass_fds=(wfd,), cwd=str(dbpath), env=env)
    finally:
        os.close(wfd)
    try:
        reply = _read_ready(rfd, timeout)
    finally:
        os.close(rfd)
    if daemon:
        proc.wait()  # the intermediate exits right after its fork: reap it
    if reply is None:
        if not daemon and proc.poll() is None:
            proc.kill()
            proc.wait()
        tail = ""
        try:
            lines = log_path.read_text(errors="replace")[-2000:].strip().splitlines()
            tail = lines[-1] if lines else ""
        except OSError:
            pass
        raise ConnectionFailure(f"embedded server did not start within {timeout:.0f}s"
                                + (f": {tail}" if tail else "") + f" (log: {log_path})")
    if not reply.get("ok"):
        if not daemon:
            proc.wait()
        cls = ServerBusy if reply.get("busy") else (ConfigError if reply.get("config") else ConnectionFailure)
        raise cls(reply.get("error") or "embedded server failed to start")
    return reply["state"], (None if daemon else proc)


def _read_ready(rfd: int, timeout: float) -> dict | None:
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([rfd], [], [], left)
        if not ready:
            continue
        chunk = os.read(rfd, 65536)
        if not chunk:  # every writer gone without a word: the server died starting
            break
        buf += chunk
    try:
        return json.loads(buf.split(b"\n", 1)[0])
    except ValueError:
        return None


def start_server(dbpath: str | Path | None = None, port: int | None = None, host: str = "127.0.0.1",
                 timeout: float = 60.0) -> EmbeddedServer:
    """Start a server as our child process on ``dbpath`` (fails if one already runs there).

    ``port=None`` takes 27117, or a free port when that is taken; ``port=0`` any free port.
    """
    dbpath = resolve_dbpath(dbpath)
    if port is None:
        port = DEFAULT_PORT if _port_free(host, DEFAULT_PORT) else 0
    state, proc = spawn(dbpath, check_port(port), host, daemon=False, timeout=timeout)
    return EmbeddedServer(dbpath, state["port"], state["host"], proc)


def ensure_embedded(dbpath: str | Path | None = None) -> EmbeddedServer:
    """Compatibility: the per-user background server as a handle whose ``stop()`` does nothing.

    Use :func:`mongotune.store.local_server.embedded_url` instead.
    """
    from .local_server import ensure_server

    info, _ = ensure_server(dbpath)
    return EmbeddedServer(info.dbpath, info.port, info.host, None)


# ---------------------------------------------------------------- process entry point
def _reply(fd: int | None, message: dict) -> None:
    if fd is None:
        return
    try:
        os.write(fd, (json.dumps(message) + "\n").encode())
        os.close(fd)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mongotune's embedded MongoDB-wire-compatible server")
    parser.add_argument("--dbpath", default=None)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--idle-timeout", type=float, default=None)
    parser.add_argument("--port-fallback", action="store_true")
    parser.add_argument("--ready-fd", type=int, default=None)
    parser.add_argument("--mode", default="foreground")
    parser.add_argument("--daemon", action="store_true")
    args = parser.parse_args(argv)
    if args.daemon and os.fork() > 0:
        os._exit(0)  # the caller reaps this intermediate; the server below is nobody's child
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fd = args.ready_fd
    try:
        serve(args.dbpath, args.port, args.host, idle_timeout=args.idle_timeout or None,
              port_fallback=args.port_fallback, mode=args.mode,
              on_ready=lambda state: _reply(fd, {"ok": True, "state": state}))
    except ConnectionFailure as exc:
        _reply(fd, {"ok": False, "error": str(exc), "busy": isinstance(exc, ServerBusy)})
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        _reply(fd, {"ok": False, "error": str(exc), "config": True})
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
