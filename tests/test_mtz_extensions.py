"""MTZ extensions: residual blocks (Add ties slots), different input domains, VGG/WRN."""
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import models
import mtz
from mtz import keras_build
from mtz.graph import parse_chain
from mtz.layers import InputPad
from tests.test_mtz_zip import _check_members, inputs_for, small_mlp


def _random_bn(model, seed):
    """Non-trivial batch-norm statistics, so that folding matters."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2, n), rng.normal(size=n),
                               rng.normal(size=n), rng.uniform(0.5, 2, n)])
    return model


def tiny_resnet(seed):
    keras.utils.set_random_seed(seed)
    return _random_bn(models.build("resnet28", input_shape=(8, 8, 3), k=1, base=2, depth=10),
                      seed)


def projection_net(seed, width=4):
    """conv0 -> [conv1 -> conv2] + proj(conv0) -> Add -> ReLU -> GAP -> logits."""
    keras.utils.set_random_seed(seed)
    x = inp = keras.Input((8, 8, 2))
    x = layers.ReLU(name="relu0")(layers.Conv2D(3, 3, padding="same", name="conv0")(x))
    y = layers.Conv2D(width, 3, padding="same", activation="relu", name="conv1")(x)
    y = layers.Conv2D(width, 3, padding="same", name="conv2")(y)
    shortcut = layers.Conv2D(width, 1, name="proj")(x)
    x = layers.ReLU(name="relu")(layers.Add(name="add")([shortcut, y]))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inp, layers.Dense(3, name="logits")(x))


def permuted_graph_copy(model, seed):
    """The same function with the channels of every slot space permuted (Add ties
    kept: tied layers get one permutation); returns (copy, {rep: permutation})."""
    chain = parse_chain(model)
    rng = np.random.default_rng(seed)
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    perms = {r: rng.permutation(chain.weights[r][0].shape[-1])
             for r in set(chain.ties) if r != chain.output_layer}
    by_name = {s.name: l for l, s in enumerate(chain.weighted)}
    for layer in copy.layers:
        if layer.name in by_name:
            l = by_name[layer.name]
            k, b = layer.get_weights()
            if chain.sources[l] >= 0:
                p = perms[chain.sources[l]]
                k = (k[:, :, p] if k.ndim == 4 else  # dense after flatten: (position, channel)
                     k.reshape(-1, len(p), k.shape[-1])[:, p].reshape(k.shape))
            if chain.ties[l] in perms:
                k, b = k[..., perms[chain.ties[l]]], b[perms[chain.ties[l]]]
            layer.set_weights([k, b])
        elif isinstance(layer, layers.BatchNormalization):
            conv = layer._inbound_nodes[0].input_tensors[0]._keras_history[0].name
            p = perms[chain.ties[by_name[conv]]]
            layer.set_weights([w[p] for w in layer.get_weights()])
    return copy, perms


def consistency_check(xs):
    """A `retrain` stand-in: at every retraining point the multi-task model built
    from the state must compute each task's own network (no half-merged block)."""
    def check(model, state):
        outs = model(xs)
        for t in range(len(xs)):
            plain = keras_build.task_model(state, t)(xs[t])
            np.testing.assert_allclose(plain, outs[t], atol=1e-4)
        return {"checked": True}
    return check


def test_parse_ties_residual_additions():
    chain = parse_chain(tiny_resnet(0))
    names = [s.name for s in chain.weighted]
    tied = {names[l]: names[r] for l, r in enumerate(chain.ties) if l != r}
    assert tied == {"g1b1_conv2": "conv0", "g2b1_conv2": "g2b1_proj",
                    "g3b1_conv2": "g3b1_proj"}
    assert names[chain.output_layer] == "logits"
    assert not any(s.class_name == "BatchNormalization" for s in chain.steps
                   if hasattr(s, "class_name"))


