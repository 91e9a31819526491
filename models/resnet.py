"""Wide-ResNet-28-k (Zagoruyko & Komodakis 2016), the MTZ paper's residual network.

Post-activation blocks (conv -> BN -> ReLU -> conv -> BN, + shortcut, ReLU) so
every convolution is directly followed by its batch norm and can be folded
exactly before zipping; the original WRN uses pre-activation blocks. Depth 28
gives 3 groups of 4 blocks with 16k, 32k, 64k channels. Names: `conv0`,
`g{G}b{B}_conv1/_bn1/_conv2/_bn2`, `g{G}b{B}_proj/_proj_bn` (1x1 shortcut when
the shape changes), `g{G}b{B}_add`, `pool`, `logits`.
"""
import keras
from keras import layers

from models.registry import ModelInfo, register_model


def _conv_bn(x, channels, kernel, strides, name, bn_name):
    x = layers.Conv2D(channels, kernel, strides=strides, padding="same",
                      use_bias=True, name=name)(x)
    return layers.BatchNormalization(name=bn_name)(x)


@register_model("resnet28", ModelInfo((32, 32, 3), 10, "conv0"))
def resnet28(input_shape=(32, 32, 3), num_classes=10, *, k=10, depth=28, base=16):
    """Builds a Wide-ResNet-`depth`-`k` with batch norm.

    Args:
      k: widening factor (channels 16k, 32k, 64k); `base` scales all widths.
      depth: 6n + 4 layers, n blocks per group.
    """
    if (depth - 4) % 6:
        raise ValueError(f"expected depth = 6n + 4, received {depth}")
    blocks = (depth - 4) // 6
    inputs = keras.Input(tuple(input_shape), name="input")
    x = _conv_bn(inputs, base, 3, 1, "conv0", "conv0_bn")
    x = layers.ReLU(name="conv0_relu")(x)
    for g, channels in enumerate((base * k, 2 * base * k, 4 * base * k), start=1):
        for b in range(1, blocks + 1):
            p = f"g{g}b{b}"
            strides = 2 if (b == 1 and g > 1) else 1
            y = _conv_bn(x, channels, 3, strides, f"{p}_conv1", f"{p}_bn1")
            y = layers.ReLU(name=f"{p}_relu1")(y)
            y = _conv_bn(y, channels, 3, 1, f"{p}_conv2", f"{p}_bn2")
            if strides != 1 or x.shape[-1] != channels:
                x = _conv_bn(x, channels, 1, strides, f"{p}_proj", f"{p}_proj_bn")
            x = layers.Add(name=f"{p}_add")([x, y])
            x = layers.ReLU(name=f"{p}_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"wrn{depth}_{k}")
