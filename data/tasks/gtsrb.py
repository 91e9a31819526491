"""GTSRB traffic signs: gray 32x32, each image L2-normalised, 43 classes (`00000`..).

TFDS has no GTSRB builder; use a local folder (the Visual Decathlon's `vdd_gtsrb`
task is the TFDS-backed alternative). Class folders are the official 5-digit ids.
"""

from data import features
from data.spec import IMAGE, TaskSpec, register_task

INPUT_SHAPE = (32, 32, 1)
CLASS_NAMES = tuple(f"{c:05d}" for c in range(43))


def preprocess(image):
    """uint8 [H, W, 1] -> float32 [32, 32, 1], resized, L2-normalised per image."""
    return features.l2_normalize(features.scale_image(image, INPUT_SHAPE[:2]))


SPEC = register_task(TaskSpec(
    name="gtsrb", kind=IMAGE, input_shape=INPUT_SHAPE, class_names=CLASS_NAMES,
    preprocess=preprocess, channels=1, tfds_name=None, default_model="nwv_gtsrb",
))

