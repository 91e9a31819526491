"""TF-TRT as README's "Deploying to a Jetson" runs it: an exported pool SavedModel
converts with FP16 precision, saves, reloads, and gives the pool runtime's logits.

Needs a GPU and a TensorFlow built with TensorRT (NVIDIA's wheels, JetPack); it
skips at once otherwise, naming what is missing.
"""
import numpy as np
import pytest
import tensorflow as tf

import nwv
from tests.test_mtz_zip import inputs_for, small_cnn

FP16_TOLERANCE = 1e-2


@pytest.fixture(scope="module")
def trt():
    """The TF-TRT converter module, or a skip naming what is missing."""
    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("TF-TRT needs a GPU; TensorFlow sees none")
    try:
        from tensorflow.python.compiler.tensorrt import trt_convert
    except ImportError as err:
        pytest.skip(f"TF-TRT does not import: {err}")
    return trt_convert


@pytest.fixture(scope="module")
def exported(trt, tmp_path_factory):
    """(runtime, SavedModel folder, inputs) of a two-network pool (built after the skip)."""
    nets = {"left": small_cnn(0), "right": small_cnn(1)}
    fisher = {n: [np.ones(v.shape, np.float32) for v in m.trainable_variables]
              for n, m in nets.items()}
    rt = nwv.virtualize(nets, fisher=fisher, page_size=16, teachers=False)
    folder = str(tmp_path_factory.mktemp("trt") / "savedmodel")
    nwv.export_savedmodel(rt, folder)
    return rt, folder, inputs_for(nets["left"], n=8)


def convert(trt, saved_model_dir, out_dir, signature_key=None):
    """README's conversion (one signature; default: serving_default). Returns out_dir."""
    kwargs = {"input_saved_model_signature_key": signature_key} if signature_key else {}
    try:
        converter = trt.TrtGraphConverterV2(input_saved_model_dir=saved_model_dir,
                                            precision_mode=trt.TrtPrecisionMode.FP16,
                                            **kwargs)
    except RuntimeError as err:       # TensorFlow without TensorRT, or another version
        pytest.skip(f"TensorRT is not usable here: {err}")
    converter.convert()
    converter.save(out_dir)
    return out_dir


@pytest.mark.parametrize("signature_key, network", [(None, "left"), ("right", "right")])
def test_fp16_conversion_gives_the_pool_logits(trt, exported, tmp_path, signature_key,
                                               network):
    rt, saved, x = exported
    out = convert(trt, saved, str(tmp_path / "trt"), signature_key)
    served = tf.saved_model.load(out)
    signature = served.signatures[signature_key or "serving_default"]
    outputs = signature(**{network: tf.constant(x)})
    assert len(outputs) == 1, sorted(outputs)
    (logits,) = outputs.values()
    expected = rt.run(network, x).numpy()
    assert logits.shape == expected.shape
    np.testing.assert_allclose(logits.numpy(), expected, atol=FP16_TOLERANCE,
                               rtol=FP16_TOLERANCE)
