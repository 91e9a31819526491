"""MTZ, multi-task zipping (He, Zhou & Thiele, NeurIPS 2018; IEEE TMC 2021).

Merge pretrained networks layer by layer by sharing neurons, scored by
layer-wise Hessians. `zip_models` is the one-call entry point; `hessian` and
`pairing` hold the maths (arrays in, arrays out).
"""
from mtz.api import ZippedModel, zip_models
from mtz.layers import ZippedLayer
from mtz.retrain import Retrainer
from mtz.zipper import ZipConfig

__all__ = ["ZippedModel", "ZippedLayer", "Retrainer", "ZipConfig", "zip_models"]
