"""The embedded MongoDB-wire-compatible server process (mongoeco over SQLite).

Real pymongo clients talk to it exactly as to ``mongod``: over a Unix socket
inside its database directory (``mongodb://%2F...%2Fserver.sock/mongotune``),
and over TCP only when asked (``--port``/``--host``, ``$MONGOTUNE_SERVER_PORT``).
One server owns one database directory, and keeps it private: the directory
is 0700 and every file the server or its clients write there is 0600,
whatever the umask, so no other local account can reach the socket or read
the database (the server also refuses a socket peer of another account, root
aside).  The directory holds:

* ``server.lock``    the server holds an exclusive ``flock`` on it for as long as
  it lives (the kernel drops it when the process dies, even by ``kill -9``);
* ``server.json``    written once the server listens: pid, socket, TCP host and
  port (when asked), start time, idle timeout.  A clean stop removes it; a
  crashed server leaves it behind, which is how clients tell "died" from "was
  stopped";
* ``server.sock``    the Unix socket.  A restarted server binds the same path,
  so clients reconnect with the URL they hold; nobody else can create a file
  there.  (Where the directory's path is too long for a socket address, the
  socket lives in ``$TMPDIR/mongotune-UID/``, a 0700 directory of ours,
  under a name derived from the database directory; see :func:`socket_path`.)
* ``clients.json``   the processes connected through the socket (pid, uid,
  connections), rewritten as they come and go: ``mongotune server status``;
* ``server.log``     the output of a background server; ``mongotune.sqlite*``
  the database.

This module is the server side: :func:`serve` runs one in the current process
(``mongotune server run``), ``python -m mongotune.store.embedded --daemon``
runs one detached from its caller.  Finding, starting and stopping the
per-user background server is :mod:`mongotune.store.local_server`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
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
SOCKET_FILE = "server.sock"
CLIENTS_FILE = "clients.json"
DEFAULT_PORT = 27117
DEFAULT_DB = "mongotune"
LOG_ROTATE_BYTES = 5 * 1024 * 1024
#: ``sun_path`` holds 108 bytes on Linux (104 on macOS), the last one a NUL
MAX_SOCKET_PATH = 103 if sys.platform == "darwin" else 107
#: ``clients.json`` is rewritten this long after a connection opens or closes (changes in between coalesce)
PEERS_PUBLISH_DELAY_S = 0.05


class ServerBusy(ConnectionFailure):
    """Another live server already holds the database directory."""


def url_for(port: int, host: str = "127.0.0.1", db: str = DEFAULT_DB) -> str:
    """The TCP URL of a server listening on ``host:port``."""
    return f"mongodb://{connect_host(host)}:{port}/{db}"


def socket_url(path: str | Path, db: str = DEFAULT_DB) -> str:
    """The URL of a server on the Unix socket ``path`` (pymongo's percent-encoded form)."""
    return f"mongodb://{urllib.parse.quote(str(path), safe='')}/{db}"


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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def resolve_dbpath(dbpath: str | Path | None = None) -> Path:
    return Path(dbpath or paths.embedded_db_dir()).expanduser().resolve()


# ---------------------------------------------------------------- a private directory
def private_dir(path: str | Path) -> Path:
    """``path`` as a directory that only this account can enter (0700), created (with its parents) if missing.

    An existing directory of ours is tightened to 0700; one that belongs to
    another account, or is not a directory (a symbolic link included), is a
    ConfigError: its owner could read or replace whatever we put there.
    """
    path = Path(path)
    missing, p = [], path
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
            os.chmod(d, 0o700)  # whatever the umask
        except FileExistsError:
            pass
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"cannot use {path} as the embedded server's directory: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path} is not a directory (the embedded server keeps its database in a directory of "
                          f"its own)")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"{path} belongs to another account (uid {st.st_uid}), which could read or replace the "
                          f"embedded server's files; use a directory of your own")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
        log.info("made %s private (mode 0700)", path)
    return path


def open_private(path: str | Path, flags: int = os.O_WRONLY | os.O_APPEND) -> int:
    """A file descriptor on ``path``, created 0600 if missing and made 0600 if it was looser."""
    fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return fd


