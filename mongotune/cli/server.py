"""`mongotune server`: the embedded MongoDB-compatible server.

``mongotune server`` (or ``server run``) serves in the foreground until Ctrl-C;
``server start|stop|status`` manage the per-user background server that every
command without ``--mongo`` starts on first use (see mongotune.store.local_server).
The server listens on a Unix socket only this account can reach, and on TCP
only when ``--port``/``--host`` (or ``$MONGOTUNE_SERVER_PORT``) asks for it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from ._common import _setup_logging, _user_errors, app, err, out

server_app = typer.Typer(help="The embedded MongoDB-compatible server: start, stop, status, or run it in the "
                              "foreground.")
app.add_typer(server_app, name="server")

DbpathOpt = typer.Option(None, "--dbpath", help="Database directory (default $MONGOTUNE_HOME/db).")
HOST_HELP = ("Also listen on TCP on this interface (port: --port, else $MONGOTUNE_SERVER_PORT, else 27117). There "
             "is no authentication: whoever reaches the port can read and change every study.")
PORT_HELP = ("Also listen on TCP on this port, 0 = any free one (default: $MONGOTUNE_SERVER_PORT if set, else no "
             "TCP; local commands always use the private Unix socket).")
IDLE_HELP = ("Stop after this many seconds with no client connected; 0 = never "
             "(default: $MONGOTUNE_SERVER_IDLE, else 3600 for a background server, never in the foreground).")


def _tcp_request(port: Optional[int], host: Optional[str]) -> tuple[Optional[int], Optional[str]]:
    """(port, host) of the TCP listener asked for by the options or $MONGOTUNE_SERVER_PORT; (None, None): none."""
    from ..store.embedded import check_port
    from ..store.local_server import default_port, env_port

    if port is not None:
        return check_port(port), host or "127.0.0.1"
    if host is not None:
        return default_port(), host
    port = env_port()
    return (None, None) if port is None else (port, "127.0.0.1")


def _warn_tcp(host: str) -> None:
    from ..store.local_server import is_loopback

    if not is_loopback(host):
        err.print(f"[bold yellow]warning:[/] the embedded server has no authentication: on {host} anyone who "
                  f"can reach its port can read and change every study; keep it on 127.0.0.1, or use a "
                  f"real MongoDB with users", highlight=False, soft_wrap=True)
    else:
        err.print(f"[bold yellow]warning:[/] the embedded server has no authentication: on TCP {host} every "
                  f"account on this machine can read and change every study (local commands use its private "
                  f"socket; TCP is for workers you trust)", highlight=False, soft_wrap=True)


def _check_idle(idle_timeout: Optional[float]) -> None:
    from ..errors import ConfigError

    if idle_timeout is not None and not idle_timeout >= 0:
        raise ConfigError(f"--idle-timeout must be a number of seconds >= 0, got {idle_timeout}")


def _where(url: str, tcp_url: Optional[str]) -> str:
    return url + (f" and on TCP {tcp_url}" if tcp_url else "")


def _foreground(dbpath: Optional[Path], port: Optional[int], host: Optional[str],
                idle_timeout: Optional[float]) -> None:
    with _user_errors():
        from ..store.embedded import serve

        port, host = _tcp_request(port, host)
        _check_idle(idle_timeout)
        _setup_logging()

        def ready(state):
            if state.get("tcp_url"):
                _warn_tcp(state["host"])
            out.print(f"serving {state['dbpath']} on {_where(state['url'], state.get('tcp_url'))} (Ctrl-C to stop)",
                      highlight=False)

        serve(dbpath, port, host or "127.0.0.1", idle_timeout=idle_timeout or None, on_ready=ready)


@server_app.callback(invoke_without_command=True)
def server(ctx: typer.Context, dbpath: Optional[Path] = DbpathOpt,
           port: Optional[int] = typer.Option(None, help=PORT_HELP),
           host: Optional[str] = typer.Option(None, help=HOST_HELP),
           idle_timeout: Optional[float] = typer.Option(None, "--idle-timeout", help="Stop after this many "
                                                        "seconds with no client (default: never).")):
    """Without a subcommand: serve in the foreground until Ctrl-C (same as `server run`)."""
    if ctx.invoked_subcommand is None:
        _foreground(dbpath, port, host, idle_timeout)


@server_app.command("run")
def run(dbpath: Optional[Path] = DbpathOpt,
        port: Optional[int] = typer.Option(None, help=PORT_HELP),
        host: Optional[str] = typer.Option(None, help=HOST_HELP),
        idle_timeout: Optional[float] = typer.Option(None, "--idle-timeout", help="Stop after this many seconds "
                                                     "with no client (default: never).")):
    """Serve the database in the foreground until Ctrl-C."""
    _foreground(dbpath, port, host, idle_timeout)


@server_app.command("start")
def start(dbpath: Optional[Path] = DbpathOpt,
          port: Optional[int] = typer.Option(None, help=PORT_HELP),
          host: Optional[str] = typer.Option(None, help=HOST_HELP),
          idle_timeout: Optional[float] = typer.Option(None, "--idle-timeout", help=IDLE_HELP)):
    """Start the background server (commands without --mongo start it anyway on first use)."""
    with _user_errors():
        from ..errors import UserError
        from ..store.local_server import ensure_server, find_server

        asked_port, asked_host = _tcp_request(port, host)
        _check_idle(idle_timeout)
        running = find_server(dbpath)
        if running is not None and ((port is not None and (not running.tcp or port not in (0, running.port)))
                                    or (host is not None and (not running.tcp or host != running.host))):
            where = f"TCP {running.host}:{running.port}" if running.tcp else "its socket alone (no TCP)"
            raise UserError(f"the embedded server already runs on {where} (pid {running.pid}); "
                            f"`mongotune server stop` it first to change its host or port")
        info, started = ensure_server(dbpath, port=asked_port, host=asked_host,
                                      idle_timeout="default" if idle_timeout is None else (idle_timeout or None))
    if started and info.tcp:
        _warn_tcp(info.host)
    idle = f"stops after {_duration(info.idle_timeout)} with no client" if info.idle_timeout else "no idle stop"
    verb = "started" if started else "already running:"
    out.print(f"{verb} embedded server pid {info.pid} on {_where(info.url, info.tcp_url)} (data in {info.dbpath}; "
              f"{idle})", highlight=False)


@server_app.command("stop")
def stop(dbpath: Optional[Path] = DbpathOpt,
         force: bool = typer.Option(False, "--force", help="Stop it even while clients are connected.")):
    """Stop the background (or foreground) server of the database."""
    with _user_errors():
        from ..store.local_server import stop_server

        info = stop_server(dbpath, force=force)
    if info is None:
        out.print("no embedded server was running", highlight=False)
    else:
        out.print(f"stopped embedded server pid {info.pid} ({info.socket or f'port {info.port}'})",
                  highlight=False)


@server_app.command("status")
def status(dbpath: Optional[Path] = DbpathOpt,
           as_json: bool = typer.Option(False, "--json", help="One JSON object, for scripts.")):
    """Where the server is, since when, how big its database is, and who is connected."""
    with _user_errors():
        from ..store.local_server import server_status

        st = server_status(dbpath)
    info = st.info
    if as_json:
        doc = {"running": st.running, "dbpath": str(st.dbpath), "db_bytes": st.db_bytes, "crashed": st.crashed}
        if info is not None:
            doc.update(pid=info.pid, url=info.url, socket=info.socket, host=info.host, port=info.port,
                       tcp_url=info.tcp_url, tcp_error=info.tcp_error, mode=info.mode,
                       started_at=info.started_at, idle_timeout=info.idle_timeout, log=info.log,
                       connections=st.connections,
                       clients=None if st.clients is None else
                       [{"pid": c.pid, "uid": c.uid, "command": c.command, "addresses": c.addresses}
                        for c in st.clients])
        out.print_json(json.dumps(doc))
        return
    size = _size(st.db_bytes)
    if info is None:
        why = (" (the last one died without stopping; the next command restarts it)" if st.crashed else "")
        out.print(f"no embedded server running on {st.dbpath} ({size} on disk){why}; "
                  f"the next command without --mongo starts one", highlight=False)
        return
    out.print(f"embedded server [bold]running[/] ({info.mode}, pid {info.pid})", highlight=False)
    for key, value in _status_rows(st, size):
        out.print(f"  {key + ':':<11}{value}", highlight=False)
    for c in st.clients or []:
        who = f"pid {c.pid}" if c.pid is not None else "another user or host"
        extra = "" if c.pid is not None else f" at {', '.join(c.addresses)}"
        out.print(f"    {who:<10} {c.command}{extra} ({len(c.addresses)} connection(s))", highlight=False)


def _status_rows(st, size: str) -> list[tuple[str, str]]:
    from ..store.local_server import is_loopback

    info = st.info
    rows = [("url", info.url)]
    if info.socket:
        rows.append(("socket", f"{info.socket} (this account only)"))
    if info.tcp:
        rows.append(("tcp", f"{info.host}:{info.port} (no authentication: "
                     + ("every local account can connect)" if is_loopback(info.host) else "reachable from other "
                                                                                          "hosts)")))
    elif info.tcp_error:
        rows.append(("tcp", f"not listening: {info.tcp_error}"))
    else:
        rows.append(("tcp", "off"))
    rows.append(("database", f"{info.dbpath} ({size} on disk)"))
    if info.started_at:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.started_at))
        rows.append(("since", f"{since} (up {_duration(time.time() - info.started_at)})"))
    rows.append(("idle stop", f"after {_duration(info.idle_timeout)} with no client" if info.idle_timeout
                 else "never"))
    if info.log:
        rows.append(("log", info.log))
    if st.clients is None:
        rows.append(("clients", "unknown (the server's client list cannot be read)"))
    else:
        procs = len(st.clients)
        rows.append(("clients", f"{st.connections} connection(s) from {procs} process(es)" if procs else "none"))
    return rows


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s" if s % 60 else f"{s // 60}m"
    h, m = divmod(s // 60, 60)
    return f"{h}h {m}m" if m else f"{h}h"
