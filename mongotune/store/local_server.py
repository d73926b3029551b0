"""The per-user background server: found, started, kept alive and stopped.

Design (one server per database directory, ``$MONGOTUNE_HOME/db`` by default):

* **Private.**  The server listens on a Unix socket inside its 0700 database
  directory (see :mod:`mongotune.store.embedded`), so only this account (and
  root) can reach it; every file there is 0600.  It listens on TCP only when
  asked: ``mongotune server start --port N`` / ``--host H``, or
  ``$MONGOTUNE_SERVER_PORT``; then anyone who can reach that port can use it.
* **Started on first use.**  A command with no ``--mongo`` calls
  :func:`embedded_url`.  If a server holds the directory's lock, has written
  ``server.json`` and accepts a connection on its socket, that is the answer
  (a flock probe, a small file read and one connect: well under a
  millisecond).  Otherwise the command takes ``start.lock`` (an exclusive
  flock that serialises starters), looks again, and if there is still no
  server starts one detached: ``python -m mongotune.store.embedded --daemon``
  forks away from the command, runs in its own session and is nobody's child,
  so it outlives the command that started it.  Commands started at the same
  instant queue on ``start.lock``; the first starts the server and the others
  find it.
* **Never stopped under a client.**  No command stops the server when it
  ends.  The server stops itself after ``$MONGOTUNE_SERVER_IDLE`` seconds
  (default 3600; 0 = never) with no client connection; every mongotune
  process holds a connection for as long as it runs, and a running trial's
  worker is connected (it heartbeats).  ``mongotune server stop`` refuses
  while clients are connected unless forced.
* **Restarted if it died, where its clients expect it.**  A clean stop
  removes ``server.json``; a crash (``kill -9``) leaves it behind with the
  lock free.  Every long-running command on the embedded default (launch,
  resume, worker, ...) runs a keeper thread (:func:`embedded_session`) that
  looks once a second and restarts a crashed server; ``start.lock`` makes one
  of them do it.  The new server binds the same socket path, so clients ride
  the gap on their usual retries with the URL they hold.  A server that had
  a TCP port asks for that port again and never another: if someone else
  took it meanwhile, the server comes back on its socket alone and says so
  (log, ``server.json``, ``mongotune server status``).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError, ConnectionFailure, UserError
from . import embedded
from .embedded import (CLIENTS_FILE, DB_FILE, DEFAULT_PORT, ServerBusy, check_port, connect_host,
                       lock_held, private_dir, read_state_file, resolve_dbpath)

log = logging.getLogger("mongotune.embedded")

START_LOCK = "start.lock"
ENV_PORT = "MONGOTUNE_SERVER_PORT"
ENV_IDLE = "MONGOTUNE_SERVER_IDLE"
DEFAULT_IDLE_S = 3600.0
KEEPER_INTERVAL_S = 1.0


class ServerInUse(UserError):
    """``server stop`` without ``--force`` while clients are connected."""


@dataclass
class ServerInfo:
    """A live server as its ``server.json`` describes it.

    ``socket`` is its private Unix socket; ``host``/``port`` its TCP address
    when asked for one (``port`` set and ``tcp_error`` set: it could not
    listen there).
    """

    pid: int
    socket: str | None
    host: str | None
    port: int | None
    dbpath: Path
    started_at: float | None = None
    idle_timeout: float | None = None
    mode: str = "background"
    log: str | None = None
    tcp_error: str | None = None

    @classmethod
    def from_state(cls, state: dict, dbpath: Path) -> "ServerInfo":
        port = state.get("port")
        return cls(pid=int(state["pid"]), socket=state.get("socket"), host=state.get("host"),
                   port=None if port is None else int(port), dbpath=Path(state.get("dbpath") or dbpath),
                   started_at=state.get("started_at"), idle_timeout=state.get("idle_timeout"),
                   mode=state.get("mode") or "background", log=state.get("log"), tcp_error=state.get("tcp_error"))

    @property
    def tcp(self) -> bool:
        """True if it listens on TCP."""
        return self.port is not None and not self.tcp_error

    @property
    def tcp_url(self) -> str | None:
        return embedded.url_for(self.port, self.host or "127.0.0.1") if self.tcp else None

    @property
    def url(self) -> str:
        """What a local client uses: the private socket (a server of an older version: its TCP port)."""
        return embedded.socket_url(self.socket) if self.socket else self.tcp_url


@dataclass
class Client:
    """Connections to the server from one process (pid None: another host or an unknown peer)."""

    pid: int | None
    command: str
    addresses: list[str] = field(default_factory=list)
    uid: int | None = None


@dataclass
class ServerStatus:
    dbpath: Path
    running: bool
    info: ServerInfo | None = None
    db_bytes: int = 0
    clients: list[Client] | None = None  # None: could not be determined
    crashed: bool = False  # a server.json left behind by a server that died

    @property
    def connections(self) -> int | None:
        return None if self.clients is None else sum(len(c.addresses) for c in self.clients)


# ---------------------------------------------------------------- settings
def env_port() -> int | None:
    """``$MONGOTUNE_SERVER_PORT`` (0 = any free port), or None when unset: TCP only when asked."""
    raw = os.environ.get(ENV_PORT, "").strip()
    if not raw:
        return None
    try:
        return check_port(int(raw))
    except (ValueError, ConfigError):
        raise ConfigError(f"${ENV_PORT} must be a port number (1-65535, or 0 for any), got {raw!r}") from None


def default_port() -> int:
    """The TCP port when TCP is asked for without a port: ``$MONGOTUNE_SERVER_PORT``, else 27117."""
    port = env_port()
    return DEFAULT_PORT if port is None else port


def default_idle_timeout() -> float | None:
    """Seconds without clients before a background server stops itself; None = never."""
    raw = os.environ.get(ENV_IDLE, "").strip().lower()
    if not raw:
        return DEFAULT_IDLE_S
    if raw in ("never", "none", "off"):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"${ENV_IDLE} must be a number of seconds (0 = never), got {raw!r}") from None
    if value < 0 or value != value:
        raise ConfigError(f"${ENV_IDLE} must be a number of seconds (0 = never), got {raw!r}")
    return value or None


def is_loopback(host: str) -> bool:
    """True if ``host`` only accepts connections from this machine."""
    host = (host or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


# ---------------------------------------------------------------- finding
def _answers(info: ServerInfo, timeout: float = 1.0) -> bool:
    """True if the server accepts a connection where local clients reach it (its socket)."""
    try:
        if info.socket:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(info.socket)
            return True
        with socket.create_connection((connect_host(info.host or "").strip("[]"), info.port), timeout=timeout):
            return True
    except (OSError, TypeError):
        return False


def find_server(dbpath: str | Path | None = None) -> ServerInfo | None:
    """The live server of ``dbpath`` if it holds the lock, has advertised itself and accepts connections."""
    dbpath = resolve_dbpath(dbpath)
    if not lock_held(dbpath):
        return None
    state = read_state_file(dbpath)
    if state is None:
        return None  # starting (lock taken, not listening yet) or stopping
    try:
        info = ServerInfo.from_state(state, dbpath)
    except (KeyError, TypeError, ValueError):
        return None
    return info if _answers(info) else None


def crashed(dbpath: str | Path | None = None) -> bool:
    """True if a server died without stopping cleanly (its state file left, its lock free)."""
    dbpath = resolve_dbpath(dbpath)
    return read_state_file(dbpath) is not None and not lock_held(dbpath)


@contextlib.contextmanager
def _exclusive(path: Path, deadline: float) -> Iterator[None]:
    fd = embedded.open_private(path, os.O_RDWR)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ConnectionFailure(f"timed out waiting for another command to start the embedded "
                                            f"server on {path.parent}") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------- starting
def _tcp_wanted(port: int | None, host: str | None, stale: dict | None) -> tuple[int | None, str, bool]:
    """(TCP port or None, host, required) for a server about to start.

    An explicit ``port`` or ``host`` asks for TCP, and so does ``$MONGOTUNE_SERVER_PORT``; a server that died
    with a TCP address gets that address again, but not required: if another program holds it now, the server
    comes back on its socket alone rather than anywhere else.
    """
    if port is not None or host is not None:
        return (default_port() if port is None else port), host or "127.0.0.1", True
    if stale is not None and stale.get("port") is not None:
        return int(stale["port"]), stale.get("host") or "127.0.0.1", False
    return env_port(), "127.0.0.1", True


def ensure_server(dbpath: str | Path | None = None, *, port: int | None = None, host: str | None = None,
                  idle_timeout: float | None | str = "default", timeout: float = 60.0) -> tuple[ServerInfo, bool]:
    """The server of ``dbpath``, started in the background if none runs; returns (info, started_now).

    It always listens on its private socket.  TCP only when asked: ``port``
    (0 = any free port) or ``host`` (then on ``$MONGOTUNE_SERVER_PORT`` or
    27117), or ``$MONGOTUNE_SERVER_PORT``; a port that is taken is an error,
    never a silent move.  A crashed predecessor's TCP address is asked again.
    """
    dbpath = resolve_dbpath(dbpath)
    info = find_server(dbpath)
    if info is not None:
        return info, False
    if port is not None:
        check_port(port)
    if idle_timeout == "default":
        idle_timeout = default_idle_timeout()
    private_dir(dbpath)
    deadline = time.monotonic() + timeout
    with _exclusive(dbpath / START_LOCK, deadline):
        while True:
            info = _wait_for_holder(dbpath, deadline)
            if info is not None:
                return info, False
            stale = read_state_file(dbpath)  # left by a server that died
            want, want_host, required = _tcp_wanted(port, host, stale)
            try:
                state, _ = embedded.spawn(dbpath, want, want_host, daemon=True, tcp_required=required,
                                          idle_timeout=idle_timeout, timeout=max(1.0, deadline - time.monotonic()))
            except ServerBusy:
                continue  # a foreground server took the directory meanwhile: wait for it to answer
            info = ServerInfo.from_state(state, dbpath)
            if stale:
                log.warning("the embedded server (pid %s) had died; restarted it as pid %d on %s", stale.get("pid"),
                            info.pid, info.socket + (f" and {info.tcp_url}" if info.tcp else ""))
            if info.tcp_error:
                log.warning("the restarted embedded server does not listen on TCP: %s", info.tcp_error)
            return info, True


def _wait_for_holder(dbpath: Path, deadline: float) -> ServerInfo | None:
    """None once nobody holds the lock; the server once it answers; an error if it never does."""
    while True:
        info = find_server(dbpath)
        if info is not None:
            return info
        if not lock_held(dbpath):
            return None
        if time.monotonic() >= deadline:
            state = read_state_file(dbpath) or {}
            raise ConnectionFailure(f"the embedded server on {dbpath} (pid {state.get('pid', '?')}) holds the "
                                    f"database but does not answer; see {dbpath / embedded.LOG_FILE}")
        time.sleep(0.1)


def embedded_url(dbpath: str | Path | None = None, timeout: float = 60.0) -> str:
    """The URL of the embedded server on ``dbpath`` (default ``$MONGOTUNE_HOME/db``), started if needed:
    its private Unix socket."""
    return ensure_server(dbpath, timeout=timeout)[0].url


class Keeper:
    """A daemon thread that restarts the server of ``dbpath`` if it dies while we use it."""

    def __init__(self, dbpath: str | Path | None = None, interval: float = KEEPER_INTERVAL_S):
        self.dbpath = resolve_dbpath(dbpath)
        self.interval = interval
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mongotune-server-keeper", daemon=True)

    def start(self) -> "Keeper":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if crashed(self.dbpath):
                    _, started = ensure_server(self.dbpath)
                    self.restarts += started
            except Exception as exc:  # keep looking; the clients' own retries report the outage
                log.warning("could not restart the embedded server on %s: %s", self.dbpath, exc)


@contextlib.contextmanager
def embedded_session(dbpath: str | Path | None = None) -> Iterator[str]:
    """Yield the embedded server's URL and keep the server up while the block runs; never stops it."""
    url = embedded_url(dbpath)
    keeper = Keeper(dbpath).start()
    try:
        yield url
    finally:
        keeper.stop()


