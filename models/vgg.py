"""VGG-16 (Simonyan & Zisserman 2015), the MTZ paper's ImageNet/CelebA network.

Input size, width multiplier, classifier widths and batch norm are configurable
so that tests can build a small one, e.g. `build("vgg16", input_shape=(32, 32, 3),
width=0.0625, fc_units=32)`. Layer names follow the paper: `conv1_1 .. conv5_3`,
`pool1 .. pool5`, `fc6`, `fc7`, `logits`.
"""
import keras
from keras import layers

from models.registry import ModelInfo, register_model

_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


@register_model("vgg16", ModelInfo((224, 224, 3), 1000, "conv1_1"))
def vgg16(input_shape=(224, 224, 3), num_classes=1000, *, width=1.0, fc_units=4096,
          batch_norm=False, dropout=0.5):
    """Builds VGG-16: 13 3x3 SAME convolutions in 5 blocks, fc6, fc7, logits.

    Args:
      width: multiplier on every convolution's channel count (≥ 1 channel).
      fc_units: width of fc6 and fc7.
      batch_norm: add `convX_Y_bn` after each convolution (before ReLU).
    """
    if width <= 0:
        raise ValueError(f"expected width > 0, received {width}")
    inputs = keras.Input(tuple(input_shape), name="input")
    x = inputs
    for b, (channels, repeat) in enumerate(_BLOCKS, start=1):
        for r in range(1, repeat + 1):
            name = f"conv{b}_{r}"
            x = layers.Conv2D(max(1, int(channels * width)), 3, padding="same",
                              name=name)(x)
            if batch_norm:
                x = layers.BatchNormalization(name=f"{name}_bn")(x)
            x = layers.ReLU(name=f"{name}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"pool{b}")(x)
    x = layers.Flatten(name="flatten")(x)
    for name in ("fc6", "fc7"):
        x = layers.Dense(fc_units, activation="relu", name=name)(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="vgg16")
