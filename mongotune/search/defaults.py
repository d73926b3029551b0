"""What a study searches with when it names nothing else (no imports: the CLI reads this before anything heavy).

``ALGORITHM`` is re-exported as ``mongotune.search.algorithms.DEFAULT``; the
benchmarks behind each choice are in the README ("Search algorithms").
"""

ALGORITHM = "optuna-tpe"
#: every algorithm's name, in the order errors list them (``algorithms.ALGORITHMS`` holds each with its options;
#: a test keeps the two the same); here so ``launch`` checks a name before hyperopt loads
ALGORITHM_NAMES = ("optuna-tpe", "nsga2", "tpe", "rand", "anneal", "grid", "gp")

#: the pruner ``mongotune launch`` uses without ``--pruner`` (``--pruner none`` turns pruning off)
PRUNER = {"kind": "envelope", "min_epochs": 1}