def _write_json(path: Path, doc: dict) -> None:
    """Replace ``path`` atomically with ``doc`` (a 0600 file)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = open_private(tmp, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def _tighten(dbpath: Path) -> None:
    """Make every file of ours in ``dbpath`` 0600 (a database, log or lock left by an older version)."""
    me = os.geteuid()
    for entry in os.scandir(dbpath):
        try:
            st = entry.stat(follow_symlinks=False)
            if st.st_uid == me and (stat.S_ISREG(st.st_mode) or stat.S_ISSOCK(st.st_mode)) \
                    and stat.S_IMODE(st.st_mode) != 0o600:
                os.chmod(entry.path, 0o600)
        except OSError:
            pass


def socket_path(dbpath: str | Path) -> Path:
    """Where the server of ``dbpath`` listens: ``dbpath/server.sock``, or, when that path is too long for a
    socket address, ``$TMPDIR/mongotune-UID/<hash of dbpath>.sock`` (the same path every time, so a restarted
    server comes back where its clients expect it)."""
    dbpath = Path(dbpath)
    inside = dbpath / SOCKET_FILE
    if len(os.fsencode(str(inside))) <= MAX_SOCKET_PATH:
        return inside
    digest = hashlib.sha256(os.fsencode(str(dbpath))).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"mongotune-{os.geteuid()}" / f"{digest}.sock"


def _prepare_socket(path: Path) -> None:
    """Make ``path`` bindable: its directory private, a socket left by a crashed server removed."""
    if len(os.fsencode(str(path))) > MAX_SOCKET_PATH:
        raise ConfigError(f"the socket path {path} is longer than the {MAX_SOCKET_PATH} bytes a Unix socket "
                          f"allows; set $TMPDIR or $MONGOTUNE_HOME to a shorter directory")
    private_dir(path.parent)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path} is a directory; the embedded server needs that path for its socket")
    os.unlink(path)  # we hold the directory's lock: no live server of ours uses it


# ---------------------------------------------------------------- the lock and the state file
def lock_held(dbpath: Path) -> bool:
    """True while a live server holds ``dbpath``'s lock.

    Probes with a shared, non-blocking lock held for microseconds; a server
    that starts at that instant retries its own exclusive lock (see serve).
    """
    try:
        fd = os.open(dbpath / LOCK_FILE, os.O_RDONLY)
    except (FileNotFoundError, PermissionError):
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
    ok = isinstance(state, dict) and "pid" in state and (state.get("socket") or state.get("port"))
    return state if ok else None


def read_state(dbpath: str | Path) -> dict | None:
    """The live server's state (``pid``, ``socket``, ``host``, ``port``, ...), or None if none holds the lock."""
    dbpath = Path(dbpath)
    if not lock_held(dbpath):
        return None
    return read_state_file(dbpath)


def _take_lock(dbpath: Path, wait_s: float = 2.0) -> int:
    """Open and exclusively lock ``server.lock``; ServerBusy if a server holds it."""
    fd = open_private(dbpath / LOCK_FILE)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            # clients probe with a shared lock for microseconds; a server holds it for good
            if time.monotonic() >= deadline:
                os.close(fd)
                state = read_state_file(dbpath) or {}
                raise ServerBusy(f"another server (pid {state.get('pid', '?')}, socket "
                                 f"{state.get('socket', '?')}) already serves {dbpath}") from None
            time.sleep(0.02)


def _remove_state(dbpath: Path) -> None:
    for name in (STATE_FILE, CLIENTS_FILE):
        try:
            (dbpath / name).unlink()
        except OSError:
            pass


# ---------------------------------------------------------------- the listeners
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _peer(writer) -> tuple[int | None, int | None]:
    """(pid, uid) of the process at the other end of a Unix socket connection; (None, None) if unknown."""
    sock = writer.get_extra_info("socket")
    option = getattr(socket, "SO_PEERCRED", None)
    if sock is None or option is None:
        return None, None
    try:
        pid, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, option, _PEERCRED.size))
    except OSError:
        return None, None
    return pid, uid


