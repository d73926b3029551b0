"""A password never shows: not in errors, reprs or logs, not in `ps`, whatever characters it holds."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from authserver import AuthServer
from helpers import mongotune, run_cli, stop, wait_for
from mongotune.errors import ConnectionFailure
from mongotune.store import parse_mongo_url, redact

PASSWORDS = ["a/b", "a@b", "a:b", "a%b", "a#b", "a?b", "pässwörd", "p@ss/w#rd:x%y", "@@//::", "tr ail ", "%41%"]
SHAPES = [
    "mongodb://u:{pw}@h:1/db",
    "mongodb://u:{pw}@h:1",
    "mongodb://u:{pw}@h:1/?authSource=admin",
    "mongo://u:{pw}@h:1/db/jobs",
    "mongodb://u:{pw}@h1:1,h2:2/db?replicaSet=rs0&w=majority",
    "mongodb+srv://u:{pw}@cluster.example.net/db?retryWrites=true",
    "mongodb://u:{pw}@h:99999/db",  # bad port
    "mongodb://u:{pw}@/db",  # no host
    "mongodb://u:{pw}@h:1/x/y/z",  # bad path
    "mongodb://u:{pw}@h:1/d.b",  # bad database name
    "postgres://u:{pw}@h:1/db",  # unknown scheme
]


def _no_password(text: str, pw: str) -> bool:
    return pw not in text and pw.strip() not in text


@pytest.mark.parametrize("pw", PASSWORDS)
def test_no_url_shape_or_character_shows_the_password(pw):
    for shape in SHAPES:
        url = shape.format(pw=pw)
        assert _no_password(redact(url), pw), (url, redact(url))
        try:
            parsed = parse_mongo_url(url)
        except ConnectionFailure as exc:
            assert _no_password(str(exc), pw), (url, str(exc))
            continue
        assert parsed.password == pw or pw == "%41%"  # '%41%' is the percent-encoding of 'A%'
        assert _no_password(repr(parsed), pw) and _no_password(parsed.redacted, pw)


def test_cli_errors_never_show_the_password():
    from mongotune.store.embedded import free_port

    for pw in ("hunter2", "p@ss/w#rd", "a:b%c"):
        for url in (f"mongodb://u:{pw}@127.0.0.1:99999/db", f"mongodb://u:{pw}@127.0.0.1:{free_port()}/db",
                    f"ftp://u:{pw}@h/db"):
            r = run_cli("status", "s", "--mongo", url, timeout=60)
            assert r.returncode == 2 and r.stderr.startswith("error:"), r.stderr
            assert pw not in r.stdout + r.stderr, r.stderr


def _cmdline(pid: int) -> str:
    return (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")).decode(errors="replace")


def _environ(pid: int) -> str:
    return Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b"\n").decode(errors="replace")


def _descendants(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["argv", "env"])
def test_ps_of_launch_and_its_workers_never_shows_the_password(tmp_path, how):
    password = "p@ss/w#rd:x%y?"
    server = AuthServer(tmp_path / "authdb", "alice", password)
    try:
        url = server.url("pwtest")
        opts = "authSource=admin&authMechanism=SCRAM-SHA-256"  # as in server.url: SCRAM-SHA-256 is all it speaks
        args = ["launch", "x", "--study", "pw", "--objective", "synthetic", "--options", '{"sleep_s": 1.5}',
                "--max-evals", 4, "--workers", 2, "-q"]
        extra = {}
        if how == "argv":
            args += ["--mongo", url]
        else:  # the user name in the URL, the password in the environment
            extra = {"MONGOTUNE_MONGO": f"mongodb://alice@127.0.0.1:{server.port}/pwtest?{opts}",
                     "MONGOTUNE_MONGO_PASSWORD": password}
        log = tmp_path / "launch.log"
        launch = mongotune(*args, log=log, extra_env=extra)
        try:
            workers = wait_for(lambda: len(_descendants(launch.pid)) >= 2 and _descendants(launch.pid), 120, 0.2,
                               what="launch's two workers")
            time.sleep(3.0)  # the workers are up and training
            for pid in [launch.pid, *workers]:
                assert password not in _cmdline(pid), (pid, _cmdline(pid))
            for pid in workers:
                assert password not in _environ(pid), pid
            ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
            assert password not in ps
            assert launch.wait(180) == 0, log.read_text()[-3000:]
        finally:
            stop(launch)
        text = log.read_text()
        assert "4/4 trials finished" in text and password not in text
        for f in (Path(os.environ.get("MONGOTUNE_HOME", tmp_path)) / "logs").glob("*.log"):
            assert password not in f.read_text(errors="replace")
    finally:
        server.stop()
