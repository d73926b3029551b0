"""mongotune: distributed hyper-parameter tuning of Keras image classifiers.

hyperopt's ``fmin`` suggests trials, MongoDB holds them, and a pool of worker
processes (one per GPU) trains them.  The public API is re-exported here; the
heavy modules (TensorFlow, Keras) are only imported when used.
"""

__version__ = "0.1.0"
