"""LeNet-300-100 and LeNet-5 (Caffe variant), the MTZ paper's MNIST networks.

Parameter counts: LeNet-300-100 266,610; LeNet-5 431,080.
"""
import keras
from keras import layers

from models.registry import ModelInfo, register_model


@register_model("lenet_300_100", ModelInfo((28, 28, 1), 10, "fc1", default_task="mnist"))
def lenet_300_100(input_shape=(28, 28, 1), num_classes=10, units=(300, 100)):
    """Fully connected LeNet: flatten -> fc1 (300, ReLU) -> fc2 (100, ReLU) -> logits."""
    inputs = keras.Input(input_shape, name="input")
    x = layers.Flatten(name="flatten")(inputs)
    for i, width in enumerate(units, start=1):
        x = layers.Dense(width, activation="relu", name=f"fc{i}")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="lenet_300_100")


@register_model("lenet5", ModelInfo((28, 28, 1), 10, "conv1", default_task="mnist"))
def lenet5(input_shape=(28, 28, 1), num_classes=10, filters=(20, 50), units=500):
    """LeNet-5 (Caffe): conv1 5x5x20, pool, conv2 5x5x50, pool, fc1 500 ReLU, logits."""
    inputs = keras.Input(input_shape, name="input")
    x = inputs
    for i, width in enumerate(filters, start=1):
        x = layers.Conv2D(width, 5, name=f"conv{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(units, activation="relu", name="fc1")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="lenet5")
