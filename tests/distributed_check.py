"""Run in a fresh process (the CPU must be split before TensorFlow starts): the same
joint optimisation round, Fisher and MTZ Hessian moments under the default strategy
and under MirroredStrategy over 2 logical CPUs; prints the largest relative
differences as JSON.

    python -m tests.distributed_check DATA_DIR POOL_DIR
"""
import json
import shutil
import sys
import tempfile

from models import distribute


def relative(a, b) -> float:
    import numpy as np
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))


def main(data_dir: str, pool_dir: str) -> None:
    mirrored = distribute.make_strategy("mirrored", cpu_replicas=2)
    import numpy as np
    import tensorflow as tf

    import models
    import nwv
    from mtz import probes
    from nwv import optimize

    config = nwv.OptimizeConfig(rounds=1, steps=4, batch_size=16, limit=32, seed=3,
                                distill=0.5, sync_every=2, schedule="constant")
    pools = {}
    for name, strategy in (("default", tf.distribute.get_strategy()), ("mirrored", mirrored)):
        folder = tempfile.mkdtemp()
        shutil.copytree(pool_dir, folder, dirs_exist_ok=True)
        with strategy.scope():
            nwv.optimize_pool(folder, config, data_dir=data_dir, log=None)
        pools[name] = np.load(f"{folder}/{optimize.CHECKPOINT}")["pool"]
    net = models.build("nwv_mnist")
    x = np.random.default_rng(0).uniform(size=(24, 28, 28, 1)).astype(np.float32)
    fishers = {}
    for name, strategy in (("default", tf.distribute.get_strategy()), ("mirrored", mirrored)):
        with strategy.scope():
            fishers[name] = np.concatenate([f.ravel() for f in nwv.diagonal_fisher(
                net, x, num_samples=24, batch_size=4)])
    geometry = probes.LayerGeometry("conv", 9, np.array([0, 3, 5, -1]), kernel_size=(3, 3))
    moments = {}
    for name, strategy in (("default", tf.distribute.get_strategy()), ("mirrored", mirrored)):
        with strategy.scope():
            moments[name] = probes.layer_moments(net, "conv2", x, geometry, batch_size=8)
    print(json.dumps({
        "replicas": mirrored.num_replicas_in_sync,
        "pool": relative(pools["default"], pools["mirrored"]),
        "pool_changed": relative(pools["default"], np.load(f"{pool_dir}/pool.npy")),
        "fisher": relative(fishers["default"], fishers["mirrored"]),
        "hessian_xtx": relative(moments["default"][0], moments["mirrored"][0]),
        "hessian_count": [moments["default"][2], moments["mirrored"][2]]}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
