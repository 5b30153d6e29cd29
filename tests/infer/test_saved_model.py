"""saved_model: the file a run saves, test-time averaging at use, float32 and logit bias."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import utils_func as uf
from cityscapes_unet.infer.saved_model import (
    fixed_size_copy,
    float32_copy,
    inference_model,
    network_of,
    network_stride,
    saved_model,
    tta_sizes,
    with_logit_bias,
    with_tta,
)
from cityscapes_unet.resize import area_resize
from conftest import main_in_process
from segmentation_model import build_unet, sized_model


def _random_network(seed=0, widths=(4, 8)):
    """A UNet of any size whose weights (the head's too) make scores vary."""
    network = build_unet(None, uf.NUM_CLASSES, widths)
    rng = np.random.default_rng(seed)
    for w in network.weights:
        low, high = (0.5, 1.5) if "moving_variance" in w.path else (-0.5, 0.5)
        w.assign(rng.uniform(low, high, w.shape).astype("float32"))
    return network


def _bilinear(scores, side):
    tf = pytest.importorskip("tensorflow")
    return tf.image.resize(scores, (side, side), method="bilinear").numpy()


def _area(x, size):
    return np.stack([area_resize(p, size, size) for p in x])


@pytest.fixture(scope="module")
def photos():
    return np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)


def test_saved_model_returns_scores_at_the_photos_size(photos):
    network = _random_network(1)
    trained = sized_model(network, 64, 32)
    saved = saved_model(trained)
    assert saved.input_shape == (None, 64, 64, 3) and saved.output_shape == (None, 64, 64, uf.NUM_CLASSES)
    want = _bilinear(network(_area(photos, 32)).numpy(), 64)
    np.testing.assert_allclose(saved(photos).numpy(), want, atol=1e-4)
    assert network_of(saved) == (network, 32) and network_of(trained)[1] == 32
    # With class weights, their pull is partly divided back out of the odds.
    weights = np.linspace(0.5, 3, uf.NUM_CLASSES)
    adjusted = saved_model(trained, weights)
    np.testing.assert_allclose(
        adjusted(photos).numpy(),
        inference_model(with_logit_bias(network, -0.3 * np.log(weights)), 64, 32)(photos),
        atol=1e-5,
    )
    assert np.abs(adjusted(photos).numpy() - saved(photos).numpy()).max() > 1e-3


def test_with_tta_flip_averages_the_mirrored_scores(photos, tmp_path):
    network = _random_network(2)
    path = tmp_path / "m.keras"
    saved_model(sized_model(network, 64, 32)).save(path)
    saved = keras.models.load_model(path, compile=False)
    assert with_tta(saved, "none") is saved
    flip = with_tta(saved, "flip")
    assert flip.input_shape == saved.input_shape and flip.output_shape == saved.output_shape
    area = _area(photos, 32)
    both = (network(area).numpy() + network(area[:, :, ::-1]).numpy()[:, :, ::-1]) / 2
    want = _bilinear(both, 64)
    err = np.abs(flip(photos).numpy() - want).max()
    assert err < 1e-4 < np.abs(saved(photos).numpy() - want).max(), err
    assert len(flip.trainable_weights) == len(network.trainable_weights)  # one copy of the network


def test_with_tta_scales_averages_three_sizes(photos):
    network = _random_network(3)  # two levels: a stride of 4
    saved = saved_model(sized_model(network, 64, 32))
    scales = with_tta(saved, "scales")
    want = 0
    for s in (32, 28, 36):
        area = _area(photos, s)
        both = (network(area).numpy() + network(area[:, :, ::-1]).numpy()[:, :, ::-1]) / 2
        want = want + _bilinear(both, 64) / 3
    np.testing.assert_allclose(scales(photos).numpy(), want, atol=1e-4)


def test_tta_sizes_and_strides():
    assert tta_sizes(144, "none", 16) == tta_sizes(144, "flip", 16) == (144,)
    assert tta_sizes(144, "scales", 16) == (144, 128, 160)
    assert tta_sizes(16, "scales", 16) == (16, 32)  # never below one stride
    assert tta_sizes(256, "scales", 32) == (256, 224, 288)
    assert network_stride(build_unet(None, widths=(4, 8, 16))) == 8
    assert network_stride(build_unet(None, widths=(4, 8, 16, 32))) == 16


