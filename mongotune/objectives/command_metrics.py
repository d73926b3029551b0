"""A command's metric: readings found in its output lines, aggregated, and handed to the worker coalesced.

Lines: ``val_accuracy=0.91``, ``val_accuracy: 0.91`` (Keras progress lines),
or a JSON object per line (``{"val_accuracy": 0.9, "step": 3}``).  A name
only matches whole.  ``Reporter`` hands readings to the worker (a database
write and a pruning question each) in a burst of ``REPORT_BURST``, then at
most ``REPORT_RATE`` a second, the latest reading kept for its turn.
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

from ..errors import ConfigError

AGGREGATIONS = ("last", "max", "min", "mean")
REPORT_BURST = 5  # readings handed to the worker at once ...
REPORT_RATE = 4.0  # ... then at most this many a second (the latest waits its turn; the last always goes)

_NUMBER = r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf(?:inity)?)"


class MetricParser:
    """Finds readings of one metric in output lines; numbers them into steps."""

    def __init__(self, metric: str):
        self.metric = metric
        name = re.escape(metric)
        self._text = re.compile(rf"(?<![\w.]){name}\s*[=:]\s*({_NUMBER})(?![\w.])", re.IGNORECASE)
        self._last_step: int | None = None

    def parse(self, line: str) -> tuple[int, float] | None:
        """``(step, value)`` if the line carries a reading, else None."""
        value: float | None = None
        step: Any = None
        s = line.strip()
        if s.startswith("{") and s.endswith("}"):
            try:
                obj = json.loads(s)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                raw = obj.get(self.metric)
                if isinstance(raw, (int, float)) and not isinstance(raw, bool):
                    value = float(raw)
                    step = obj.get("step", obj.get("epoch"))
                else:
                    return None
        if value is None:
            found = self._text.findall(line)
            if not found:
                return None
            value = float(found[-1])
        if isinstance(step, (int, float)) and not isinstance(step, bool) and math.isfinite(step):
            step = int(step)
        else:
            step = 1 if self._last_step is None else self._last_step + 1
        self._last_step = step
        return step, value


def aggregate(values: list[float], how: str) -> float:
    if how == "last":
        return values[-1]
    if how == "max":
        return max(values)
    if how == "min":
        return min(values)
    if how == "mean":
        return sum(values) / len(values)
    raise ConfigError(f"metric aggregation: {how!r} is not one of {', '.join(AGGREGATIONS)}")


class Readings:
    """A run's readings of its metric, aggregated as they come: constant memory, however many there are."""

    def __init__(self):
        self.count, self.total, self.low, self.high = 0, 0.0, math.inf, -math.inf
        self.last: tuple[int, float] | None = None

    def add(self, step: int, value: float) -> None:
        self.count += 1
        self.total += value
        self.low, self.high = min(self.low, value), max(self.high, value)
        self.last = (step, value)

    def value(self, how: str) -> float:
        if how not in AGGREGATIONS:
            raise ConfigError(f"metric aggregation: {how!r} is not one of {', '.join(AGGREGATIONS)}")
        return {"last": self.last[1] if self.last else math.nan, "max": self.high, "min": self.low,
                "mean": self.total / self.count if self.count else math.nan}[how]


class Reporter:
    """Hands readings to ``ctx.report_step`` (a database write and a pruning question each), coalesced.

    A burst of REPORT_BURST goes at once, then at most REPORT_RATE a second: a reading that comes sooner
    waits, replaced by any later one, and goes when its turn comes (``flush``; the last one always goes at
    the end).  A reading at a step where the pruner must see the value (``ctx.extra["must_report"]``:
    ASHA's rungs) goes at once.
    """

    def __init__(self, ctx, rate: float = REPORT_RATE, burst: int = REPORT_BURST):
        self.ctx, self.rate, self.burst = ctx, rate, burst
        self.tokens, self.at = float(burst), time.monotonic()
        self.waiting: tuple[int, float] | None = None
        self.sent: tuple[int, float] | None = None
        self.must = (getattr(ctx, "extra", None) or {}).get("must_report")

    def offer(self, step: int, value: float) -> bool:
        """Take a reading; True: the pruner stops the trial (at this reading)."""
        self.waiting = (step, value)
        if self.must is not None and self.must(step):
            return self.flush()
        return self.flush(due_only=True)

    def flush(self, due_only: bool = False) -> bool:
        """Send the waiting reading (``due_only``: if its turn has come); True: the pruner says stop."""
        if self.waiting is None:
            return False
        now = time.monotonic()
        self.tokens, self.at = min(float(self.burst), self.tokens + (now - self.at) * self.rate), now
        if due_only and self.tokens < 1.0:
            return False
        self.sent, self.waiting = self.waiting, None
        self.tokens -= 1.0
        return bool(self.ctx.report_step(*self.sent))
