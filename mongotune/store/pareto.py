"""Several objectives: a trial's values of them, the Pareto front of a study and its hypervolume.

A study's objectives are ``Study.objectives`` (``[{"name", "goal"}, ...]``; a study of one metric has
one).  A finished trial's ``result`` holds ``losses``, one per objective, each oriented so that lower is
better (a maximised metric negated; ``loss`` is the first), and, where the study has constraints,
``constraints``: one value per constraint, ``value - bound`` for ``<=`` and ``bound - value`` for ``>=``,
so <= 0 when it is satisfied (``best.feasible``).

The front is the set of feasible trials that ran to their end and that no other such trial dominates
(as good in every objective and better in one).  Its hypervolume is measured in a normalised space:
each objective scaled from the best to the worst value any of those trials reached, the reference point
10 % beyond the worst, so a front scores between 0 and 1.1^k whatever the units (accuracy against
parameters).

Pure functions and no imports beyond the standard library: the store's queries, the CLI and the views'
rows use the very same code.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence, TypeVar

from .best import feasible, finite, metric_value

T = TypeVar("T")

OPS = ("<=", ">=")
REFERENCE_MARGIN = 0.1  # the hypervolume's reference point: this fraction of each objective's range beyond its worst


def orient(value: float, goal: str) -> float:
    """``value`` as a loss (lower is better): negated when the metric is maximised."""
    return -value if goal == "max" else value


def constraint_value(constraint: dict, value: float) -> float:
    """A constraint's value for a metric's ``value``: <= 0 when satisfied."""
    bound = float(constraint["bound"])
    return value - bound if constraint["op"] == "<=" else bound - value


def constraint_text(constraint: dict) -> str:
    """``params<=2e+06`` as a person reads it."""
    return f"{constraint.get('metric')}{constraint.get('op')}{float(constraint.get('bound')):g}"


def metric_names(objectives: Sequence[dict], constraints: Sequence[dict] = ()) -> list[str]:
    """Every metric a study's trials must report: its objectives', then its constraints', once each."""
    return list(dict.fromkeys([str(o["name"]) for o in objectives] + [str(c["metric"]) for c in constraints]))


def values_of(result: dict | None, names: Iterable[str]) -> dict[str, float | None]:
    """A finished trial's value of each metric in ``names`` (``loss``: its loss), None where it has none."""
    result = result or {}
    loss = finite(result.get("loss"))
    return {n: metric_value(result, n, loss) for n in names}


def losses_of(result: dict | None, objectives: Sequence[dict]) -> tuple[float, ...] | None:
    """The trial's losses, one per objective: its ``result.losses`` when it has them, else each metric's value
    oriented by its goal; None when one is missing or not finite."""
    result = result or {}
    raw = result.get("losses")
    if isinstance(raw, list) and len(raw) == len(objectives):
        got = tuple(finite(v) for v in raw)
        if all(v is not None for v in got):
            return got  # type: ignore[return-value]
    values = values_of(result, [str(o["name"]) for o in objectives])
    out = []
    for o in objectives:
        v = values[str(o["name"])]
        if v is None:
            return None
        out.append(orient(v, str(o.get("goal", "min"))))
    return tuple(out)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Is ``a`` at least as good as ``b`` in every objective and better in one (lower is better)?"""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def front(items: Iterable[T], point: Callable[[T], Sequence[float] | None]) -> list[T]:
    """The items no other item dominates, in the order given; items whose ``point`` is None are left out.
    Items at the very same point are all on the front."""
    pts = [(item, tuple(p)) for item in items if (p := point(item)) is not None]
    ordered = sorted(range(len(pts)), key=lambda i: pts[i][1])
    kept: list[int] = []
    for i in ordered:  # sorted: an item can only be dominated by one before it
        if not any(dominates(pts[j][1], pts[i][1]) for j in kept):
            kept.append(i)
    keep = set(kept)
    return [item for i, (item, _) in enumerate(pts) if i in keep]


def feasible_complete(result: dict | None, outcome: str) -> bool:
    """Can the trial be on the front: it ran to its end (not pruned, not failed) and meets every constraint?"""
    return outcome == "ok" and feasible(result)


# ---------------------------------------------------------------- hypervolume
def hypervolume(points: Sequence[Sequence[float]], ref: Sequence[float]) -> float:
    """The volume dominated by ``points`` (lower is better) inside the box up to ``ref``; exact, by slicing
    along the last objective (fine for the fronts of a study: tens of points, a few objectives)."""
    inside = [tuple(p) for p in points if all(x < r for x, r in zip(p, ref))]
    if not inside:
        return 0.0
    dims = len(ref)
    if dims == 1:
        return ref[0] - min(p[0] for p in inside)
    if dims == 2:
        area, last = 0.0, ref[1]
        for x, y in sorted(inside):
            if y < last:
                area += (ref[0] - x) * (last - y)
                last = y
        return area
    inside.sort(key=lambda p: p[-1])
    volume = 0.0
    for i, p in enumerate(inside):
        top = inside[i + 1][-1] if i + 1 < len(inside) else ref[-1]
        if top > p[-1]:
            volume += hypervolume([q[:-1] for q in inside[:i + 1]], ref[:-1]) * (top - p[-1])
    return volume


def normaliser(points: Sequence[Sequence[float]]) -> Callable[[Sequence[float]], tuple[float, ...]]:
    """Scale each objective from the best to the worst value in ``points`` onto [0, 1] (a constant one to 0)."""
    low = [min(p[i] for p in points) for i in range(len(points[0]))]
    high = [max(p[i] for p in points) for i in range(len(points[0]))]
    spans = [(h - lo) or 1.0 for lo, h in zip(low, high)]
    return lambda p: tuple((x - lo) / s for x, lo, s in zip(p, low, spans))


def hypervolume_history(points: Sequence[Sequence[float] | None]) -> list[float | None]:
    """For points in the order trials finished (None: a trial that cannot be on the front), the normalised
    hypervolume of the front of those so far (None until the first feasible trial)."""
    known = [p for p in points if p is not None]
    if not known:
        return [None] * len(points)
    scale = normaliser(known)
    ref = [1.0 + REFERENCE_MARGIN] * len(known[0])
    current: list[tuple[float, ...]] = []
    out: list[float | None] = []
    volume: float | None = None
    for p in points:
        if p is not None:
            q = scale(p)
            if not any(dominates(c, q) or c == q for c in current):
                current = [c for c in current if not dominates(q, c)] + [q]
                volume = hypervolume(current, ref)
            elif volume is None:
                volume = hypervolume(current, ref)
        out.append(volume)
    return out
