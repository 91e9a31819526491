"""NWV, neural weight virtualization (Lee & Nirjon, MobiSys 2020), and its
combination with MTZ.

Networks' weights are cut into pages matched onto one shared pool (Fisher-
weighted cost), optimised jointly, and executed from memory: switching network
is a page-table change. `virtualize` / `add_network` build pools, `optimize_pool`
trains them, `VirtualizedNetworks` runs them, `combined.save_zipped` stores a
zipped multi-task model in a pool, `export_savedmodel` writes a SavedModel.
The maths (`pages`, `matching`, `fisher`) takes arrays and returns arrays.
"""
from nwv.api import add_network, inspect, list_networks, remove_network, virtualize
from nwv.export import export_savedmodel
from nwv.fisher import FisherDefinition, diagonal_fisher
from nwv.matching import MatchingMethod
from nwv.optimize import OptimizationMode, OptimizeConfig, optimize_pool
from nwv.runtime import VirtualizedNetworks

__all__ = ["FisherDefinition", "MatchingMethod", "OptimizationMode", "OptimizeConfig",
           "VirtualizedNetworks", "add_network", "diagonal_fisher", "export_savedmodel",
           "inspect", "list_networks", "optimize_pool", "remove_network",
           "virtualize"]
