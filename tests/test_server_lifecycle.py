"""The per-user embedded server with real processes: shared by overlapping commands, started once, restarted
after kill -9, stopped on request or when idle, and the `mongotune server` commands.

Every test has its own MONGOTUNE_HOME (conftest), so each server has its own directory and socket; a test
that asks for TCP asks for a free port, so nothing here touches 27117 or another test's server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pymongo
import pytest

from mongotune.store.embedded import LOG_FILE, STATE_FILE, lock_held
from mongotune.store.local_server import ensure_server, find_server, stop_server

from helpers import env, log_text, mongotune, run_cli, stop, wait_for

pytestmark = pytest.mark.timeout(420)

STARTED_LINE = "embedded MongoDB-compatible server on"


def _dbpath() -> Path:
    return Path(os.environ["MONGOTUNE_HOME"]) / "db"


def _server_starts() -> int:
    return log_text(_dbpath() / LOG_FILE).count(STARTED_LINE)


def _db(url: str):
    return pymongo.MongoClient(url, serverSelectionTimeoutMS=10000).get_default_database()


def _trials(db, study: str) -> list[dict]:
    return list(db.jobs.find({"exp_key": f"mongotune:{study}"}).sort("tid", 1))


def _runs_per_tid(record_dir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in (record_dir.iterdir() if record_dir.exists() else ()):
        tid = p.name.split("-")[0]
        counts[tid] = counts.get(tid, 0) + 1
    return counts


def _launch(study: str, n: int, sleep_s: float, log: Path, rec: Path | None = None, workers: int = 1):
    opts = {"sleep_s": sleep_s}
    if rec is not None:
        opts["record_dir"] = str(rec)
    return mongotune("launch", "x", "--study", study, "--objective", "synthetic", "--options", json.dumps(opts),
                     "--max-evals", n, "--workers", workers, "-q", log=log)


def _all_ok(db, study: str, n: int) -> None:
    docs = _trials(db, study)
    assert len(docs) == n, f"{study}: {len(docs)} trials, expected {n}"
    bad = [(d["tid"], d["state"], (d.get("result") or {}).get("status")) for d in docs
           if d["state"] != 2 or (d.get("result") or {}).get("status") != "ok"]
    assert not bad, f"{study}: trials not ok: {bad}"


def test_overlapping_launches_and_a_resume_share_one_server(tmp_path):
    """The issue's failure: A started the server, B joined, A ended and stopped it under B.

    A (short, starting the server cold), then B (long) and a resume of a third study C, each with its own
    local worker. Whichever ends first, the others carry on to exit 0 with every trial ok, on one server.
    """
    logs = {k: tmp_path / f"{k}.log" for k in ("A", "B", "C")}
    r = run_cli("launch", "x", "--study", "C", "--objective", "synthetic", "--options", '{"sleep_s": 0.1}',
                "--max-evals", 2, "--workers", 1, "-q", timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert find_server() is not None  # still up after the command that started it ended
    stop_server()

    procs = {"A": _launch("A", 3, 0.3, logs["A"])}
    time.sleep(1.0)
    procs["B"] = _launch("B", 24, 0.3, logs["B"])
    time.sleep(1.0)
    procs["C"] = mongotune("resume", "C", "--max-evals", 4, "--workers", 1, "-q", log=logs["C"])
    order, running_when_first_ended = [], None
    try:
        deadline = time.monotonic() + 360
        while len(order) < 3 and time.monotonic() < deadline:
            for k, p in procs.items():
                if k not in order and p.poll() is not None:
                    order.append(k)
                    if running_when_first_ended is None:
                        running_when_first_ended = [j for j, q in procs.items() if q.poll() is None]
            time.sleep(0.1)
    finally:
        for p in procs.values():
            stop(p, signal.SIGKILL)
    for k, p in procs.items():
        assert p.returncode == 0, f"{k} exit {p.returncode}: " + log_text(logs[k])[-3000:]
    assert running_when_first_ended, f"all ended together ({order}): no overlap to test"
    db = _db(find_server().url)
    _all_ok(db, "A", 3)
    _all_ok(db, "B", 24)
    _all_ok(db, "C", 4)
    assert _server_starts() == 2  # the first launch's, then A's, shared to the end
    for k in procs:
        assert "unreachable" not in log_text(logs[k]), log_text(logs[k])[-2000:]


def test_kill_9_of_the_server_mid_study_a_client_restarts_it(tmp_path):
    """A hand-started worker and a launch, both on the default: kill -9 the server; it comes back on its
    socket, the study completes, no trial lost or run twice."""
    rec = tmp_path / "runs"
    w = mongotune("worker", "--study", "K", log=tmp_path / "w.log")
    coord = _launch("K", 12, 0.5, tmp_path / "coord.log", rec=rec, workers=0)
    try:
        info = wait_for(find_server, 120, what="the background server")
        db = _db(info.url)
        wait_for(lambda: db.jobs.count_documents({"exp_key": "mongotune:K", "state": 2}) >= 3, 180,
                 what="three finished trials")
        db.client.close()
        os.kill(info.pid, signal.SIGKILL)
        back = wait_for(lambda: (s := find_server()) and s.pid != info.pid and s, 60,
                        what="the server restarted by a client")
        assert back.socket == info.socket and back.url == info.url  # clients keep the URL they hold
        assert coord.wait(240) == 0, log_text(tmp_path / "coord.log")[-3000:]
    finally:
        stop(w)
        stop(coord, signal.SIGKILL)
    db = _db(find_server().url)
    _all_ok(db, "K", 12)
    runs = _runs_per_tid(rec)
    assert len(runs) == 12 and set(runs.values()) == {1}, runs
    assert "had died; restarted it" in log_text(tmp_path / "coord.log") + log_text(tmp_path / "w.log")
    assert _server_starts() == 2


def test_the_next_command_restarts_a_dead_server_on_its_socket():
    info, started = ensure_server()
    assert started
    os.kill(info.pid, signal.SIGKILL)
    wait_for(lambda: not lock_held(_dbpath()), 10, what="the lock to go with the process")
    r = run_cli("studies", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    now = find_server()
    assert now is not None and now.pid != info.pid and now.url == info.url


_AT_ONCE = textwrap.dedent("""
    import json, sys, time
    from mongotune.store.local_server import ensure_server
    go = float(sys.argv[1])
    time.sleep(max(0.0, go - time.time()))
    info, started = ensure_server()
    print(json.dumps({"pid": info.pid, "port": info.port, "started": started}))
