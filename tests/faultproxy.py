"""A TCP proxy between MongoDB clients and a server that injects the faults a cluster has.

It speaks just enough of the MongoDB wire protocol to see whole messages:
each client message (OP_MSG) is read completely before it is forwarded, so a
test can pick one by its command and make its reply go missing.

* ``latency_s``: added before every reply;
* ``drop_connections()``: cut every open connection (clients reconnect);
* ``blackout()`` / ``restore()``: cut everything and refuse new connections;
* ``lose_reply_of(predicate)``: the next client command for which
  ``predicate(command_document)`` is true reaches the server (and takes
  effect there), but its reply never comes back: the connection is cut.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import bson

OP_MSG = 2013


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _read_message(sock: socket.socket) -> bytes | None:
    head = _read_exact(sock, 4)
    if head is None:
        return None
    (length,) = struct.unpack("<i", head)
    rest = _read_exact(sock, length - 4)
    return None if rest is None else head + rest


def command_of(message: bytes) -> dict | None:
    """The command of an OP_MSG (its body, with document sequences such as ``updates`` merged in),
    or None for anything else."""
    request_id, response_to, opcode = struct.unpack("<iii", message[4:16])
    if opcode != OP_MSG:
        return None
    body: dict = {}
    sequences: dict[str, list] = {}
    pos, end = 20, len(message)  # header + flagBits
    (flags,) = struct.unpack("<I", message[16:20])
    if flags & 1:  # a checksum ends the message
        end -= 4
    while pos < end:
        kind = message[pos]
        pos += 1
        (size,) = struct.unpack("<i", message[pos:pos + 4])
        if kind == 0:
            body = bson.decode(message[pos:pos + size])
        else:
            section = message[pos + 4:pos + size]
            name, _, docs = section.partition(b"\0")
            sequences[name.decode()] = list(bson.decode_all(docs))
        pos += size
    return {**body, **sequences}


class FaultProxy:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.latency_s = 0.0
        self._dark = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[tuple[socket.socket, socket.socket]] = []
        self._lose: list = []  # predicates waiting for their command
        self.lost_replies: list[dict] = []
        self.connections = 0
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="faultproxy-accept").start()

    def url(self, db: str) -> str:
        return f"mongodb://127.0.0.1:{self.port}/{db}"

    # ------------------------------------------------------------ faults
    def drop_connections(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for pair in conns:
            for s in pair:
                _close(s)

    def blackout(self) -> None:
        self._dark.set()
        self.drop_connections()

    def restore(self) -> None:
        self._dark.clear()

    def lose_reply_of(self, predicate) -> None:
        with self._lock:
            self._lose.append(predicate)

    def close(self) -> None:
        self._closed = True
        _close(self._listener)
        self.drop_connections()

    # ------------------------------------------------------------ plumbing
    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._dark.is_set():
                _close(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._conns.append((client, server))
                self.connections += 1
            pending: dict[int, dict] = {}  # request ids whose reply must go missing
            threading.Thread(target=self._upstream, args=(client, server, pending), daemon=True).start()
            threading.Thread(target=self._downstream, args=(client, server, pending), daemon=True).start()

    def _upstream(self, client, server, pending) -> None:
        try:
            while True:
                msg = _read_message(client)
                if msg is None:
                    break
                cmd = command_of(msg)
                if cmd is not None:
                    with self._lock:
                        hit = next((p for p in self._lose if p(cmd)), None)
                        if hit is not None:
                            self._lose.remove(hit)
                    if hit is not None:
                        pending[struct.unpack("<i", msg[4:8])[0]] = cmd
                server.sendall(msg)
        except OSError:
            pass
        finally:
            _close(client)
            _close(server)

    def _downstream(self, client, server, pending) -> None:
        try:
            while True:
                msg = _read_message(server)
                if msg is None:
                    break
                response_to = struct.unpack("<i", msg[8:12])[0]
                if response_to in pending:
                    self.lost_replies.append(pending.pop(response_to))
                    break  # the reply vanishes with the connection
                if self.latency_s:
                    time.sleep(self.latency_s)
                client.sendall(msg)
        except OSError:
            pass
        finally:
            _close(client)
            _close(server)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


def is_reservation(cmd: dict) -> bool:
    """findAndModify of a queued trial into a lease (what a worker's reservation sends)."""
    update = cmd.get("update") or {}
    return "findAndModify" in cmd and "lease_token" in (update.get("$set") or {})


def is_finish(cmd: dict) -> bool:
    """The update that records a trial's result."""
    for u in cmd.get("updates") or []:
        if "finished_lease" in ((u.get("u") or {}).get("$set") or {}):
            return True
    return False
