"""What a study searches with when it names nothing else (no imports: the CLI reads this before anything heavy).

``ALGORITHM`` is re-exported as ``mongotune.search.algorithms.DEFAULT``; the
benchmarks behind each choice are in the README ("Search algorithms").
"""

ALGORITHM = "optuna-tpe"

#: the pruner ``mongotune launch`` uses without ``--pruner`` (``--pruner none`` turns pruning off)
PRUNER = {"kind": "asha", "min_epochs": 1, "reduction_factor": 3}
