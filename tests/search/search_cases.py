"""Spaces and objectives shared by the search-algorithm tests."""

from __future__ import annotations

import math

from hyperopt import hp
from hyperopt.pyll import scope


def mixed_space():
    """log, integer (quniform), a choice, and a choice nested in one of its options."""
    return {
        "lr": hp.loguniform("lr", math.log(1e-4), math.log(1.0)),
        "units": scope.int(hp.quniform("units", 8, 64, 8)),
        "opt": hp.choice("opt", [
            {"name": "adam"},
            {"name": "sgd", "momentum": hp.uniform("momentum", 0.0, 1.0),
             "schedule": hp.choice("schedule", [
                 {"kind": "const"},
                 {"kind": "step", "drop": hp.quniform("drop", 0.1, 0.9, 0.1)}])},
        ]),
    }


def mixed_loss(p: dict) -> float:
    """0 at lr=1e-2, units=32, sgd with momentum 0.9 and a step schedule dropping by 0.5."""
    loss = (math.log10(p["lr"]) + 2.0) ** 2 + ((p["units"] - 32) / 16.0) ** 2
    opt = p["opt"]
    if opt["name"] == "adam":
        return loss + 1.0
    assert isinstance(opt["momentum"], float)
    loss += 2.0 * (opt["momentum"] - 0.9) ** 2
    if opt["schedule"]["kind"] == "const":
        assert set(opt["schedule"]) == {"kind"}
        return loss + 0.3
    return loss + 2.0 * (opt["schedule"]["drop"] - 0.5) ** 2


def check_consistent(doc: dict) -> None:
    """A trial's vals hold exactly the dimensions active under its own choices."""
    vals = doc["misc"]["vals"]
    assert set(vals) == {"lr", "units", "opt", "momentum", "schedule", "drop"}
    assert len(vals["lr"]) == len(vals["units"]) == len(vals["opt"]) == 1
    sgd = vals["opt"][0] == 1
    assert len(vals["momentum"]) == len(vals["schedule"]) == int(sgd)
    step = sgd and vals["schedule"][0] == 1
    assert len(vals["drop"]) == int(step)
    assert all(doc["misc"]["idxs"][k] == ([doc["tid"]] if v else []) for k, v in vals.items())
