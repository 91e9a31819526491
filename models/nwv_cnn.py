"""The five CNNs of the original weight-virtualization code (Lee & Nirjon 2020).

One parametrised builder, five registered argument sets. Architecture: VALID
convolutions, each followed by LeakyReLU(0.2) and 2x2/2 max-pooling; flatten;
dense layers with LeakyReLU(0.2); a final dense layer of logits. Layer names:
`conv1..convK`, `fc1..fcL`, `logits` (reference `.npz` files list the weighted
layers in that order as `weight_i`, `bias_i`).
"""
import keras
from keras import layers

from models.registry import ModelInfo, register_model


def nwv_cnn(input_shape, num_classes, *, filters, units=(128, 256), kernel_sizes=None,
            name="nwv_cnn"):
    """Builds a reference NWV CNN.

    Args:
      input_shape: (height, width, channels).
      num_classes: logits width.
      filters: output channels of each convolution.
      units: widths of the hidden dense layers.
      kernel_sizes: one (kh, kw) per convolution; 3x3 each by default.
    """
    kernel_sizes = kernel_sizes or [(3, 3)] * len(filters)
    if len(kernel_sizes) != len(filters):
        raise ValueError(f"expected one kernel size per conv layer ({len(filters)}), "
                         f"received {len(kernel_sizes)}")
    inputs = keras.Input(tuple(input_shape), name="input")
    x = inputs
    for i, (width, kernel) in enumerate(zip(filters, kernel_sizes), start=1):
        x = layers.Conv2D(width, tuple(kernel), padding="valid", name=f"conv{i}")(x)
        x = layers.LeakyReLU(negative_slope=0.2, name=f"conv{i}_act")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    for i, width in enumerate(units, start=1):
        x = layers.Dense(width, name=f"fc{i}")(x)
        x = layers.LeakyReLU(negative_slope=0.2, name=f"fc{i}_act")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


_VARIANTS = {
    # name: (task, input shape, classes, filters, kernel sizes, known accuracy)
    "mnist": ("mnist", (28, 28, 1), 10, (8, 16, 32), None, 0.9808),
    "cifar10": ("cifar10", (32, 32, 3), 10, (4, 8, 16), None, 0.5552),
    "svhn": ("svhn", (32, 32, 3), 10, (4, 8, 16), None, 0.8148),
    "gtsrb": ("gtsrb", (32, 32, 1), 43, (8, 16, 32), None, 0.9280),
    "gsc": ("speech_commands", (61, 13, 1), 35, (8, 16), [(12, 6), (6, 3)], 0.6947),
    # The GSC architecture for the 10-keyword synthetic speech set (no reference weights).
    "tts": ("tts_commands", (61, 13, 1), 10, (8, 16), [(12, 6), (6, 3)], None),
}

for _net, (_task, _shape, _classes, _filters, _kernels, _acc) in _VARIANTS.items():
    register_model(
        f"nwv_{_net}",
        ModelInfo(_shape, _classes, "conv1", default_task=_task,
                  reference_weights=f"{_net}.npz" if _acc else None,
                  reference_accuracy=_acc),
        input_shape=_shape, num_classes=_classes, filters=_filters,
        kernel_sizes=_kernels, name=f"nwv_{_net}",
    )(nwv_cnn)
