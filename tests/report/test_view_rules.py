"""The rules the views share, on plain values: which trial is the best, the leaderboard's layout, timeline lanes."""

from __future__ import annotations

import datetime
import re

import pytest

from mongotune.report.charts import best_row, lane_labels, utilisation
from mongotune.report.leaderboard import abbreviate, board_lines
from mongotune.report.study_data import StudyInfo, TrialRow
from mongotune.store.best import metric_value, metric_fields, pick_best, rank_key

T0 = datetime.datetime(2026, 12, 6, 12, 0, 0)


def row(tid, state, loss=None, worker=None, start=0.0, end=None, **kw) -> TrialRow:
    return TrialRow(tid=tid, state=state, loss=loss, worker=worker,
                    started=T0 + datetime.timedelta(seconds=start),
                    ended=None if end is None else T0 + datetime.timedelta(seconds=end), **kw)


def test_the_best_trial_ran_to_its_end_unless_none_did():
    rows = [row(1, "ok", 0.3), row(2, "pruned", 0.1), row(3, "failed"), row(4, "ok", 0.2), row(5, "ok", 0.2),
            row(6, "running"), row(7, "queued")]
    info = StudyInfo("s")
    assert best_row(info, rows).tid == 4  # the lower tid of a tie; the pruned trial's loss is from its early stop
    assert best_row(info, [r for r in rows if r.state != "ok"]).tid == 2  # only then a pruned one
    assert best_row(info, [row(3, "failed"), row(6, "running")]) is None
    assert rank_key(float("nan"), False, 1) is None and rank_key(True, False, 1) is None
    facts = [(0.5, False, 9), (0.1, True, 1), (0.4, False, 3)]
    assert pick_best(facts, lambda f: f) == (0.4, False, 3)


def test_a_trials_metric_value_is_its_result_field_and_loss_is_the_loss():
    assert metric_value({"auc": 0.91, "loss": -0.91}, "auc", -0.91) == 0.91
    assert metric_value({"loss": 0.2}, "loss", 0.2) == 0.2
    assert metric_value({"auc": float("inf")}, "auc", 1.0) is None and metric_value({}, "auc", 1.0) is None
    assert metric_fields("auc") == ["result.auc"] and metric_fields("loss") == ["result.loss"]
    assert metric_fields("a.b") == ["result"] and metric_fields("$x") == ["result"]  # no path a reader can misread


def _board_rows(n: int) -> list[dict]:
    params = lambda i: {"learning_rate": 10 ** -(i % 4 + 1), "batch_size": 32, "units": 16 * (i + 1),  # noqa: E731
                        "optimizer": {"name": ["adam", "sgd"][i % 2], "momentum": 0.5 + i / 10},
                        "dropout_rate_of_the_dense_layers": i / 10, "activation": "relu", "augment": i % 3 == 0}
    return [{"tid": i + 1, "loss": -0.9 + i / 100, "metric": 0.9 - i / 100, "outcome": "pruned" if i == 2 else "ok",
             "pruned_at": 2, "epochs": 3, "seconds_per_epoch": 1.5, "params": params(i)} for i in range(n)]


@pytest.mark.parametrize("width", [80, 100, 200])
def test_the_leaderboard_fits_the_terminal_with_one_column_per_parameter(width):
    lines = board_lines(_board_rows(6), "val_accuracy", width)
    assert max(map(len, lines)) <= width and not any("{" in line for line in lines)
    blocks = "\n".join(lines).split("\n\n")
    tables = [b.splitlines() for b in blocks if b.lstrip().startswith("#")]
    headers = " ".join(t[0] for t in tables).split()
    # every varying parameter has its own column (nested ones flattened, long names abbreviated)
    for name in ("learning_rate", "units", "optimizer.name", "o.momentum", "dropout_rate_…", "augment"):
        assert name in headers, (name, headers)
    assert "same in every row: batch_size=32, activation=relu" in "\n".join(lines)
    assert "o.momentum=optimizer.momentum" in "\n".join(lines).replace("\n  ", " ")
    for table in tables:  # each block: a header and one line per trial, best first; values line up
        assert len(table) == 7 and table[1].split()[:2] == ["1", "1"] and "3 p@2" in table[3]
        right = table[0].index("val_accuracy") + len("val_accuracy")
        assert [re.search(r"0\.\d+", line).end() for line in table[1:]] == [right] * 6, table
    assert "p@N: pruned at step N" in lines


def test_the_leaderboard_of_one_trial_and_of_none():
    one = board_lines(_board_rows(1), "auc", 80)
    assert "learning_rate" in one[0] and "same in every row" not in "\n".join(one)  # one row: nothing is "constant"
    assert board_lines([], "auc", 80) == []
    assert abbreviate("optimizer.momentum") == "o.momentum" and abbreviate("units") == "units"
    assert abbreviate("x" * 30) == "x" * 13 + "…"


def test_two_cpu_workers_of_one_host_are_two_lanes():
    a = {"id": "host:1:aa", "host": "host", "gpu": "none", "pid": 1}
    b = {"id": "host:2:bb", "host": "host", "gpu": "none", "pid": 2}
    rows = [row(1, "ok", 0.1, a, 0, 10), row(2, "ok", 0.2, b, 0, 10), row(3, "ok", 0.3, a, 10, 20),
            row(4, "ok", 0.3, b, 10, 20)]
    u = utilisation(rows)
    assert u["lanes"] == 2 and u["utilisation"] == pytest.approx(1.0)
    labels = lane_labels(rows)
    assert labels == {"host:1:aa": "host · pid 1", "host:2:bb": "host · pid 2"}
    gpu = [row(1, "ok", 0.1, {"id": "h:1:x", "host": "h", "gpu": "0", "pid": 7}, 0, 1),
           row(2, "ok", 0.1, {"id": "h:1:y", "host": "h", "gpu": "0", "pid": 7}, 0, 1)]
    assert lane_labels(gpu) == {"h:1:x": "h · GPU 0 · pid 7 · h:1:x", "h:1:y": "h · GPU 0 · pid 7 · h:1:y"}