def _wire_server_class():
    from mongoeco.wire import AsyncMongoEcoProxyServer

    class UnixWireServer(AsyncMongoEcoProxyServer):
        """mongoeco's wire server on a Unix socket, serving only this account (and root).

        mongoeco listens on TCP only.  This adapter replaces the one method that
        opens its listener (``start``) and wraps the per-connection handler
        (``_handle_connection``, to check and record the peer); everything else,
        the protocol and the teardown of connections included, is mongoeco's.
        """

        def __init__(self, path: Path, on_peers: Callable[[dict], None], **kwargs):
            super().__init__(**kwargs)
            self.path = path
            self.peers: dict[int, tuple[int | None, int | None]] = {}
            self.refused = 0
            self._on_peers = on_peers
            self._publishing: asyncio.TimerHandle | None = None
            self._allowed = {os.geteuid(), 0}

        def _peers_changed(self) -> None:
            # coalesced, off the connection's path: a new client's first command does not wait for a file write
            if self._publishing is None:
                self._publishing = asyncio.get_running_loop().call_later(PEERS_PUBLISH_DELAY_S, self._publish)

        def _publish(self) -> None:
            self._publishing = None
            self._on_peers(self.peers)

        async def start(self) -> Path:
            if self._server is None:
                _prepare_socket(self.path)
                server = await asyncio.start_unix_server(self._accept_connection, path=str(self.path),
                                                         start_serving=False)
                os.chmod(self.path, 0o600)  # connecting needs write permission: ours alone
                self._server = server  # mongoeco's accept and close look here
                await server.start_serving()
            return self.path

        async def _handle_connection(self, reader, writer) -> None:
            pid, uid = _peer(writer)
            if uid is not None and uid not in self._allowed:
                self.refused += 1
                if self.refused & (self.refused - 1) == 0:  # the 1st, 2nd, 4th, 8th ...: a log that cannot flood
                    log.warning("refused a connection from uid %d (pid %s): this server serves only uid %d "
                                "(%d refused so far)", uid, pid, os.geteuid(), self.refused)
                writer.close()
                return
            key = id(writer)
            self.peers[key] = (pid, uid)
            self._peers_changed()
            try:
                await super()._handle_connection(reader, writer)
            finally:
                self.peers.pop(key, None)
                self._peers_changed()

    return UnixWireServer


def _publish_peers(dbpath: Path) -> Callable[[dict], None]:
    """A callback that rewrites ``clients.json`` with the socket's peers (one entry per process)."""
    me = os.getpid()

    def publish(peers: dict) -> None:
        counts: dict[tuple, int] = {}
        for who in peers.values():
            counts[who] = counts.get(who, 0) + 1
        clients = [{"pid": pid, "uid": uid, "connections": n} for (pid, uid), n in counts.items()]
        try:
            _write_json(dbpath / CLIENTS_FILE, {"server_pid": me, "clients": clients})
        except OSError as exc:  # `server status` then sees an older list; the server serves on
            log.warning("cannot write %s: %s", dbpath / CLIENTS_FILE, exc)

    return publish