""")


def test_commands_started_at_the_same_instant_start_one_server():
    n = 6
    go = time.time() + 3.0  # every process is imported and waiting by then
    procs = [subprocess.Popen([sys.executable, "-c", _AT_ONCE, str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env()) for _ in range(n)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1000:] for o in outs]
    replies = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert len({r["pid"] for r in replies}) == 1, replies
    assert sum(r["started"] for r in replies) == 1, replies
    assert _server_starts() == 1
    assert "already serves" not in log_text(_dbpath() / LOG_FILE)  # no second server was even tried


def test_cli_commands_started_together_start_one_server():
    procs = [mongotune("studies") for _ in range(5)]
    assert [p.wait(180) for p in procs] == [0] * 5
    assert _server_starts() == 1
    assert find_server() is not None


def test_server_start_status_stop(tmp_path):
    r = run_cli("server", "status", "--json", timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["running"] is False

    r = run_cli("server", "start", timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("started embedded server pid"), r.stdout + r.stderr
    r = run_cli("server", "start", timeout=60)
    assert r.returncode == 0 and "already running" in r.stdout

    info = find_server()
    client = pymongo.MongoClient(info.url)
    client.mongotune.probe.insert_one({"x": 1})
    try:
        st = json.loads(run_cli("server", "status", "--json", timeout=60).stdout)
        assert st["running"] and st["pid"] == info.pid and st["port"] == info.port and st["mode"] == "background"
        assert st["dbpath"] == str(_dbpath()) and st["db_bytes"] > 0 and st["started_at"] <= time.time()
        mine = [c for c in st["clients"] if c["pid"] == os.getpid()]
        assert mine and len(mine[0]["addresses"]) >= 1 and st["connections"] >= 1, st
        text = run_cli("server", "status", timeout=60).stdout
        for piece in (f"pid {info.pid}", info.url, str(_dbpath()), "since", "on disk", f"pid {os.getpid()}"):
            assert piece in text, text

        r = run_cli("server", "stop", timeout=60)  # a client is connected: refused
        assert r.returncode == 2, r.stdout + r.stderr
        assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert f"pid {os.getpid()}" in r.stderr and find_server() is not None
    finally:
        client.close()
    wait_for(lambda: not (json.loads(run_cli("server", "status", "--json", timeout=60).stdout)["clients"]), 30,
             what="our connections to close")
    r = run_cli("server", "stop", timeout=60)
    assert r.returncode == 0 and f"stopped embedded server pid {info.pid}" in r.stdout, r.stdout + r.stderr
    assert not lock_held(_dbpath()) and not (_dbpath() / STATE_FILE).exists()
    r = run_cli("server", "stop", timeout=60)
    assert r.returncode == 0 and "no embedded server" in r.stdout


def test_stop_force_under_a_client():
    info, _ = ensure_server()
    client = pymongo.MongoClient(info.url)
    client.admin.command("ping")
    try:
        r = run_cli("server", "stop", "--force", timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert not lock_held(_dbpath())
    finally:
        client.close()


def test_idle_server_stops_itself_but_not_under_a_client(monkeypatch):
    monkeypatch.setenv("MONGOTUNE_SERVER_IDLE", "1.5")
    info, _ = ensure_server()
    client = pymongo.MongoClient(info.url)
    client.admin.command("ping")
    try:
        time.sleep(5.0)  # over three idle timeouts with a client connected
        assert find_server() is not None and find_server().pid == info.pid
    finally:
        client.close()
    wait_for(lambda: not lock_held(_dbpath()), 60, what="the idle server to stop")
    assert not (_dbpath() / STATE_FILE).exists()  # a clean stop: nobody restarts it
    assert "idle for" in log_text(_dbpath() / LOG_FILE)
    # the next command starts a new one
    r = run_cli("studies", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _server_starts() == 2


def test_server_start_idle_timeout_option():
    r = run_cli("server", "start", "--idle-timeout", "1", timeout=60)
    assert r.returncode == 0 and "stops after 1s" in r.stdout, r.stdout + r.stderr
    wait_for(lambda: not lock_held(_dbpath()), 60, what="the idle server to stop")


@pytest.mark.parametrize("args", [("server", "--port", "99999"), ("server", "run", "--port", "99999"),
                                  ("server", "start", "--port", "70000"), ("server", "start", "--idle-timeout", "-1")])
def test_bad_server_options_are_one_error_line(args):
    r = run_cli(*args, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert not lock_held(_dbpath())


def test_bad_port_environment_is_one_error_line():
    r = run_cli("studies", MONGOTUNE_SERVER_PORT="99999", timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_non_loopback_host_warns():
    r = run_cli("server", "start", "--host", "0.0.0.0", MONGOTUNE_SERVER_PORT="0", timeout=60)  # a free port
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warning:" in r.stderr and "no authentication" in r.stderr
    info = find_server()
    assert info.host == "0.0.0.0" and info.tcp_url.startswith("mongodb://127.0.0.1:")
    assert info.url.startswith("mongodb://%2F") and info.url.endswith("%2Fserver.sock/mongotune")
    r = run_cli("server", "start", timeout=60)  # no TCP asked: no warning, and it is the same server
    assert "warning" not in r.stderr and "already running" in r.stdout
    stop_server(force=True)


def test_a_taken_tcp_port_is_an_error_never_a_silent_move():
    """TCP asked on a port another program holds ($MONGOTUNE_SERVER_PORT or --port): one error line, no server
    on another port (before issue 19 the server took a free port, where clients holding a URL never looked)."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        for r in (run_cli("server", "start", MONGOTUNE_SERVER_PORT=str(taken), timeout=60),
                  run_cli("server", "start", "--port", str(taken), timeout=60)):
            assert r.returncode == 2 and r.stderr.startswith("error:") and "in use" in r.stderr, r.stderr
            assert find_server() is None and not lock_held(_dbpath())


def test_foreground_server_is_found_by_commands(tmp_path):
    fg = mongotune("server", "--port", "0", log=tmp_path / "fg.log")
    try:
        info = wait_for(find_server, 60, what="the foreground server")
        assert info.pid == fg.pid and info.mode == "foreground"
        r = run_cli("studies", timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert find_server().pid == fg.pid and not (_dbpath() / LOG_FILE).exists()  # no background one
        r = run_cli("server", "run", "--port", "0", timeout=60)  # a second server on the same directory
        assert r.returncode == 2 and "already serves" in r.stderr, r.stderr
        fg.send_signal(signal.SIGINT)
        assert fg.wait(30) == 0, log_text(tmp_path / "fg.log")
    finally:
        stop(fg, signal.SIGKILL)
    assert not (_dbpath() / STATE_FILE).exists()
