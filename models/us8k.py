"""The UrbanSound8K CNN of Piczak (2015), input 60 mel bands x 41 frames x 2.

Channels: log-mel spectrogram and its delta. conv1 80@57x6 -> max-pool 4x3
(stride 1x3) -> conv2 80@1x3 -> max-pool 1x3 (stride 1x3) -> fc1, fc2 (5000
ReLU, dropout) -> logits (10 classes).
"""
import keras
from keras import layers

from models.registry import ModelInfo, register_model


@register_model("us8k", ModelInfo((60, 41, 2), 10, "conv1", default_task="us8k"))
def us8k(input_shape=(60, 41, 2), num_classes=10, *, filters=80, fc_units=5000,
         dropout=0.5):
    """Builds Piczak's environmental-sound CNN."""
    inputs = keras.Input(tuple(input_shape), name="input")
    x = layers.Conv2D(filters, (57, 6), activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D((4, 3), strides=(1, 3), name="pool1")(x)
    x = layers.Conv2D(filters, (1, 3), activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D((1, 3), strides=(1, 3), name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    for name in ("fc1", "fc2"):
        x = layers.Dense(fc_units, activation="relu", name=name)(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="us8k")
