"""MNIST handwritten digits: 28x28 gray, pixels/255, 10 classes (folders `0`..`9`)."""
from data import features
from data.spec import IMAGE, TaskSpec, register_task

INPUT_SHAPE = (28, 28, 1)
CLASS_NAMES = tuple(str(d) for d in range(10))


def preprocess(image):
    """uint8 [28, 28, 1] -> float32 [28, 28, 1] in [0, 1]."""
    return features.scale_image(image)


SPEC = register_task(TaskSpec(
    name="mnist", kind=IMAGE, input_shape=INPUT_SHAPE, class_names=CLASS_NAMES,
    preprocess=preprocess, channels=1, tfds_name="mnist", default_model="nwv_mnist",
    tfds_splits={"train": "train[:90%]", "validation": "train[90%:]", "test": "test"},
))
