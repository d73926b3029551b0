"""The envelope pruner's rule on hand-made curves (the real-pool pruning tests are in tests/test_pruning.py)."""

from __future__ import annotations

import pytest

from mongotune.errors import ConfigError
from mongotune.search.pruners import EnvelopePruner, StudyCurves, TrialCurve, make_pruner


def _curve(tid, values, *, finished=True, pruned=False):
    return TrialCurve(tid, {i + 1: v for i, v in enumerate(values)}, finished, pruned)


def _study(leaders, candidate):
    curves = StudyCurves({c.tid: c for c in leaders})
    curves.trials[candidate.tid] = candidate
    return curves


SLOW_WINNERS = [_curve(1, [0.9, 0.6, 0.2]), _curve(2, [0.8, 0.5, 0.25]), _curve(3, [0.85, 0.55, 0.3])]
FAST_WINNERS = [_curve(1, [0.3, 0.25, 0.2]), _curve(2, [0.35, 0.3, 0.25]), _curve(3, [0.4, 0.33, 0.3])]


def test_a_slow_starter_survives_where_the_winners_started_slowly():
    slow = _curve(9, [0.7], finished=False)  # worse than the median of anyone's first epoch would suggest
    prune, why = EnvelopePruner().decision(_study(SLOW_WINNERS, slow), 9, 1)
    assert not prune and why["bar"] == 0.9 and why["leaders"] == [1, 2, 3]


def test_the_same_reading_is_stopped_where_the_winners_led_from_the_start():
    slow = _curve(9, [0.7], finished=False)
    prune, why = EnvelopePruner().decision(_study(FAST_WINNERS, slow), 9, 1)
    assert prune and why == {"pruner": "envelope", "step": 1, "value": 0.7, "bar": 0.4, "leaders": [1, 2, 3],
                             "complete": 3}


def test_no_decision_before_enough_trials_completed_or_before_min_epochs():
    pruned_ones = [_curve(4, [0.1], pruned=True), _curve(5, [0.1], finished=False)]  # neither counts as complete
    bad = _curve(9, [5.0, 5.0], finished=False)
    assert not EnvelopePruner().decision(_study(FAST_WINNERS[:2] + pruned_ones, bad), 9, 1)[0]
    assert not EnvelopePruner(min_epochs=2).decision(_study(FAST_WINNERS, bad), 9, 1)[0]
    assert EnvelopePruner(min_epochs=2).decision(_study(FAST_WINNERS, bad), 9, 2)[0]


def test_leaders_are_the_top_complete_trials_by_their_best_reading():
    field = FAST_WINNERS + [_curve(6, [0.2, 0.1, 0.05])]  # a new best: the worst of the old three drops out
    prune, why = EnvelopePruner(top=3).decision(_study(field, _curve(9, [0.38], finished=False)), 9, 1)
    assert why["leaders"] == [6, 1, 2] and why["bar"] == 0.35 and prune
    assert EnvelopePruner(top=1).decision(_study(field, _curve(9, [0.25], finished=False)), 9, 1)[1]["bar"] == 0.2


def test_envelope_settings_are_checked():
    assert make_pruner({"kind": "envelope"}).describe().startswith("envelope (from epoch 1")
    with pytest.raises(ConfigError, match="--top must be an integer >= 1"):
        make_pruner({"kind": "envelope", "top": 0})
