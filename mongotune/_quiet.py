"""Keep TensorFlow's native start-up chatter off the user's terminal.

TensorFlow's C++ runtime writes "Could not find cuda drivers" and similar
lines straight to file descriptor 2 while it loads, ignoring Python's
logging; a CLI error must stay one line.  ``import_keras_quietly`` loads Keras
(and its backend) with fd 2 pointed at /dev/null for the duration.
"""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def native_stderr_silenced():
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_keras_quietly():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with native_stderr_silenced():
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow

            tensorflow.config.list_physical_devices()  # probes CUDA now, quietly ("failed call to cuInit")
        from mongotune.models import load_zoo

        load_zoo()  # the model modules, and the custom layers they register
    return keras
