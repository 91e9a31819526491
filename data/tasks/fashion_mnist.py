"""Fashion-MNIST: 28x28 gray clothing images, pixels/255, 10 classes."""
from data import features
from data.spec import IMAGE, TaskSpec, register_task

INPUT_SHAPE = (28, 28, 1)
CLASS_NAMES = ("t_shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
               "sneaker", "bag", "ankle_boot")


def preprocess(image):
    """uint8 [28, 28, 1] -> float32 [28, 28, 1] in [0, 1]."""
    return features.scale_image(image)


SPEC = register_task(TaskSpec(
    name="fashion_mnist", kind=IMAGE, input_shape=INPUT_SHAPE, class_names=CLASS_NAMES,
    preprocess=preprocess, channels=1, tfds_name="fashion_mnist",
    default_model="lenet_300_100",
    tfds_splits={"train": "train[:90%]", "validation": "train[90%:]", "test": "test"},
))