def test_identical_resnets_zip_at_zero_cost():
    a = tiny_resnet(0)
    b, perms = permuted_graph_copy(a, 1)
    x = inputs_for(a, n=32)
    zipped = mtz.zip_models([a, b], [x, x], share="1.0")
    assert all(r["delta_e"] < 1e-8 for r in zipped.records)
    assert {r["layer"] for r in zipped.records if "tied_to" in r} == {
        "g1b1_conv2", "g2b1_conv2", "g3b1_conv2"}
    state = zipped.state
    for l, r in enumerate(state.ties):
        assert state.owners[l] is state.owners[r] and state.out_ids[1][l] is state.out_ids[1][r]
        if r in perms:
            assert np.array_equal(state.out_ids[1][l], state.out_ids[0][l][perms[r]])
    ya, yb = zipped.model([x, x])
    np.testing.assert_allclose(ya, a(x, training=False), atol=1e-4)
    np.testing.assert_allclose(yb, b(x, training=False), atol=1e-4)
    shared = zipped.shared_input_model()
    np.testing.assert_allclose(shared(x)[1], yb, atol=1e-5)
    assert len(shared.get_layer("g3b1_conv2")._inbound_nodes) == 1


def test_partially_shared_resnets_stay_consistent():
    nets = [tiny_resnet(0), tiny_resnet(1)]
    xs = [inputs_for(nets[0], n=32, seed=s) for s in (0, 1)]
    zipped = mtz.zip_models(nets, xs, share="0.5", retrain=consistency_check(xs))
    _check_members(zipped, xs)
    assert all(r["retrain"]["checked"] for r in zipped.records if "retrain" in r)
    plain = zipped.task_model(1)
    assert not any(isinstance(l, layers.BatchNormalization) for l in plain.layers)
    assert sum(isinstance(l, layers.Add) for l in plain.layers) == 3


def test_projection_shortcut_three_networks():
    a = projection_net(0)
    b, _ = permuted_graph_copy(a, 1)
    x = inputs_for(a, n=32)
    twins = mtz.zip_models([a, b], [x, x], share="1.0")
    assert all(r["delta_e"] < 1e-8 for r in twins.records)
    np.testing.assert_allclose(twins.model([x, x])[1], b(x), atol=1e-5)
    nets = [projection_net(0), projection_net(1), projection_net(2, width=5)]  # widths may differ
    xs = [inputs_for(a, n=32, seed=s) for s in range(3)]
    zipped = mtz.zip_models(nets, xs, share="0.5", retrain=consistency_check(xs))
    _check_members(zipped, xs)
    tied = [r for r in zipped.records if "tied_to" in r]
    assert {r["tied_to"] for r in tied} == {"proj"} and all(r["shared"] for r in tied)


def test_lenet_inputs_of_different_sizes_share_a_joint_input():
    small = small_mlp(0, units=(16, 8), inputs=(28, 28, 1))
    big = small_mlp(0, units=(16, 8), inputs=(32, 32, 1))
    k, bias = small.get_layer("fc1").get_weights()  # big = small on the padded image
    padded = np.pad(k.reshape(28, 28, 1, -1), ((2, 2), (2, 2), (0, 0), (0, 0)))
    big.get_layer("fc1").set_weights([padded.reshape(1024, -1), bias])
    for name in ("fc2", "logits"):
        big.get_layer(name).set_weights(small.get_layer(name).get_weights())
    xs = [inputs_for(small, n=32), inputs_for(big, n=32, seed=1)]
    zipped = mtz.zip_models([small, big], xs, share="1.0")
    assert all(r["delta_e"] < 1e-8 for r in zipped.records)
    np.testing.assert_allclose(zipped.model(xs)[0], small(xs[0]), atol=1e-5)
    np.testing.assert_allclose(zipped.model(xs)[1], big(xs[1]), atol=1e-5)
    other = small_mlp(1, units=(16, 8), inputs=(28, 28, 1))
    zipped = mtz.zip_models([other, big], xs, share="0.5")
    _check_members(zipped, xs)
    assert zipped.task_model(0).input_shape == (None, 28, 28, 1)


