"""The embedded server on a shared host (issue 19, part 1), with real processes and a second local account.

Tests run as root here; ``runuser -u nobody`` is the other account. Its probe is plain python3 (the
project's virtualenv lives where nobody can read it): it connects to the server's socket and asks for the
studies with a hand-made OP_MSG, lists the database directory and reads each file. The same probe run as
the owner reads the study, and nobody reads a file that is not private, so a failure is the protection at
work, not a broken probe. The homes of these tests live under a 0755 directory in /tmp (pytest's own
directory is 0700, which would hide everything from nobody whatever mongotune does).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psutil
import pymongo
import pytest

from mongotune.store.embedded import LOG_FILE, STATE_FILE, free_port, lock_held
from mongotune.store.local_server import ensure_server, find_server, stop_server

from helpers import env, log_text, mongotune, one_line_error, run_cli, stop, wait_for

pytestmark = pytest.mark.timeout(300)

OTHER = "nobody"
PRIVATE_FILES = ("mongotune.sqlite", "mongotune.sqlite-wal", STATE_FILE, LOG_FILE, "server.lock", "clients.json")

PROBE = r'''
import json, os, socket, struct, sys
sock_path, dbdir, secret = sys.argv[1:4]
names = sys.argv[4:]
out = {}

def cstr(s):
    return s.encode() + b"\0"

def doc(items):
    body = b""
    for k, v in items:
        b = v.encode()
        body += b"\x02" + cstr(k) + struct.pack("<i", len(b) + 1) + b + b"\0"
    return struct.pack("<i", len(body) + 5) + body + b"\0"

def ask(s):
    payload = struct.pack("<I", 0) + b"\0" + doc([("find", "studies"), ("$db", "mongotune")])
    s.sendall(struct.pack("<iiii", 16 + len(payload), 1, 0, 2013) + payload)
    data = b""
    while len(data) < 4 or len(data) < struct.unpack("<i", data[:4])[0]:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data

try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sock_path)
    out["connect"] = "ok"
    try:
        data = ask(s)
        out["reply"] = "closed" if not data else ("secret" if secret.encode() in data else "reply")
    except OSError as e:
        out["reply"] = type(e).__name__
except OSError as e:
    out["connect"] = type(e).__name__
try:
    os.listdir(dbdir)
    out["list"] = "ok"
except OSError as e:
    out["list"] = type(e).__name__
for n in names:
    try:
        with open(os.path.join(dbdir, n), "rb") as fh:
            out["read " + n] = "secret" if secret.encode() in fh.read() else "ok"
    except OSError as e:
        out["read " + n] = type(e).__name__
print(json.dumps(out))
'''


def _need_second_account() -> None:
    if os.geteuid() != 0 or shutil.which("runuser") is None or not Path("/usr/bin/python3").exists():
        pytest.skip("SKIPPED LOUDLY: these tests need root, runuser and /usr/bin/python3 to act as a second local "
                    "account (nobody); without them the privacy of the embedded server is NOT tested here")


def _probe(info, secret: str, *, as_other: bool) -> dict:
    cmd = ["/usr/bin/python3", "-c", PROBE, info.socket, str(info.dbpath), secret, *PRIVATE_FILES]
    if as_other:
        cmd = ["runuser", "-u", OTHER, "--", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _store_secret(info) -> str:
    secret = "secret-" + uuid.uuid4().hex
    with pymongo.MongoClient(info.url, serverSelectionTimeoutMS=10000) as client:
        client.mongotune.studies.insert_one({"_id": "private-study", "note": secret})
    return secret


def _tcp_listeners(pid: int) -> list:
    return [c for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]


@pytest.fixture
def shared_home(monkeypatch):
    """A $MONGOTUNE_HOME that every account may enter (0777, as a umask of 000 would leave it), under /tmp."""
    _need_second_account()
    base = Path(tempfile.mkdtemp(prefix="mt-shared-", dir="/tmp"))
    os.chmod(base, 0o755)
    home = base / "home"
    home.mkdir()
    os.chmod(home, 0o777)
    monkeypatch.setenv("MONGOTUNE_HOME", str(home))
    try:
        yield home
    finally:
        if (home / "db" / "server.lock").exists():
            stop_server(home / "db", force=True)
        shutil.rmtree(base, ignore_errors=True)


def test_directory_and_files_are_private_whatever_the_umask(shared_home):
    """Under umask 000, over what an older version left (a 0755 directory, 0644 files): 0700 and 0600."""
    db = shared_home / "db"
    db.mkdir()
    os.chmod(db, 0o755)
    for name, text in (("server.log", "an older version's log\n"), ("mongotune.sqlite", "")):
        (db / name).write_text(text)
        os.chmod(db / name, 0o644)
    for args in (("server", "start"), ("studies",)):
        r = subprocess.run([sys.executable, "-m", "mongotune", *args], capture_output=True, text=True, timeout=120,
                           env=env(), stdin=subprocess.DEVNULL, umask=0)
        assert r.returncode == 0, r.stdout + r.stderr
    info = find_server()
    _store_secret(info)  # writes: the WAL and its index exist now
    modes = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in db.iterdir()}
    assert stat.S_IMODE(db.stat().st_mode) == 0o700
    assert set(PRIVATE_FILES) | {"server.sock", "start.lock", "mongotune.sqlite-shm"} <= set(modes), modes
    assert all(mode == 0o600 for mode in modes.values()), modes
    assert stat.S_ISSOCK((db / "server.sock").lstat().st_mode) and info.socket == str(db / "server.sock")
    assert "an older version's log" in log_text(db / LOG_FILE)  # tightened, not replaced


def test_another_account_reaches_neither_the_server_nor_its_files(shared_home):
    info, started = ensure_server()
    assert started and info.socket and not info.tcp
    secret = _store_secret(info)
    public = shared_home / "public.txt"
    public.write_text(secret)
    os.chmod(public, 0o644)
    # controls: the probe reads the study as the owner, and the other account reads a file that is not private
    mine = _probe(info, secret, as_other=False)
    assert mine["connect"] == "ok" and mine["reply"] == "secret" and mine["list"] == "ok", mine
    r = subprocess.run(["runuser", "-u", OTHER, "--", "cat", str(public)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == secret, r.stderr

    theirs = _probe(info, secret, as_other=True)
    assert theirs["connect"] == "PermissionError" and "reply" not in theirs, theirs
    assert theirs["list"] == "PermissionError", theirs
    assert all(theirs[f"read {n}"] == "PermissionError" for n in PRIVATE_FILES), theirs
    assert not _tcp_listeners(info.pid)  # and no TCP port to try instead


def test_past_a_careless_chmod_the_server_still_refuses_another_account(shared_home):
    """Defense in depth: with the directory opened to all (0711) and the socket 0666, the other account
    connects, and the server, reading its uid from the kernel, closes the connection unanswered."""
    info, _ = ensure_server()
    secret = _store_secret(info)
    os.chmod(info.dbpath, 0o711)
    os.chmod(info.socket, 0o666)
    try:
        theirs = _probe(info, secret, as_other=True)
        assert theirs["connect"] == "ok", theirs
        assert theirs["reply"] in ("closed", "ConnectionResetError", "BrokenPipeError"), theirs
        assert _probe(info, secret, as_other=False)["reply"] == "secret"
    finally:
        os.chmod(info.dbpath, 0o700)
        os.chmod(info.socket, 0o600)
    assert f"refused a connection from uid {pwd_uid(OTHER)}" in log_text(info.dbpath / LOG_FILE)


def pwd_uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


def test_a_killed_server_comes_back_on_its_socket_and_never_on_another_port(tmp_path, monkeypatch):
    """TCP asked on port P. kill -9; another account takes P; the worker's keeper restarts the server: on the
    same socket (a client holding the old URL carries on), on no TCP port at all, and it says why."""
    _need_second_account()
    port = free_port()
    monkeypatch.setenv("MONGOTUNE_SERVER_PORT", str(port))
    info, _ = ensure_server()
    assert info.tcp and info.port == port and info.socket
    client = pymongo.MongoClient(info.url, serverSelectionTimeoutMS=30000)
    client.mongotune.probe.insert_one({"n": 1})
    keeper = mongotune("worker", "--idle-timeout", "120", log=tmp_path / "worker.log")
    squatter = None
    try:
        wait_for(lambda: any(c.get("pid") == keeper.pid for c in _clients()), 120, interval=0.2,
                 what="the worker to connect")
        os.kill(info.pid, signal.SIGKILL)
        squatter = subprocess.Popen(["runuser", "-u", OTHER, "--", "/usr/bin/python3", "-c",
                                     "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', "
                                     f"{port})); s.listen(); print('listening', flush=True); time.sleep(300)"],
                                    stdout=subprocess.PIPE, text=True)
        assert squatter.stdout.readline().strip() == "listening"
        back = wait_for(lambda: (s := find_server()) and s.pid != info.pid and s, 60, what="the restarted server")
        assert back.url == info.url and back.socket == info.socket
        assert not back.tcp and back.port == port and "in use" in back.tcp_error, back
        assert not _tcp_listeners(back.pid)
        assert client.mongotune.probe.count_documents({}) == 1  # the old URL, the new server, the old data
        client.mongotune.probe.insert_one({"n": 2})
        st = json.loads(run_cli("server", "status", "--json", timeout=60).stdout)
        assert st["pid"] == back.pid and st["tcp_url"] is None and "in use" in st["tcp_error"], st
        assert "not listening" in run_cli("server", "status", timeout=60).stdout
    finally:
        client.close()
        stop(keeper)
        if squatter is not None:
            stop(squatter, signal.SIGKILL)
    assert "had died; restarted it" in log_text(tmp_path / "worker.log")
    assert "does not listen on TCP" in log_text(tmp_path / "worker.log")


def _clients() -> list[dict]:
    st = json.loads(run_cli("server", "status", "--json", timeout=60).stdout)
    return st.get("clients") or []


def test_a_directory_too_deep_for_a_socket_uses_a_private_runtime_directory(tmp_path, monkeypatch):
    """A database directory whose socket path would pass 107 bytes: the socket goes to $TMPDIR/mongotune-UID/
    (0700, ours), on the same path after a restart; such a directory that another account owns is refused."""
    _need_second_account()
    runtime_base = Path(tempfile.mkdtemp(prefix="mt-rt-", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(runtime_base))
    home = tmp_path / ("d" * 50) / ("e" * 50)
    monkeypatch.setenv("MONGOTUNE_HOME", str(home))
    runtime = runtime_base / f"mongotune-{os.geteuid()}"
    try:
        info, _ = ensure_server()
        assert Path(info.socket).parent == runtime, info.socket
        assert stat.S_IMODE(runtime.lstat().st_mode) == 0o700 and stat.S_IMODE(os.lstat(info.socket).st_mode) == 0o600
        with pymongo.MongoClient(info.url, serverSelectionTimeoutMS=10000) as client:
            client.admin.command("ping")
        os.kill(info.pid, signal.SIGKILL)
        wait_for(lambda: not lock_held(info.dbpath), 10, what="the lock to go with the process")
        back, started = ensure_server()
        assert started and back.socket == info.socket
        stop_server(force=True)

        shutil.rmtree(runtime)
        runtime.mkdir(mode=0o700)
        os.chown(runtime, pwd_uid(OTHER), -1)
        one_line_error(run_cli("studies", timeout=120), "belongs to another account")
        assert find_server() is None
    finally:
        if lock_held(home / "db"):
            stop_server(home / "db", force=True)
        shutil.rmtree(runtime_base, ignore_errors=True)


def test_another_accounts_directory_is_refused(tmp_path):
    """A --dbpath owned by another account (who could read or swap the files) is one error line."""
    _need_second_account()
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, pwd_uid(OTHER), -1)
    for args in (("server", "start", "--dbpath", theirs), ("server", "run", "--dbpath", theirs)):
        one_line_error(run_cli(*args, timeout=60), "belongs to another account")
    assert not list(theirs.iterdir())
