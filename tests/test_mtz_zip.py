"""MTZ end to end on small Keras models: known answers and consistency."""
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import models
import mtz
from mtz import keras_build


def small_mlp(seed, units=(24, 12), inputs=(6, 6, 1), classes=5):
    keras.utils.set_random_seed(seed)
    return models.build("lenet_300_100", input_shape=inputs, units=units, num_classes=classes)


def small_cnn(seed, bn=False, classes=4, filters=(6, 8)):
    keras.utils.set_random_seed(seed)
    x = inp = keras.Input((12, 12, 2))
    for i, f in enumerate(filters, 1):
        x = layers.Conv2D(f, 3, name=f"conv{i}")(x)
        if bn:
            x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.LeakyReLU(0.2, name=f"act{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x) if i == 1 else x
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(10, activation="relu", name="fc1")(x)
    model = keras.Model(inp, layers.Dense(classes, name="logits")(x))
    if bn:  # non-trivial statistics so the fold matters
        for layer in model.layers:
            if isinstance(layer, layers.BatchNormalization):
                n = layer.gamma.shape[0]
                rng = np.random.default_rng(seed)
                layer.set_weights([rng.uniform(0.5, 2, n), rng.normal(size=n),
                                   rng.normal(size=n), rng.uniform(0.5, 2, n)])
    return model


def permuted_copy(model, seed):
    """The same function with every hidden layer's neurons permuted."""
    rng = np.random.default_rng(seed)
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    weighted = [l for l in copy.layers if getattr(l, "kernel", None) is not None]
    perms = []
    previous = None
    for i, layer in enumerate(weighted):
        k, b = layer.get_weights()
        if previous is not None:
            if k.ndim == 4:
                k = k[:, :, previous]
            else:  # dense after flatten: rows are (position, channel)
                channels = len(previous)
                k = k.reshape(-1, channels, k.shape[-1])[:, previous].reshape(k.shape)
        if i < len(weighted) - 1:
            p = rng.permutation(k.shape[-1])
            k, b = k[..., p], b[p]
            perms.append(p)
            previous = p
        else:
            previous = None
        layer.set_weights([k, b])
    return copy, perms


def inputs_for(model, n=64, seed=0):
    return np.random.default_rng(seed).random((n, *model.input_shape[1:]), np.float32)


@pytest.mark.parametrize("builder", [small_mlp, small_cnn])
@pytest.mark.parametrize("method", ["greedy", "optimal"])
def test_identical_networks_zip_at_zero_cost(builder, method):
    a = builder(0)
    b, perms = permuted_copy(a, 1)
    x = inputs_for(a)
    zipped = mtz.zip_models([a, b], [x, x], share="1.0", method=method)
    for record in zipped.records:
        assert record["delta_e"] < 1e-8
    state = zipped.state
    for l, p in enumerate(perms):
        assert np.array_equal(state.out_ids[1][l], state.out_ids[0][l][p])
    ya, yb = zipped.model([x, x])
    np.testing.assert_allclose(ya, a(x), atol=1e-5)
    np.testing.assert_allclose(yb, b(x), atol=1e-5)
    separate = a.count_params() + b.count_params()
    logits = a.get_layer("logits").count_params()
    assert zipped.parameter_counts()["zipped"] == separate // 2 + logits


def _check_members(zipped, xs):
    outs = zipped.model(xs)
    for i in range(len(xs)):
        np.testing.assert_allclose(zipped.task_model(i)(xs[i]), outs[i], atol=1e-4)
        np.testing.assert_allclose(zipped.member(i)(xs[i]), outs[i], atol=1e-5)


@pytest.mark.parametrize("share", ["0.5", "5,3", "eps=0.05"])
def test_partial_sharing_keeps_task_models_consistent(share):
    nets = [small_mlp(0), small_mlp(1)]
    xs = [inputs_for(nets[0], seed=s) for s in (0, 1)]
    zipped = mtz.zip_models(nets, xs, share=share)
    _check_members(zipped, xs)
    shared = [r["shared"] for r in zipped.records]
    if share == "5,3":
        assert shared == [5, 3]


def test_three_networks_and_conv_with_batch_norm():
    nets = [small_cnn(s, bn=True, classes=3 + s) for s in range(3)]
    xs = [inputs_for(nets[0], seed=s) for s in range(3)]
    zipped = mtz.zip_models(nets, xs, share="0.6", names=["a", "b", "c"])
    _check_members(zipped, xs)
    state = zipped.state
    owners = [len(o) for o in state.owners[0].values()]
    assert max(owners) <= 3 and sum(n > 1 for n in owners) > 0


def test_batch_norm_fold_keeps_outputs():
    net = small_cnn(3, bn=True)
    twin = keras.models.clone_model(net)
    twin.set_weights(net.get_weights())
    x = inputs_for(net)
    zipped = mtz.zip_models([net, twin], [x, x])
    assert all(r["delta_e"] < 1e-8 for r in zipped.records)
    np.testing.assert_allclose(zipped.model([x, x])[0], net(x, training=False), atol=1e-4)
    np.testing.assert_allclose(zipped.task_model(1)(x), net(x, training=False), atol=1e-4)


def test_sparse_networks_keep_zeros():
    a, b = small_mlp(0), small_mlp(1)
    for net in (a, b):
        for layer in net.layers:
            if getattr(layer, "kernel", None) is not None:
                k, bias = layer.get_weights()
                k[np.abs(k) < 0.15] = 0
                layer.set_weights([k, bias])
    xs = [inputs_for(a, seed=s) for s in (0, 1)]
    zipped = mtz.zip_models([a, b], xs, sparse=True)
    state = zipped.state
    before_a = a.get_layer("fc1").kernel.numpy().reshape(state.kernels[0][0].shape)
    before_b = b.get_layer("fc1").kernel.numpy().reshape(state.kernels[1][0].shape)
    checked = 0
    for k, slot in enumerate(state.out_ids[1][0]):
        i = int(np.flatnonzero(state.out_ids[0][0] == slot)[0])
        mask_a, mask_b = before_a[:, :, i] != 0, before_b[:, :, k] != 0
        kept = mask_b if mask_b.sum() > mask_a.sum() else mask_a
        merged = state.kernels[0][0][:, :, i]
        assert np.all(merged[~kept] == 0)
        np.testing.assert_array_equal(merged, state.kernels[1][0][:, :, k])
        checked += 1
    assert checked == 24  # share="1.0": every fc1 neuron is paired
    _check_members(zipped, xs)


def test_retraining_lowers_the_joint_loss():
    a, b = small_mlp(0), small_mlp(1)
    rng = np.random.default_rng(0)
    xs = [rng.random((64, 6, 6, 1), np.float32) for _ in range(2)]
    ys = [rng.integers(0, 5, 64) for _ in range(2)]
    datasets = [tf.data.Dataset.from_tensor_slices((x, y)).batch(32) for x, y in zip(xs, ys)]
    retrainer = mtz.Retrainer(datasets, steps=40, learning_rate=1e-2)
    zipped = mtz.zip_models([a, b], xs, retrain=retrainer)
    for record in zipped.records:
        assert record["retrain"]["loss_last"] < record["retrain"]["loss_first"]
    _check_members(zipped, xs)


def test_retraining_steps_run_eagerly_or_traced_to_the_same_weights():
    """Few steps per zipped layer run eagerly (a trace per layer costs seconds): the same
    maths as the traced step, with distillation too."""
    a, b = small_mlp(0), small_mlp(1, classes=3)
    xs = [inputs_for(a, seed=s) for s in (0, 1)]
    rng = np.random.default_rng(0)
    datasets = [tf.data.Dataset.from_tensor_slices((x, rng.integers(0, 3, len(x)))).batch(8)
                for x in xs]
    weights = []
    for trace_from in (1, 100):                      # traced, eager
        retrainer = mtz.Retrainer(datasets, steps=2, learning_rate=1e-2, teachers=[a, b],
                                  distill=0.5, trace_from=trace_from)
        zipped = mtz.zip_models([a, b], xs, share="0.5", retrain=retrainer)
        assert [r["retrain"]["steps"] for r in zipped.records] == [2, 2]     # fc1, fc2
        weights.append(zipped.model.get_weights())
    for traced, eager in zip(*weights):            # equal bit for bit on an AVX2 EPYC
        np.testing.assert_allclose(eager, traced, rtol=1e-5, atol=1e-6)


def test_save_and_load_roundtrip(tmp_path):
    a, b = small_cnn(0), small_cnn(1, classes=6)
    xs = [inputs_for(a, seed=s) for s in (0, 1)]
    zipped = mtz.zip_models([a, b], xs, share="0.5", names=["left", "right"])
    zipped.save(str(tmp_path))
    loaded = mtz.ZippedModel.load(str(tmp_path))
    assert loaded.tasks == ["left", "right"]
    np.testing.assert_allclose(loaded.member("right")(xs[1]), zipped.model(xs)[1], atol=1e-6)
    (tmp_path / "zip.json").write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        mtz.ZippedModel.load(str(tmp_path))


def test_clear_errors():
    a = small_mlp(0)
    deeper = small_mlp(1, units=(24, 12, 8))
    x = inputs_for(a)
    with pytest.raises(ValueError, match="different depths"):
        mtz.zip_models([a, deeper], [x, x])
    with pytest.raises(ValueError, match="count"):
        mtz.zip_models([a, small_mlp(2)], [x, x], share="500,3")
    with pytest.raises(ValueError, match="at least two"):
        mtz.zip_models([a], [x])
    with pytest.raises(ValueError, match="expected examples of shape"):
        mtz.zip_models([a, small_mlp(2)], [x, x[:, :3]])
    inp = keras.Input((4,))
    h = layers.Dense(4, name="d1")(inp)
    res = keras.Model(inp, layers.Dense(2, name="logits")(layers.Add(name="add")([inp, h])))
    with pytest.raises(ValueError, match="'add'"):
        mtz.zip_models([res, res], [np.zeros((2, 4))] * 2)


def test_shared_input_model_computes_shared_prefix_once():
    a = small_cnn(0)
    b, _ = permuted_copy(a, 1)
    x = inputs_for(a)
    zipped = mtz.zip_models([a, b], [x, x], share="1.0")
    shared = zipped.shared_input_model()
    assert len(shared.inputs) == 1
    for out, ref in zip(shared(x), zipped.model([x, x])):
        np.testing.assert_allclose(out, ref, atol=1e-5)
    # conv1, conv2, fc1 are fully shared: called once; logits once per task
    calls = {layer.name: len(layer._inbound_nodes) for layer in shared.layers
             if isinstance(layer, mtz.ZippedLayer)}
    assert calls == {"conv1": 1, "conv2": 1, "fc1": 1, "logits": 2}
    partial = mtz.zip_models([a, b], [x, x], share="0.5").shared_input_model()
    assert len(partial.get_layer("conv1")._inbound_nodes) == 2


def test_retraining_with_distillation_keeps_the_teachers_outputs():
    """With β = 1 the zipped members are pulled to their separate networks' outputs."""
    import tensorflow as tf
    a, b = small_mlp(0), small_mlp(1)
    x = inputs_for(a)
    y = np.zeros(len(x), np.int64)
    datasets = [tf.data.Dataset.from_tensor_slices((x, y)).batch(16)] * 2
    plain = mtz.zip_models([a, b], [x, x], share="1.0")
    taught = mtz.zip_models([a, b], [x, x], share="1.0", retrain=mtz.Retrainer(
        datasets, steps=40, learning_rate=3e-3, teachers=[a, b], distill=1.0))
    for i, net in enumerate((a, b)):
        gap_plain = np.abs(plain.member(i)(x).numpy() - net(x).numpy()).mean()
        gap_taught = np.abs(taught.member(i)(x).numpy() - net(x).numpy()).mean()
        assert gap_taught < gap_plain
    with pytest.raises(ValueError, match="needs one teacher per task"):
        mtz.Retrainer(datasets, distill=0.5)