# ---------------------------------------------------------------- looking and stopping
def db_size(dbpath: Path) -> int:
    total = 0
    for p in Path(dbpath).glob(DB_FILE + "*"):
        try:
            total += p.stat().st_size
        except OSError:
            pass
    return total


def _short_command(cmdline: list[str]) -> str:
    from ._url import redact

    args = list(cmdline)
    if len(args) >= 3 and os.path.basename(args[0]).startswith("python") and args[1] == "-m":
        args = [args[2].split(".")[0]] + args[3:] if args[2] == "mongotune" else [args[2]] + args[3:]
    elif args:
        args[0] = os.path.basename(args[0])
    text = " ".join((redact(a) if "://" in a else a) for a in args)
    text = " ".join(text.split())  # one line
    return text if len(text) <= 100 else text[:99] + "…"


def _command_of(pid: int | None) -> str:
    import psutil

    if pid is None:
        return "?"
    try:
        return _short_command(psutil.Process(pid).cmdline())
    except (psutil.Error, OSError):
        return "?"


def _socket_peers(info: ServerInfo, settle_s: float = 0.5) -> list[dict] | None:
    """The socket's peers as the server publishes them in ``clients.json`` (None if it does not).

    Our own ``find_server`` probe may still be listed for a moment after it
    closed: while this process is listed, look again for up to ``settle_s``.
    """
    deadline = time.monotonic() + settle_s
    while True:
        try:
            doc = json.loads((info.dbpath / CLIENTS_FILE).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("server_pid") != info.pid:
            return None
        peers = [c for c in doc.get("clients") or () if isinstance(c, dict)]
        if all(c.get("pid") != os.getpid() for c in peers) or time.monotonic() >= deadline:
            return peers
        time.sleep(0.02)


def _tcp_peers(info: ServerInfo) -> list[tuple[str, int, int | None]] | None:
    """(ip, port, pid or None) of each TCP connection to the server, from the kernel's socket tables."""
    import psutil

    try:
        proc = psutil.Process(info.pid)
        mine = (proc.net_connections if hasattr(proc, "net_connections") else proc.connections)(kind="tcp")
    except (psutil.Error, OSError):
        return None
    peers = {(c.raddr.ip, c.raddr.port) for c in mine
             if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == info.port and c.raddr}
    owners: dict[tuple, int | None] = {}
    if peers:
        try:
            for c in psutil.net_connections(kind="tcp"):
                if c.laddr and (c.laddr.ip, c.laddr.port) in peers and c.pid != info.pid:
                    owners[(c.laddr.ip, c.laddr.port)] = c.pid
        except (psutil.Error, OSError):
            pass
    return [(ip, port, owners.get((ip, port))) for ip, port in sorted(peers)]


def connected_clients(info: ServerInfo) -> list[Client] | None:
    """The processes connected to the server (None if that cannot be told).

    Socket peers come from the server itself (it reads each one's pid and uid
    from the kernel as it connects); TCP peers from the kernel's socket
    tables, the system-wide one mapping a local peer to its process (where it
    cannot be read, e.g. on macOS without root, they are listed by address only).
    """
    unix = _socket_peers(info) if info.socket else []
    tcp = _tcp_peers(info) if info.tcp else []
    if unix is None or tcp is None:
        return None
    by_pid: dict[int | None, Client] = {}

    def client(pid, uid=None) -> Client:
        if pid not in by_pid:
            by_pid[pid] = Client(pid=pid, command=_command_of(pid), uid=uid)
        return by_pid[pid]

    for peer in unix:
        c = client(peer.get("pid"), peer.get("uid"))
        c.addresses += [f"unix:{info.socket}"] * int(peer.get("connections") or 1)
    for ip, port, pid in tcp:
        client(pid).addresses.append(f"{ip}:{port}")
    return sorted(by_pid.values(), key=lambda c: (c.pid is None, c.pid or 0))


def server_status(dbpath: str | Path | None = None) -> ServerStatus:
    dbpath = resolve_dbpath(dbpath)
    info = find_server(dbpath)
    status = ServerStatus(dbpath=dbpath, running=info is not None, info=info, db_bytes=db_size(dbpath))
    if info is not None:
        status.clients = connected_clients(info)
    else:
        status.crashed = crashed(dbpath)
    return status


def stop_server(dbpath: str | Path | None = None, *, force: bool = False, timeout: float = 30.0) -> ServerInfo | None:
    """Stop the server of ``dbpath`` (SIGTERM, then SIGKILL after ``timeout``); None if none ran.

    Without ``force`` it refuses (ServerInUse) while any client is connected.
    """
    dbpath = resolve_dbpath(dbpath)
    deadline = time.monotonic() + timeout
    info = find_server(dbpath)
    if info is None:
        if not lock_held(dbpath):
            return None
        state = read_state_file(dbpath)
        if state is None:  # starting or already stopping
            info = _wait_for_holder(dbpath, deadline)
            if info is None:
                return None
        else:
            info = ServerInfo.from_state(state, dbpath)  # holds the lock but does not answer: stop it anyway
    if not force:
        clients = connected_clients(info)
        if clients is None:
            raise ServerInUse(f"cannot tell who is connected to the embedded server (pid {info.pid}); "
                              f"use --force to stop it anyway")
        if clients:
            who = ", ".join(f"pid {c.pid} ({c.command})" if c.pid else f"{c.addresses[0]}" for c in clients[:3])
            more = f" and {len(clients) - 3} more" if len(clients) > 3 else ""
            raise ServerInUse(f"{len(clients)} client(s) are connected to the embedded server: {who}{more}; "
                              f"stop them first, or use --force")
    try:
        os.kill(info.pid, signal.SIGTERM)
    except ProcessLookupError:
        return info
    killed = False
    while lock_held(dbpath):
        if time.monotonic() >= deadline:
            if killed:
                raise ConnectionFailure(f"the embedded server (pid {info.pid}) did not stop")
            log.warning("the embedded server (pid %d) ignored SIGTERM for %.0fs; killing it", info.pid, timeout)
            try:
                os.kill(info.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            killed, deadline = True, time.monotonic() + 10
        time.sleep(0.05)
    if killed:  # stopped on purpose: leave no state file for a keeper to read as a crash
        embedded._remove_state(dbpath)
    return info
