"""Ranked trials of a study (``mongotune leaderboard``), and how they fit a terminal.

``leaderboard`` reads the rows (the store's ranking: its first row is the
study's best, ``store.best``).  ``board_lines`` lays them out as plain text
for a terminal of a given width: one column per parameter (nested params
flattened as ``opt.momentum``), values that line up down each column, and as
many column blocks as the width needs, each block repeating the rank, the
trial and the metric.  Long values are cut with an ellipsis and long names
abbreviated (``optimizer.momentum`` -> ``o.momentum``), with a legend.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..store import open_client
from ..store.studies import StudyStore
from ..store.trialdoc import TrialStore
from .study_data import flatten

MAX_VALUE = 14  # characters of a parameter's value before it is cut
MAX_NAME = 14  # characters of a parameter's name before it is abbreviated
GAP = "  "


def leaderboard(url: str, name: str, top: int = 10, *, include_pruned: bool = False,
                pareto: bool = False) -> tuple[dict, list[dict]]:
    """``(summary, rows)``: the study's metric and trial counts, and its best trials, best first.

    Each row holds the trial's loss, the study metric's value read from the
    trial's result (never derived from the loss), epochs, seconds per epoch
    and params (nested, as the trial has them); pruned trials are left out
    unless ``include_pruned`` or no trial ran to its end.  A study of several
    objectives adds each one's value (``values``), a study with constraints
    whether the trial meets them (``feasible``; infeasible trials rank last).
    ``pareto``: the rows are the study's whole Pareto front, in trial order
    (``TrialStore.front``), however many.
    """
    client, db, parsed = open_client(url)
    try:
        trials = TrialStore(db, db[parsed.collection])
        study = StudyStore(db).resolve(name, trials)
        if pareto:
            ranked, infeasible = trials.front(study.exp_key, study.objectives)
        else:
            # the first row is the study's best: a pruned trial when none ran to its end (store.best's rule)
            ranked = (trials.ranked(study.exp_key, top, include_pruned=include_pruned)
                      or trials.ranked(study.exp_key, top, include_pruned=True))
        rows = [_row(rec, study) for rec in ranked]
        summary = {"study": name, "objective": study.kind, "metric": study.metric,
                   "counts": trials.counts(study.exp_key).as_dict()}
        if study.metrics or study.constraints:
            summary.update(objectives=study.objectives, constraints=study.constraints)
        if pareto:
            summary.update(front=len(rows), infeasible=infeasible)
        return summary, rows
    finally:
        client.close()


def front_summary(trials: TrialStore, study) -> dict:
    """What ``status`` shows of a study of several objectives or with constraints: its objectives, its
    constraints, its Pareto front (each member's values) and how many finished trials break a constraint."""
    front, infeasible = trials.front(study.exp_key, study.objectives)
    names = [str(o["name"]) for o in study.objectives]
    return {"objectives": study.objectives, "constraints": study.constraints, "infeasible": infeasible,
            "front": [{"tid": r.tid, "values": {n: r.metric_value(n) for n in names}} for r in front]}


def _row(rec, study) -> dict:
    """One trial's row (see ``leaderboard``)."""
    r = rec.result
    row = {"tid": rec.tid, "loss": rec.loss, "metric": rec.metric_value(str(study.metric.get("name") or "loss")),
           "outcome": rec.outcome, "pruned_at": r.get("pruned_at"), "epochs": r.get("epochs"),
           "seconds_per_epoch": r.get("seconds_per_epoch"), "params": rec.param_values}
    if study.metrics:
        row["values"] = {str(o["name"]): rec.metric_value(str(o["name"])) for o in study.objectives}
    if study.constraints:
        row["feasible"] = rec.feasible
    return row


# ---------------------------------------------------------------- text layout
@dataclass
class Column:
    name: str  # as shown (maybe abbreviated)
    cells: list[str]
    right: bool  # numbers are right-aligned

    @property
    def width(self) -> int:
        return max([len(self.name), *map(len, self.cells)])

    def cell(self, i: int) -> str:
        text = self.name if i < 0 else self.cells[i]
        return text.rjust(self.width) if self.right else text.ljust(self.width)


def _value(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    text = f"{v:.4g}" if isinstance(v, float) else str(v)
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE - 1] + "…"


def _numeric(values: list) -> bool:
    return all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values)


