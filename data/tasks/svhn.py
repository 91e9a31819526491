"""SVHN (cropped digits): 32x32 RGB, pixels/255, 10 classes (folders `0`..`9`)."""
from data import features
from data.spec import IMAGE, TaskSpec, register_task

INPUT_SHAPE = (32, 32, 3)
CLASS_NAMES = tuple(str(d) for d in range(10))


def preprocess(image):
    """uint8 [32, 32, 3] -> float32 [32, 32, 3] in [0, 1]."""
    return features.scale_image(image)


SPEC = register_task(TaskSpec(
    name="svhn", kind=IMAGE, input_shape=INPUT_SHAPE, class_names=CLASS_NAMES,
    preprocess=preprocess, channels=3, tfds_name="svhn_cropped", default_model="nwv_svhn",
    tfds_splits={"train": "train[:90%]", "validation": "train[90%:]", "test": "test"},
))