async def _start_tcp(client, host: str, port: int, required: bool):
    """mongoeco's TCP listener on ``host:port`` sharing ``client``; (server, port, None) or, when it cannot
    listen and ``required`` is false, (None, None, why).  Never another port than the one asked."""
    from mongoeco.wire import AsyncMongoEcoProxyServer

    server = AsyncMongoEcoProxyServer(client=client, host=host or None, port=port, diagnostic_capacity=1)
    try:
        address = await server.start()
    except OSError as exc:
        why = (f"port {port} on {host} is already in use" if exc.errno == errno.EADDRINUSE
               else f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        if required:
            raise ConnectionFailure(why + ("; pick another with --port" if exc.errno == errno.EADDRINUSE
                                           else "")) from None
        log.warning("%s: serving on the Unix socket only; TCP clients cannot reach this server until it is "
                    "restarted on a port that is free (`mongotune server stop`, then `server start --port N`)", why)
        return None, None, why
    return server, address.port, None


@dataclass
class _Listeners:
    unix: object
    tcp: object | None
    tcp_port: int | None
    tcp_error: str | None

    def activity(self) -> tuple[int, int]:
        """(open client connections, events so far) over both listeners, from mongoeco's public diagnostics."""
        conns = events = 0
        for server in (self.unix, self.tcp):
            if server is not None:
                snap = server.diagnostics
                events += int(snap.get("dropped_events", 0)) + len(snap.get("events", ()))
                conns += int(snap.get("resources", {}).get("connections", 0))
        return conns, events


async def _open_listeners(dbpath: Path, tcp: tuple[str, int] | None, tcp_required: bool,
                          stack: contextlib.AsyncExitStack) -> _Listeners:
    """The database, its Unix socket listener and (when ``tcp``) a TCP one; all closed with ``stack``."""
    from mongoeco.api import AsyncMongoClient

    from .embedded_engine import FlatCostSQLiteEngine

    client = await stack.enter_async_context(AsyncMongoClient(FlatCostSQLiteEngine(str(dbpath / DB_FILE))))
    # capacity 1: the smallest ring that keeps mongoeco's connection count and event total current
    unix = _wire_server_class()(socket_path(dbpath), _publish_peers(dbpath), client=client, diagnostic_capacity=1)
    stack.push_async_callback(unix.close)
    await unix.start()
    server = port = error = None
    if tcp is not None:
        server, port, error = await _start_tcp(client, tcp[0], tcp[1], tcp_required)
        if server is not None:
            stack.push_async_callback(server.close)
    return _Listeners(unix, server, port, error)


def _state(dbpath: Path, listeners: _Listeners, tcp: tuple[str, int] | None, idle_timeout: float | None,
           mode: str) -> dict:
    started = time.time()
    path = listeners.unix.path
    state = {"pid": os.getpid(), "socket": str(path), "url": socket_url(path), "host": None, "port": None,
             "tcp_url": None, "dbpath": str(dbpath), "started_at": started,
             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
             "idle_timeout": idle_timeout, "mode": mode, "log": str(dbpath / LOG_FILE)}
    if tcp is not None:
        state["host"] = tcp[0]  # kept when listening failed: a restart tries the same address again
        state["port"] = listeners.tcp_port if listeners.tcp is not None else tcp[1]
        if listeners.tcp is not None:
            state["tcp_url"] = url_for(listeners.tcp_port, tcp[0])
        else:
            state["tcp_error"] = listeners.tcp_error
    return state


async def _serve(dbpath: Path, tcp: tuple[str, int] | None, *, tcp_required: bool, idle_timeout: float | None,
                 mode: str, on_ready: Callable[[dict], None] | None) -> str:
    reason = {"why": "stopped"}
    async with contextlib.AsyncExitStack() as stack:
        listeners = await _open_listeners(dbpath, tcp, tcp_required, stack)
        state = _state(dbpath, listeners, tcp, idle_timeout, mode)
        try:
            _write_json(dbpath / STATE_FILE, state)
            _publish_peers(dbpath)({})
            where = state["socket"] + (f" and {state['tcp_url']}" if state.get("tcp_url") else "")
            log.info("embedded MongoDB-compatible server on %s (data in %s, pid %d, %s)", where, dbpath,
                     os.getpid(), f"stops after {idle_timeout:g}s without clients" if idle_timeout else "no idle stop")
            if state.get("tcp_url"):
                log.warning("listening on TCP %s:%s without authentication: whoever can connect to it can read "
                            "and change every study", state["host"], state["port"])
            await _until_stopped(listeners, idle_timeout, reason, lambda: on_ready and on_ready(state))
        finally:
            # the state file goes first: a client that sees the lock without it waits for the lock to go
            current = read_state_file(dbpath)
            if current is None or current.get("pid") == os.getpid():
                _remove_state(dbpath)
    log.info("embedded server (pid %d) stopped (%s)", os.getpid(), reason["why"])
    return reason["why"]


async def _until_stopped(listeners: _Listeners, idle_timeout: float | None, reason: dict,
                         ready: Callable[[], None]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signame):
        reason["why"] = signame
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    idle_task = asyncio.create_task(_idle_watch(listeners, idle_timeout, stop, reason)) if idle_timeout else None
    try:
        ready()
        await stop.wait()
    finally:
        if idle_task is not None:
            idle_task.cancel()


async def _idle_watch(listeners: _Listeners, idle_timeout: float, stop: asyncio.Event, reason: dict) -> None:
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
        conns, events = listeners.activity()
        now = time.monotonic()
        if conns > 0 or events != last_events:
            quiet_since = now
            last_events = events
        elif now - quiet_since >= idle_timeout:
            reason["why"] = f"idle for {now - quiet_since:.0f}s with no client"
            stop.set()


def serve(dbpath: str | Path | None = None, port: int | None = None, host: str = "127.0.0.1", *,
          tcp_required: bool = True, idle_timeout: float | None = None, mode: str = "foreground",
          on_ready: Callable[[dict], None] | None = None) -> str:
    """Serve ``dbpath`` until SIGTERM/SIGINT or ``idle_timeout`` s without clients; returns why it stopped.

    Always on the Unix socket :func:`socket_path`; also on TCP ``host:port``
    when ``port`` is given (0 = any free port).  Everything it creates is
    private (it runs under umask 077 and tightens what an older version left).
    Raises ServerBusy if another server holds the directory, ConfigError for a
    directory of another account or a bad port, ConnectionFailure if the TCP
    port is taken (unless ``tcp_required`` is false: then it serves on the
    socket alone, logs why and says so in ``server.json``; it never moves to
    another port).
    """
    if port is not None:
        check_port(port)
    dbpath = private_dir(resolve_dbpath(dbpath))
    old_umask = os.umask(0o077)
    try:
        lock_fd = _take_lock(dbpath)
        try:
            # from here on server.json is ours or absent: drop what a crashed predecessor left
            _remove_state(dbpath)
            _tighten(dbpath)
            tcp = None if port is None else (host, port)
            return asyncio.run(_serve(dbpath, tcp, tcp_required=tcp_required, idle_timeout=idle_timeout,
                                      mode=mode, on_ready=on_ready))
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)
    finally:
        os.umask(old_umask)


