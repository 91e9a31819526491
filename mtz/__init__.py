"""MTZ, multi-task zipping (He, Zhou & Thiele, NeurIPS 2018; IEEE TMC 2021).

Merge pretrained networks layer by layer by sharing neurons, scored by
layer-wise Hessians. `zip_models` is the one-call entry point, `zip_trained`
the same on registered tasks with evaluation at every stage; `hessian` and
`pairing` hold the maths (arrays in, arrays out). `fold_batch_norms` folds a
network's batch norms into its convolutions (the plain network NWV pages).
"""
from mtz.api import ZippedModel, fold_batch_norms, zip_models
from mtz.layers import InputPad, ZippedLayer
from mtz.pairing import PairingMethod, ShareSchedule
from mtz.pipeline import hessian_inputs, task_retrainer, zip_trained
from mtz.retrain import Retrainer
from mtz.zipper import ZipConfig

__all__ = ["InputPad", "PairingMethod", "Retrainer", "ShareSchedule", "ZipConfig",
           "ZippedLayer", "ZippedModel", "fold_batch_norms", "hessian_inputs", "task_retrainer",
           "zip_models", "zip_trained"]
