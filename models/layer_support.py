"""What MTZ may zip and NWV may page, per Keras layer type: ONE table for both packages.

MTZ (`mtz.structure`) reads a network as weighted layers whose neurons it pairs,
batch norms it folds into them, additions that tie residual branches, and
weight-free layers it copies. NWV (`nwv.runtime`) cuts a network's trainable
variables into pages; a layer holding other state (batch-norm statistics, a
dropout seed) cannot be rebuilt from pages and is refused.

    >>> LAYERS["Conv2D"].mtz, LAYERS["Conv2D"].nwv
    ('weighted', 'paged')
    >>> LAYERS["BatchNormalization"].nwv is None
    True

A layer type missing from the table is not zipped by MTZ; NWV pages it when all
its variables are trainable (`nwv_role`), since paging needs nothing else.
"""
from __future__ import annotations

import dataclasses

# MTZ roles: neurons paired and merged / folded into the weighted layer before /
# an addition tying its operands' neurons / copied unchanged.
WEIGHTED, FOLDED, MERGE, STATELESS = "weighted", "folded", "merge", "stateless"
# NWV roles: trainable variables become pages / nothing to page.
PAGED = "paged"


@dataclasses.dataclass(frozen=True)
class LayerSupport:
    """How each technique treats one Keras layer type.

    Attributes:
      mtz: WEIGHTED, FOLDED, MERGE, STATELESS, or None (MTZ refuses the layer).
      nwv: PAGED, STATELESS, or None (NWV refuses it: state that is not a
        trainable variable).
      hint: what to do when a technique refuses the layer.
    """

    mtz: str | None
    nwv: str | None
    hint: str = ""


_WEIGHT_FREE = LayerSupport(STATELESS, STATELESS)
LAYERS = {
    "Dense": LayerSupport(WEIGHTED, PAGED),
    "Conv2D": LayerSupport(WEIGHTED, PAGED),
    "BatchNormalization": LayerSupport(
        FOLDED, None, "fold batch norms into the layer before them first "
                      "(mtz.fold_batch_norms(model))"),
    "Dropout": LayerSupport(STATELESS, None, "rebuild the network without Dropout for "
                                             "inference (it holds a seed generator)"),
    "Add": LayerSupport(MERGE, STATELESS),
    "InputLayer": _WEIGHT_FREE, "ReLU": _WEIGHT_FREE, "LeakyReLU": _WEIGHT_FREE,
    "Activation": _WEIGHT_FREE, "MaxPooling2D": _WEIGHT_FREE,
    "AveragePooling2D": _WEIGHT_FREE, "GlobalAveragePooling2D": _WEIGHT_FREE,
    "Flatten": _WEIGHT_FREE, "Identity": _WEIGHT_FREE,
    # The layers of a zipped network (mtz.layers): paged by NWV, never zipped again.
    "ZippedLayer": LayerSupport(None, PAGED, "a zipped network is zipped again from its "
                                             "members' original networks"),
    "InputPad": LayerSupport(None, STATELESS),
}


def mtz_roles() -> dict:
    """{Keras layer class name: MTZ role} of the layers MTZ zips.

    Returns:
      Dict of class name -> WEIGHTED / FOLDED / MERGE / STATELESS.
    Raises:
      Nothing.
    """
    return {name: s.mtz for name, s in LAYERS.items() if s.mtz is not None}


def nwv_role(layer) -> tuple[str | None, str]:
    """(NWV role, hint) of a built Keras layer.

    Args:
      layer: a Keras layer.
    Returns:
      (PAGED / STATELESS / None, hint): a listed type takes the table's entry; any
      other type is PAGED when all its variables are trainable, else None.
    Raises:
      Nothing.
    """
    entry = LAYERS.get(type(layer).__name__)
    if entry is not None and (entry.nwv is None or not layer.non_trainable_variables):
        return entry.nwv, entry.hint
    if layer.non_trainable_variables:
        return None, "NWV pages trainable variables only"
    return (PAGED if layer.trainable_variables else STATELESS), ""
