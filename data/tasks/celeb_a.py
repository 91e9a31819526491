"""CelebA: 40 binary face attributes (multi-label, sigmoid head), 64x64 RGB crops.

Accuracy is the mean per-attribute accuracy. TFDS `celeb_a` (manual download
on some mirrors). Locally: `celeb_a/<split>/attributes.csv` (header
`file,<40 attribute names>`, values 0/1 or -1/1) beside the images.
"""
import tensorflow as tf

from data import features
from data.spec import IMAGE, TaskSpec, register_task

INPUT_SHAPE = (64, 64, 3)
ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young")


def preprocess(image):
    """uint8 [218, 178, 3] -> float32 [64, 64, 3]: central 178x178 crop, resized, /255."""
    image = tf.image.resize_with_crop_or_pad(image, 178, 178)
    return features.scale_image(image, INPUT_SHAPE[:2])


SPEC = register_task(TaskSpec(
    name="celeb_a", kind=IMAGE, input_shape=INPUT_SHAPE, class_names=ATTRIBUTES,
    preprocess=preprocess, channels=3, multilabel=True, tfds_name="celeb_a",
    tfds_keys=("image", "attributes"), default_model="vgg16",
))
