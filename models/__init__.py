"""Registry of the networks the project zips and virtualizes.

    >>> import models
    >>> models.available("nwv_*")
    ['nwv_cifar10', 'nwv_gsc', 'nwv_gtsrb', 'nwv_mnist', 'nwv_svhn', 'nwv_tts']
"""
from models import lenet, nwv_cnn, resnet, us8k, vgg  # noqa: F401  (registration)
from models.reference import load_reference_fisher, load_reference_weights, read_npz
from models.registry import ModelInfo, available, build, info, register_model

__all__ = ["ModelInfo", "available", "build", "info", "register_model",
           "load_reference_weights", "load_reference_fisher", "read_npz"]
