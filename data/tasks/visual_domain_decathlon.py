"""Visual Decathlon domains (Rebuffi et al. 2017) used by MTZ's nine-ResNet experiment.

One declarative table, one registered task per domain: `vdd_<domain>`, 72x72
RGB (the decathlon's resized images), pixels/255. TFDS
`visual_domain_decathlon/<domain>`; locally `vdd_<domain>/<split>/<class>/`
with class folders named by class index (`0000`, `0001`, ...).
"""
from data import features
from data.spec import IMAGE, TaskSpec, register_task

INPUT_SHAPE = (72, 72, 3)
DOMAINS = {  # domain: classes
    "aircraft": 100, "cifar100": 100, "daimlerpedcls": 2, "dtd": 47, "gtsrb": 43,
    "imagenet12": 1000, "omniglot": 1623, "svhn": 10, "ucf101": 101, "vgg-flowers": 102,
}


def preprocess(image):
    """uint8 [H, W, 3] -> float32 [72, 72, 3] in [0, 1]."""
    return features.scale_image(image, INPUT_SHAPE[:2])


SPECS = {
    domain: register_task(TaskSpec(
        name=f"vdd_{domain.replace('-', '_')}", kind=IMAGE, input_shape=INPUT_SHAPE,
        class_names=tuple(f"{c:04d}" for c in range(classes)), preprocess=preprocess,
        channels=3, tfds_name=f"visual_domain_decathlon/{domain}", default_model="resnet28",
        tfds_splits={"train": "train", "validation": "validation", "test": "validation"},
    ))
    for domain, classes in DOMAINS.items()
}
