"""How a study's progress reads on the terminal (a live table, one line per change, the best so far)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text


def progress_table(snap) -> Table:
    c = snap.counts
    t = Table(title=Text(f"study {snap.name}"), show_header=True, header_style="bold")
    for col in ("done", "ok", "pruned", "failed", "running", "queued", "workers", "best", "elapsed"):
        t.add_column(col)
    t.add_row(f"{snap.finished}/{snap.max_evals}", str(c.get("ok", 0)), str(c.get("pruned", 0)),
              str(c.get("failed", 0) + c.get("error", 0)), str(c.get("running", 0)), str(c.get("queued", 0)),
              str(snap.live_workers), Text(best_text(snap)), f"{snap.elapsed_s:.0f}s")
    return t


def best_text(snap) -> str:
    """Plain text (the metric's name comes from the database): print it with ``markup=False`` or as ``Text``."""
    if snap.best_tid is None:
        return "-"
    name = snap.metric.get("name", "metric")
    if snap.best_metric is not None and name != "loss":
        return f"{name} {snap.best_metric:.4g} (trial {snap.best_tid})"
    return f"loss {snap.best_loss:.5g} (trial {snap.best_tid})"


def progress_line(snap) -> str:
    """Plain text, like ``best_text``: print it with ``markup=False``."""
    c = snap.counts
    failed = c.get("failed", 0) + c.get("error", 0)
    return (f"[{snap.elapsed_s:6.0f}s] {snap.finished}/{snap.max_evals} done ({c.get('pruned', 0)} pruned, "
            f"{failed} failed), {c.get('running', 0)} running, {c.get('queued', 0)} queued, "
            f"{snap.live_workers} workers, best {best_text(snap)}")
