"""Your own Keras model on the pool: ``mongotune launch --model-fn my_model:build_model``.

mongotune calls ``build_model(params, input_shape, num_classes)`` once per trial
with that trial's params (from the study's ``--space``), the images' shape
(height, width, channels; raw uint8 pixels) and the number of classes, and
trains what it returns like any built-in model: early stopping, per-class
metrics, learning curves, pruning, ``mongotune final``.  Return an uncompiled
model with one output, a softmax over ``num_classes``: mongotune compiles it
with the params' ``optimizer`` (default adam) and ``learning_rate`` (default 1e-3).

The module must be importable where the workers run (installed, or its folder
on PYTHONPATH), and the workers must be started with ``--allow-user-code``
(``launch --workers`` does that for the workers it starts).
"""

import keras


def build_model(params, input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    for i in range(int(params["conv_blocks"])):
        x = keras.layers.Conv2D(int(params["filters"]) * 2 ** i, 3, padding="same", activation="relu")(x)
        if min(x.shape[1], x.shape[2]) >= 4:
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(float(params["dropout"]))(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="my_model")
