"""Tasks derived from shared real data by relabelling (for many-network experiments).

Each is a source task plus a label map (-1 drops an example): no new files.
"""
from data.spec import TaskSpec, get, register_task


def _derive(name, source, class_names, label_map, default_model):
    base = get(source)
    return register_task(TaskSpec(
        name=name, kind=base.kind, input_shape=base.input_shape, class_names=class_names,
        preprocess=base.preprocess, augment=base.augment, batch_features=base.batch_features,
        channels=base.channels,
        tfds_name=base.tfds_name, tfds_splits=base.tfds_splits, tfds_keys=base.tfds_keys,
        default_model=default_model, source_task=source, label_map=tuple(label_map),
        sample_rate=base.sample_rate,
    ))


# MNIST: even vs odd; small (0-4) vs large (5-9) digits.
_derive("mnist_parity", "mnist", ("even", "odd"), [d % 2 for d in range(10)], "nwv_mnist")
_derive("mnist_lowhigh", "mnist", ("low", "high"), [int(d >= 5) for d in range(10)],
        "nwv_mnist")
# CIFAR-10: vehicles (airplane, automobile, ship, truck) vs animals.
_derive("cifar10_vehicles", "cifar10", ("animal", "vehicle"),
        [1, 1, 0, 0, 0, 0, 0, 0, 1, 1], "nwv_cifar10")
# CIFAR-10 animals only (6 classes).
_derive("cifar10_animals", "cifar10", ("bird", "cat", "deer", "dog", "frog", "horse"),
        [-1, -1, 0, 1, 2, 3, 4, 5, -1, -1], "nwv_cifar10")
# Keyword subsets of the synthetic speech set.
_derive("tts_directions", "tts_commands", ("up", "down", "left", "right"),
        [-1, -1, 0, 1, 2, 3, -1, -1, -1, -1], "nwv_tts")
_derive("tts_control", "tts_commands", ("yes", "no", "on", "off", "stop", "go"),
        [0, 1, -1, -1, -1, -1, 2, 3, 4, 5], "nwv_tts")
