"""Where the dashboard listens: checked and bound before anything heavy starts."""

from __future__ import annotations

import ipaddress
import socket

from ..errors import ConfigError


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a ``ConfigError`` that says why not."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host!r}: {exc.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock




LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def split_host(value: str) -> tuple[str, int | None] | None:
    """A Host header as ``(name, port)`` (name lower-cased, IPv6 without brackets), or None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else None
    elif value.count(":") > 1:
        return None  # a bare IPv6 address must be in brackets
    else:
        name, sep, port = value.partition(":")
        port = port if sep else None
    if not name or (port is not None and not (port.isdigit() and 0 < int(port) <= 65535)):
        return None
    return name, None if port is None else int(port)


class HostCheck:
    """ASGI middleware for a dashboard bound to loopback, against DNS rebinding: a page on another site
    that makes its own name resolve to 127.0.0.1 sends that name in ``Host``.  Only the loopback names
    (localhost, 127.0.0.1, [::1]) and the name the dashboard was bound to are served: a missing or
    malformed Host gets 400, another name 403.  The port is not checked, so an SSH tunnel from another
    local port still works (a rebinding page cannot choose its name's port to get in either way)."""

    def __init__(self, app, host: str | None = None):
        self.app = app
        names = set(LOOPBACK_NAMES)
        if host:
            names.add(host.strip("[]").lower())
        self.names = names

    def verdict(self, raw: bytes | None) -> tuple[int, str] | None:
        parsed = split_host(raw.decode("latin-1")) if raw else None
        if parsed is None:
            return 400, "missing or malformed Host header"
        if parsed[0] not in self.names:
            return 403, f"this dashboard answers only to the names {', '.join(sorted(self.names))}"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            raw = next((v for k, v in scope.get("headers") or [] if k == b"host"), None)
            bad = self.verdict(raw)
            if bad is not None:
                from starlette.responses import PlainTextResponse

                await PlainTextResponse(bad[1] + "\n", status_code=bad[0])(scope, receive, send)
                return
        await self.app(scope, receive, send)
