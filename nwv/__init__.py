"""NWV, neural weight virtualization (Lee & Nirjon, MobiSys 2020), and its
combination with MTZ.

Networks' weights are cut into pages matched onto one shared pool (Fisher-
weighted cost), optimised jointly, and executed from memory: switching network
is a page-table change. `virtualize` (in memory) and `add_network` (a pool
directory) build pools, `optimize_pool` / `optimize_runtime` train them, `VirtualizedNetworks` runs,
saves and loads them, `save_zipped` stores a zipped multi-task model (MTZ) in a
pool, `export_savedmodel` writes a SavedModel, `export_tflite` one TFLite file (phones,
Linux boards, or TensorFlow Lite Micro). The maths (`pages`, `matching`,
`compaction`, `fisher`) takes arrays and returns arrays.
"""
from nwv.api import (FisherSource, add_network, inspect, list_networks, network_fisher,
                     remove_network, virtualize)
from nwv.combined import save_zipped, zipped_pool_state
from nwv.export import export_savedmodel
from nwv.fisher import FisherDefinition, diagonal_fisher
from nwv.matching import MatchingMethod
from nwv.optimize import OptimizationMode, OptimizeConfig, optimize_pool, optimize_runtime
from nwv.runtime import NetworkSpec, VirtualizedNetworks
from nwv.tflite import export_tflite

__all__ = ["FisherDefinition", "FisherSource", "MatchingMethod", "NetworkSpec",
           "OptimizationMode", "OptimizeConfig", "VirtualizedNetworks", "add_network",
           "diagonal_fisher", "export_savedmodel", "export_tflite", "inspect",
           "list_networks", "network_fisher", "optimize_pool", "optimize_runtime",
           "remove_network", "save_zipped", "virtualize", "zipped_pool_state"]