def test_fixed_size_copy_runs_the_same_weights():
    network = _random_network(4)
    fixed = fixed_size_copy(network, 16)
    assert fixed.input_shape == (None, 16, 16, 3) and fixed.output_shape == (None, 16, 16, uf.NUM_CLASSES)
    x = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(fixed(x), network(x), atol=1e-6)
    fixed.get_layer("head_conv").bias.assign(np.ones(uf.NUM_CLASSES, np.float32))  # a copy
    assert not np.any(network.get_layer("head_conv").bias.numpy() == 1)


def test_with_logit_bias_shifts_the_scores_before_the_softmax():
    network = _random_network(5)
    bias = np.linspace(-2, 2, uf.NUM_CLASSES).astype("float32")
    adjusted = with_logit_bias(network, bias)
    x = np.random.default_rng(6).integers(0, 256, (2, 16, 16, 3)).astype("float32")
    p = network(x).numpy()
    logits = np.log(p) + bias
    want = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(adjusted(x).numpy(), want / want.sum(-1, keepdims=True), atol=1e-5)
    assert (adjusted(x).numpy().argmax(-1) != p.argmax(-1)).any()  # the bias moves some pixels
    np.testing.assert_allclose(network(x).numpy(), p)  # the network itself is untouched


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_the_saved_model_computes_in_float32(policy, photos):
    keras.mixed_precision.set_global_policy(policy)
    try:
        network = _random_network(7)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    saved = saved_model(sized_model(network, 64, 32))
    layers = [layer for layer in saved._flatten_layers()]
    assert {layer.dtype_policy.name for layer in layers} == {"float32"}
    reference = _random_network(7)  # the same weights, float32 from the start
    expected = saved_model(sized_model(reference, 64, 32))(photos).numpy()
    assert np.abs(saved(photos).numpy() - expected).max() <= 1e-5
    # A 16-bit copy differs by more; a float32 model is returned as it is.
    mixed = keras.Model(network.input, network.output)
    assert float32_copy(reference) is reference and float32_copy(mixed) is not mixed


@pytest.mark.slow
def test_the_saved_file_loads_without_this_project(photos, tmp_path):
    for tta in ("none", "flip"):
        model = with_tta(saved_model(sized_model(_random_network(8), 64, 32), np.linspace(0.5, 3, 19)), tta)
        model.save(tmp_path / f"{tta}.keras")
        np.save(tmp_path / f"{tta}.npy", model.predict(photos, verbose=0))
    np.save(tmp_path / "x.npy", photos)
    script = (
        "import sys, numpy as np, keras\n"
        "for tta in ('none', 'flip'):\n"
        "    m = keras.models.load_model(tta + '.keras')\n"  # compile=True, as a user would
        "    np.testing.assert_allclose(m.predict(np.load('x.npy'), verbose=0), np.load(tta + '.npy'), atol=1e-5)\n"
        "assert not {'segmentation_model', 'cityscapes_unet', 'utils_func'} & set(sys.modules)\n"
        "print('OK')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]


@pytest.mark.slow
def test_export_keras_with_test_time_averaging(photos, tmp_path):
    path = tmp_path / "unet_model.keras"
    saved = saved_model(sized_model(_random_network(9), 64, 32))
    saved.save(path)
    r = main_in_process("export", "--model", path, "--format", "keras", "--tta", "flip")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "unet_model_flip.keras"
    assert out.is_file() and str(out) in r.stdout
    got = keras.models.load_model(out, compile=False).predict(photos, verbose=0)
    np.testing.assert_allclose(got, with_tta(saved, "flip").predict(photos, verbose=0), atol=1e-5)
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]
    # Refused, one line each: nothing to change, the model itself, a wrong suffix.
    for args, needle in (
        ((), "--format keras"),
        (("--tta", "flip", "--out", path), "--out"),
        (("--tta", "flip", "--out", tmp_path / "x.xml"), "--out"),
    ):
        r = main_in_process("export", "--model", path, "--format", "keras", *args)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