def _gray_rgb_cnn(seed, channels):
    keras.utils.set_random_seed(seed)
    x = inp = keras.Input((10, 10, channels))
    x = layers.Conv2D(6, 3, activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(8, activation="relu", name="fc1")(x)
    return keras.Model(inp, layers.Dense(4, name="logits")(x))


@pytest.mark.parametrize("shape", [(10, 10, 1), (8, 9, 2)])
def test_input_pad_before_a_conv_inside_tf_function(shape):
    """InputPad then Conv2D in a traced function (as probes and training run them) equals
    eager execution: TensorFlow's oneDNN rewrite mis-fuses a channel PAD into a CONV_2D."""
    inp = keras.Input(shape)
    x = InputPad((10, 10, 3))(inp)
    model = keras.Model(inp, layers.Conv2D(4, 3, activation="relu")(x))
    xb = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
    eager = model(xb)
    assert eager.shape == (2, 8, 8, 4)
    np.testing.assert_allclose(tf.function(model)(xb), eager, atol=1e-6)


def test_gray_and_rgb_conv_nets(tmp_path):
    nets = [_gray_rgb_cnn(0, 1), _gray_rgb_cnn(1, 3)]
    xs = [inputs_for(n, n=32, seed=s) for s, n in enumerate(nets)]
    zipped = mtz.zip_models(nets, xs, share="0.5", names=["gray", "rgb"])
    _check_members(zipped, xs)
    assert zipped.state.kernels[0][0].shape[1] == 3  # joint input: 3 channels
    assert zipped.task_model("gray").get_layer("conv1").kernel.shape == (3, 3, 1, 6)
    zipped.save(str(tmp_path))
    loaded = mtz.ZippedModel.load(str(tmp_path))
    np.testing.assert_allclose(loaded.member("gray")(xs[0]), zipped.model(xs)[0], atol=1e-6)


def test_tiny_vgg16_end_to_end():
    nets = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        nets.append(models.build("vgg16", input_shape=(32, 32, 3), width=0.0625, fc_units=16,
                                 num_classes=10))
    xs = [inputs_for(nets[0], n=16, seed=s) for s in (0, 1)]
    zipped = mtz.zip_models(nets, xs, share="0.5")
    assert [r["shared"] for r in zipped.records] == [2, 2, 4, 4, 8, 8, 8, 16, 16, 16, 16, 16,
                                                    16, 8, 8]
    _check_members(zipped, xs)
    counts = zipped.parameter_counts()
    assert counts["zipped"] < counts["separate"]


def test_clear_errors_for_unsupported_graphs():
    inp = keras.Input((8, 8, 2))
    x = layers.Conv2D(4, 3, name="conv")(inp)
    x = layers.Concatenate(name="concat")([x, x])
    net = keras.Model(inp, layers.Dense(2, name="logits")(layers.Flatten()(x)))
    with pytest.raises(ValueError, match="'concat' of type Concatenate is not supported"):
        mtz.zip_models([net, net], [np.zeros((2, 8, 8, 2))] * 2)
    small = _gray_rgb_cnn(0, 1)
    inp = keras.Input((12, 12, 1))
    x = layers.Conv2D(6, 3, activation="relu", name="conv1")(inp)
    x = layers.Flatten(name="flatten")(layers.MaxPooling2D(2, name="pool")(x))
    big = keras.Model(inp, layers.Dense(4, name="logits")(
        layers.Dense(8, activation="relu", name="fc1")(x)))
    xs = [np.zeros((2, 10, 10, 1)), np.zeros((2, 12, 12, 1))]
    with pytest.raises(ValueError, match=r"expected an input of spatial size \(12, 12\).*"
                                         r"received \(10, 10\)"):
        mtz.zip_models([small, big], xs)
