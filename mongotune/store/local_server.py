"""The per-user background server: found, started, kept alive and stopped.

Design (one server per database directory, ``$MONGOTUNE_HOME/db`` by default):

* **Started on first use.**  A command with no ``--mongo`` calls
  :func:`embedded_url`.  If a server holds the directory's lock, has written
  ``server.json`` and accepts a TCP connection, that is the answer (a flock
  probe, a small file read and one connect: about a millisecond).  Otherwise
  the command takes ``start.lock`` (an exclusive flock that serialises
  starters), looks again, and if there is still no server starts one
  detached: ``python -m mongotune.store.embedded --daemon`` forks away from
  the command, runs in its own session and is nobody's child, so it outlives
  the command that started it.  Commands started at the same instant queue on
  ``start.lock``; the first starts the server and the others find it.
* **Port.**  ``$MONGOTUNE_SERVER_PORT`` or 27117; when another program holds
  it the server takes a free port and records it in ``server.json``.  After a
  crash the server comes back on the port it had, so running clients
  reconnect to the URL they already hold.
* **Never stopped under a client.**  No command stops the server when it
  ends.  The server stops itself after ``$MONGOTUNE_SERVER_IDLE`` seconds
  (default 3600; 0 = never) with no client connection; every mongotune
  process holds a connection for as long as it runs, and a running trial's
  worker is connected (it heartbeats).  ``mongotune server stop`` refuses
  while clients are connected unless forced.
* **Restarted if it died.**  A clean stop removes ``server.json``; a crash
  (``kill -9``) leaves it behind with the lock free.  Every long-running
  command on the embedded default (launch, resume, worker, ...) runs a
  keeper thread (:func:`embedded_session`) that looks once a second and
  restarts a crashed server on its old port; ``start.lock`` makes one of
  them do it.  Clients ride the gap on their usual retries.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
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
from .embedded import (DB_FILE, DEFAULT_PORT, ServerBusy, check_port, connect_host,
                       lock_held, read_state_file, resolve_dbpath)

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
    """A live server as its ``server.json`` describes it."""

    pid: int
    host: str
    port: int
    dbpath: Path
    started_at: float | None = None
    idle_timeout: float | None = None
    mode: str = "background"
    log: str | None = None

    @classmethod
    def from_state(cls, state: dict, dbpath: Path) -> "ServerInfo":
        return cls(pid=int(state["pid"]), host=state.get("host") or "127.0.0.1", port=int(state["port"]),
                   dbpath=Path(state.get("dbpath") or dbpath), started_at=state.get("started_at"),
                   idle_timeout=state.get("idle_timeout"), mode=state.get("mode") or "background",
                   log=state.get("log"))

    @property
    def url(self) -> str:
        return embedded.url_for(self.port, self.host)


@dataclass
class Client:
    """Connections to the server from one local process (pid None: another host or user)."""

    pid: int | None
    command: str
    addresses: list[str] = field(default_factory=list)


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
def default_port() -> int:
    raw = os.environ.get(ENV_PORT, "").strip()
    if not raw:
        return DEFAULT_PORT
    try:
        return check_port(int(raw))
    except (ValueError, ConfigError):
        raise ConfigError(f"${ENV_PORT} must be a port number (1-65535, or 0 for any), got {raw!r}") from None


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
def _answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((connect_host(host).strip("[]"), port), timeout=timeout):
            return True
    except OSError:
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
    return info if _answers(info.host, info.port) else None


def crashed(dbpath: str | Path | None = None) -> bool:
    """True if a server died without stopping cleanly (its state file left, its lock free)."""
    dbpath = resolve_dbpath(dbpath)
    return read_state_file(dbpath) is not None and not lock_held(dbpath)


@contextlib.contextmanager
def _exclusive(path: Path, deadline: float) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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
def ensure_server(dbpath: str | Path | None = None, *, port: int | None = None, host: str = "127.0.0.1",
                  idle_timeout: float | None | str = "default", timeout: float = 60.0) -> tuple[ServerInfo, bool]:
    """The server of ``dbpath``, started in the background if none runs; returns (info, started_now).

    ``port=None``: the port a crashed predecessor had, else ``$MONGOTUNE_SERVER_PORT``
    or 27117, falling back to a free port when taken.  An explicit ``port`` must be free.
    """
    dbpath = resolve_dbpath(dbpath)
    info = find_server(dbpath)
    if info is not None:
        return info, False
    if port is not None:
        check_port(port)
    if idle_timeout == "default":
        idle_timeout = default_idle_timeout()
    dbpath.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with _exclusive(dbpath / START_LOCK, deadline):
        while True:
            info = _wait_for_holder(dbpath, deadline)
            if info is not None:
                return info, False
            stale = read_state_file(dbpath)  # left by a server that died
            want, fallback = port, False
            if want is None:
                fallback = True
                want = int(stale["port"]) if stale else default_port()
            try:
                state, _ = embedded.spawn(dbpath, want, host, daemon=True, port_fallback=fallback,
                                          idle_timeout=idle_timeout, timeout=max(1.0, deadline - time.monotonic()))
            except ServerBusy:
                continue  # a foreground server took the directory meanwhile: wait for it to answer
            info = ServerInfo.from_state(state, dbpath)
            if stale:
                log.warning("the embedded server (pid %s) had died; restarted it as pid %d on port %d",
                            stale.get("pid"), info.pid, info.port)
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
    """A URL of the embedded server on ``dbpath`` (default ``$MONGOTUNE_HOME/db``), started if needed."""
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


def connected_clients(info: ServerInfo) -> list[Client] | None:
    """The processes connected to the server, from the kernel's socket tables (None if unreadable).

    The server's own sockets give the peers; the system-wide table maps a local peer to its process
    (where it cannot be read, e.g. on macOS without root, peers are listed by address only).
    """
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
    by_pid: dict[int | None, Client] = {}
    for peer in sorted(peers, key=lambda p: (str(owners.get(p)), p)):
        pid = owners.get(peer)
        if pid not in by_pid:
            command = "?"
            if pid is not None:
                try:
                    command = _short_command(psutil.Process(pid).cmdline())
                except (psutil.Error, OSError):
                    pass
            by_pid[pid] = Client(pid=pid, command=command)
        by_pid[pid].addresses.append(f"{peer[0]}:{peer[1]}")
    return list(by_pid.values())


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