def abbreviate(name: str, limit: int = MAX_NAME) -> str:
    """``optimizer.momentum`` -> ``o.momentum``: the leading parts of a long dotted name cut to their first
    letter, then the whole cut with an ellipsis if it is still longer than ``limit``."""
    if len(name) <= limit:
        return name
    parts = name.split(".")
    short = ".".join([p[:1] for p in parts[:-1]] + parts[-1:])
    return short if len(short) <= limit else short[:limit - 1] + "…"


def _key_columns(rows: list[dict], metric: str) -> tuple[list[Column], list[Column]]:
    """The columns every block repeats (rank, trial, the metric) and those only the first block shows."""
    def trial(r):
        return f"{r['tid']} p@{r['pruned_at']}" if r["outcome"] == "pruned" else str(r["tid"])

    keys = [Column("#", [str(i) for i in range(1, len(rows) + 1)], True),
            Column("trial", [trial(r) for r in rows], False),
            Column(abbreviate(metric, 20), [_value(r.get("metric")) for r in rows], True)]
    once = [Column(abbreviate(n, 20), [_value((r.get("values") or {}).get(n)) for r in rows], True)
            for n in list(rows[0].get("values") or {})[1:]]  # a study's other objectives
    if any("feasible" in r for r in rows):
        once.append(Column("feasible", ["yes" if r.get("feasible", True) else "NO" for r in rows], False))
    once += [] if metric == "loss" else [Column("loss", [_value(r.get("loss")) for r in rows], True)]
    for key, head in (("epochs", "epochs"), ("seconds_per_epoch", "s/epoch")):
        if any(r.get(key) is not None for r in rows):
            once.append(Column(head, [_value(r.get(key)) for r in rows], True))
    return keys, once


def _param_columns(rows: list[dict]) -> tuple[list[Column], dict[str, str], dict[str, str]]:
    """One column per parameter that differs between rows; ``(columns, constants, legend)``."""
    flat = [flatten(r.get("params") or {}) for r in rows]
    names = list(dict.fromkeys(k for f in flat for k in f))
    cols, constants, legend = [], {}, {}
    for name in names:
        values = [f.get(name) for f in flat]
        cells = [_value(v) for v in values]
        if len(rows) > 1 and len(set(cells)) == 1:
            constants[name] = cells[0]
            continue
        short = abbreviate(name)
        if short in legend or short in names:  # two names would read alike: keep this one whole
            short = name
        elif short != name:
            legend[short] = name
        cols.append(Column(short, cells, _numeric(values)))
    return cols, constants, legend


def _blocks(keys: list[Column], once: list[Column], params: list[Column], width: int) -> list[list[Column]]:
    """The columns in blocks that fit ``width``: each block the key columns, the first also ``once``, then
    as many parameter columns, in order, as fit (at least one)."""
    blocks: list[list[Column]] = [keys + once]
    for c in params:
        used = sum(x.width + len(GAP) for x in blocks[-1])
        if len(blocks[-1]) > len(keys) + (len(once) if len(blocks) == 1 else 0) and used + c.width > width:
            blocks.append(list(keys))
        blocks[-1].append(c)
    return blocks


def _wrapped(label: str, items: dict[str, str], width: int) -> list[str]:
    import textwrap

    text = label + ", ".join(f"{k}={v}" for k, v in items.items())
    return textwrap.wrap(text, width=max(width, 20), subsequent_indent="  ", break_long_words=False,
                         break_on_hyphens=False)


def board_lines(rows: list[dict], metric: str, width: int = 80) -> list[str]:
    """The leaderboard as lines of at most ``width`` characters (unless its key columns alone are wider):
    blocks of columns with a blank line between them, then the parameters that are the same in every row,
    and the legend of abbreviated names."""
    if not rows:
        return []
    keys, once = _key_columns(rows, metric)
    params, constants, legend = _param_columns(rows)
    lines: list[str] = []
    for n, block in enumerate(_blocks(keys, once, params, width)):
        if n:
            lines.append("")
        for i in range(-1, len(rows)):
            lines.append(GAP.join(c.cell(i) for c in block).rstrip())
    lines.append("")
    if constants:
        lines += _wrapped("same in every row: ", constants, width)
    if legend:
        lines += _wrapped("abbreviated: ", legend, width)
    if any(r["outcome"] == "pruned" for r in rows):
        lines.append("p@N: pruned at step N")
    return lines if lines[-1] else lines[:-1]
