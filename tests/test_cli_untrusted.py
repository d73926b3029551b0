"""The CLI prints strings from the database as they are: rich markup in them is never interpreted.

A study name, metric name, parameter name, host or output line holding ``[bold]``/``[link=...]`` would
otherwise be restyled, or turned into a terminal hyperlink, and lose its brackets.  The documents are
written straight into the database (through the store's transitions), as anyone with write access can.
"""

from __future__ import annotations

import pytest

from helpers import db_of, one_line_error, queue_trials, run_cli

pytestmark = pytest.mark.timeout(300)

NAME = "[bold]cli[/bold]"
METRIC = "[red]m[/red]"
PARAM = "[link=https://evil.example]p[/link]"
HOST = "[blink]h[/blink]"
OUTPUT = "[reverse]out[/reverse]"


@pytest.fixture
def marked(mongo_url):
    from mongotune.store import encode
    from mongotune.store.studies import Study
    from mongotune.store.trialdoc import TrialStore
    from mongotune.store.workers import WorkerRegistry

    db = db_of(mongo_url)
    db.studies.insert_one(encode(Study(name=NAME, max_evals=3, objective={"kind": "synthetic"},
                                       metric={"name": METRIC, "goal": "min"}).to_doc()))
    queue_trials(mongo_url, NAME, [{PARAM: 0.1}, {PARAM: 0.2}])
    store, worker = TrialStore(db), {"id": "w1", "host": HOST, "pid": 7, "gpu": "0"}
    store.finish(store.reserve(worker, [f"mongotune:{NAME}"]), {"status": "ok", "loss": 0.5, METRIC: 0.5})
    store.heartbeat(store.reserve(worker, [f"mongotune:{NAME}"]), {"epoch": 1, "last_output": OUTPUT})
    WorkerRegistry(db).register({"_id": "w1", "host": HOST, "pid": 7, "gpu": "0", "study": NAME})
    yield mongo_url
    db.client.close()


def _out(*args) -> str:
    r = run_cli(*args, COLUMNS="400", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_status_studies_leaderboard_and_workers_print_database_strings_literally(marked):
    for text in (_out("studies", "--mongo", marked), _out("status", NAME, "--mongo", marked)):
        assert NAME in text and "[bold]" in text, text
    status = _out("status", NAME, "--mongo", marked)
    assert METRIC in status and PARAM in status and OUTPUT in status, status
    board = _out("leaderboard", NAME, "--mongo", marked)
    assert NAME in board and METRIC in board and PARAM in board, board
    assert HOST in _out("workers", "--mongo", marked)
    line = one_line_error(run_cli("status", "nosuch", "--mongo", marked, COLUMNS="400", timeout=120))
    assert NAME in line, line  # the known studies, named in the error