# ---------------------------------------------------------------- a server as a child process
@dataclass
class EmbeddedServer:
    """A handle on a server process; ``stop()`` only stops what we started.

    ``url`` reaches it through its private socket; ``tcp_url`` through TCP, when it listens there.
    """

    dbpath: Path
    port: int | None
    host: str | None = "127.0.0.1"
    process: subprocess.Popen | None = None
    socket: Path | None = None

    @property
    def url(self) -> str:
        return socket_url(self.socket) if self.socket else self.tcp_url

    @property
    def tcp_url(self) -> str | None:
        return url_for(self.port, self.host or "127.0.0.1") if self.port else None

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


def _server_command(dbpath: Path, port: int | None, host: str, wfd: int, *, daemon: bool, tcp_required: bool,
                    idle_timeout: float | None) -> list[str]:
    cmd = [sys.executable, "-m", "mongotune.store.embedded", "--dbpath", str(dbpath), "--host", host,
           "--ready-fd", str(wfd), "--mode", "background" if daemon else "child"]
    if port is not None:
        cmd += ["--port", str(port)]
    if daemon:
        cmd.append("--daemon")
    if not tcp_required:
        cmd.append("--tcp-optional")
    if idle_timeout:
        cmd += ["--idle-timeout", str(idle_timeout)]
    return cmd


def spawn(dbpath: Path, port: int | None, host: str = "127.0.0.1", *, daemon: bool, tcp_required: bool = True,
          idle_timeout: float | None = None, timeout: float = 60.0) -> tuple[dict, subprocess.Popen | None]:
    """Start ``python -m mongotune.store.embedded`` on ``dbpath`` and wait until it listens.

    It listens on its Unix socket, and on TCP ``host:port`` when ``port`` is
    not None.  With ``daemon`` the server forks away from the child we start
    (it is nobody's child, in its own session) and outlives us; otherwise the
    returned Popen is the server.  The server reports readiness, or why it
    could not start, on a pipe.  Returns (state, process or None).
    """
    private_dir(dbpath)
    log_path = dbpath / LOG_FILE
    _rotate_log(log_path)
    rfd, wfd = os.pipe()
    cmd = _server_command(dbpath, port, host, wfd, daemon=daemon, tcp_required=tcp_required,
                          idle_timeout=idle_timeout)
    env = os.environ.copy()
    # the server finds this very mongotune whatever the caller's working directory
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        out = open_private(log_path)
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, pass_fds=(wfd,), cwd=str(dbpath), env=env)
        finally:
            os.close(out)
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
        raise ConnectionFailure(f"embedded server did not start within {timeout:.0f}s"
                                + _last_line(log_path) + f" (log: {log_path})")
    if not reply.get("ok"):
        if not daemon:
            proc.wait()
        cls = ServerBusy if reply.get("busy") else (ConfigError if reply.get("config") else ConnectionFailure)
        raise cls(reply.get("error") or "embedded server failed to start")
    return reply["state"], (None if daemon else proc)


def _last_line(log_path: Path) -> str:
    try:
        lines = log_path.read_text(errors="replace")[-2000:].strip().splitlines()
    except OSError:
        return ""
    return f": {lines[-1]}" if lines else ""


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

    It listens on its private Unix socket (``.url``), and also on TCP
    ``host:port`` when ``port`` is given (``.tcp_url``; 0 = any free port).
    """
    dbpath = resolve_dbpath(dbpath)
    state, proc = spawn(dbpath, None if port is None else check_port(port), host, daemon=False, timeout=timeout)
    return EmbeddedServer(dbpath, state.get("port"), state.get("host"), proc, Path(state["socket"]))


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
    parser.add_argument("--port", type=int, default=None, help="also listen on TCP (0 = any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--idle-timeout", type=float, default=None)
    parser.add_argument("--tcp-optional", action="store_true", help="serve on the socket alone if the TCP port "
                        "is taken (a restart after a crash)")
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
              tcp_required=not args.tcp_optional, mode=args.mode,
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
