"""The benchmark scripts run end to end on tiny inputs and print their tables."""

import glob
import os
import subprocess
import sys

import pytest

import utils_func as uf
from conftest import ROOT, write_pairs

pytest.importorskip("tensorflow")


def _tiny_model_and_pairs(tmp_path, pairs: int):
    """A saved model as a run saves it (32x32 photos, the network at 16) and `pairs` tiny pairs in `pairs/`."""
    from cityscapes_unet.infer.saved_model import saved_model
    from segmentation_model import build_unet, sized_model

    write_pairs(tmp_path / "pairs", pairs, size=32)
    saved_model(sized_model(build_unet(None, uf.NUM_CLASSES, (4, 8, 16, 32)), 32, 16)).save(
        tmp_path / "m.keras"
    )


def _bench(script, *args):
    cmd = [sys.executable, os.path.join(ROOT, "bench", script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)


@pytest.mark.slow
def test_pipeline_bench_tiny(tmp_path):
    write_pairs(tmp_path, 8, size=32)
    r = _bench("pipeline.py", "--data-dir", tmp_path, "--size", 16, "--batch-size", 4, "--baseline-files", 4)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tf.data first pass" in r.stdout and "baseline" in r.stdout
    assert "first pass / baseline" in r.stdout
    assert "label decoding, one 32x32 label" in r.stdout
    # Bytes per sample: the uint8 photo at 32x32, one-hot and weights at 16x16.
    assert f"{(32 * 32 * 3 + 16 * 16 * (19 + 1)) / 1e6:9.3f}" in r.stdout


@pytest.mark.slow
def test_inference_bench_tiny(tmp_path):
    pytest.importorskip("openvino")
    import keras

    _tiny_model_and_pairs(tmp_path, 4)
    r = _bench(
        "inference.py",
        "--model",
        tmp_path / "m.keras",
        "--data-dir",
        tmp_path / "pairs",
        "--photos",
        4,
        "--repeats",
        3,
        "--no-classic",
        "--predict-files",
        2,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "openvino f32" in r.stdout and "x Keras at batch 1" in r.stdout and "same argmax on" in r.stdout
    assert "peak MB" in r.stdout
    assert "GFLOP per photo in its convolutions" in r.stdout
    keras.backend.clear_session()


def test_conv_flops_by_hand():
    import keras

    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from peer_models import conv_flops

    x = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(4, 3, padding="same")(x)  # 8*8 pixels, 3*3*3 taps, 4 filters
    y = keras.layers.Conv2DTranspose(2, 2, strides=2)(y)  # per input pixel: 2*2*4 taps, 2 filters
    assert conv_flops(keras.Model(x, y)) == 2 * (8 * 8 * 9 * 3 * 4 + 8 * 8 * 4 * 4 * 2)


def test_inference_bench_counts_every_view_of_a_saved_model():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import inference
    from peer_models import conv_flops

    from cityscapes_unet.infer.saved_model import inference_model
    from segmentation_model import build_unet

    widths = (4, 8)
    at = {s: conv_flops(build_unet(s, uf.NUM_CLASSES, widths)) for s in (28, 32, 36)}
    assert at[36] == pytest.approx(at[32] * (36 / 32) ** 2)  # every convolution scales with pixels
    assert inference.photo_flops(build_unet(32, uf.NUM_CLASSES, widths)) == (at[32], [])
    # Three sizes (a stride of 4 apart), each with the mirror: six passes of the network per photo.
    flops, sizes = inference.photo_flops(
        inference_model(build_unet(None, uf.NUM_CLASSES, widths), 64, 32, "scales")
    )
    assert sorted(sizes) == [28, 28, 32, 32, 36, 36]
    assert flops == pytest.approx(2 * (at[28] + at[32] + at[36]))


@pytest.mark.slow
def test_predict_speed_bench_tiny(tmp_path):
    _tiny_model_and_pairs(tmp_path, 6)
    model = tmp_path / "m.keras"
    args = (
        "--model",
        model,
        "--tta",
        "none,flip",
        "--data-dir",
        tmp_path / "pairs",
        "--batch-size",
        4,
        "--rounds",
        1,
    )
    r = _bench("predict_speed.py", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith(str(model)[-43:])]
    assert [row[1] for row in rows] == ["none", "flip"] and all(float(v) > 0 for row in rows for v in row[2:])
    assert f"{model} (flip): " in r.stdout and "x predict --pairs of" in r.stdout


def test_peer_bench_shares_by_compute_type():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import cpu_peers

    peaks = {"float32": 100e9, "bfloat16": 400e9}
    # 20 img/s of 5 GFLOP: 100 GFLOP/s, a quarter of the bf16 peak, all of float32's.
    assert cpu_peers.peak_share("mixed_bfloat16", 20.0, 5e9, peaks) == pytest.approx(0.25)
    assert cpu_peers.peak_share("bf16 autocast", 20.0, 5e9, peaks) == pytest.approx(0.25)
    assert cpu_peers.peak_share("float32", 20.0, 5e9, peaks) == pytest.approx(1.0)
    assert cpu_peers.peak_share("float32", 20.0, 5e9, {}) is None


@pytest.mark.slow
def test_peer_bench_tiny():
    pytest.importorskip("torch")  # the matmul peak is PyTorch's
    r = _bench("cpu_peers.py", "--tiny", "--rows", "tf-ce")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "matmul peak float32" in r.stdout and "matmul peak bfloat16" in r.stdout
    row = [line for line in r.stdout.splitlines() if line.startswith("tf-ce ")]
    assert len(row) == 1 and "cross-entropy only" in row[0] and row[0].rstrip().endswith("%")
    if not glob.glob("/dev/nvidia[0-9]*"):
        assert "cuInit" not in r.stderr and "cuInit" not in r.stdout
