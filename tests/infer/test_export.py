"""export: an OpenVINO model that predicts what the Keras model predicts."""

import os
import time

import cv2
import keras
import numpy as np
import pytest

import utils_func as uf
from cityscapes_unet.infer.engines import cpu_runs_bf16, openvino_engine
from cityscapes_unet.infer.export import BF16_AGREEMENT
from conftest import main_in_process, make_pair
from segmentation_model import build_unet

pytest.importorskip("openvino")
pytestmark = pytest.mark.slow  # each exports and compiles an OpenVINO model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A 32x32 UNet with well separated class scores, saved as .keras."""
    keras.utils.set_random_seed(5)
    model = build_unet(32, uf.NUM_CLASSES, (4, 8, 16, 32), 64)
    head = model.get_layer("head_conv")
    kernel, bias = head.get_weights()
    # Untrained scores are nearly tied; scaled up, the argmax is decided by
    # the model rather than by rounding, so engines can be compared.
    head.set_weights([kernel * 30, bias])
    folder = tmp_path_factory.mktemp("run")
    model.save(folder / "unet_model.keras")
    return folder


def _photos(folder, count=3):
    folder.mkdir(exist_ok=True)
    for i in range(count):
        pair, _ = make_pair(32, i)
        cv2.imwrite(str(folder / f"p{i}.png"), cv2.cvtColor(pair[:, :32], cv2.COLOR_RGB2BGR))
    return folder


def test_export_openvino_then_predict_agrees_with_keras(model_dir, tmp_path, capsys):
    # In-process (the command line around it is tested below): faster.
    from cityscapes_unet.infer.export import run_export
    from cityscapes_unet.infer.predict import run_predict

    model = model_dir / "unet_model.keras"
    result = run_export(str(model))
    printed = capsys.readouterr().out
    xml = model_dir / "unet_model.xml"
    assert result["path"] == str(xml) and result["agreement"] >= 0.995
    assert xml.stat().st_size > 0 and (model_dir / "unet_model.bin").stat().st_size > 0
    assert "same class as Keras: f32" in printed and "synthetic photos" in printed
    # Checked in float32 always, in bf16 too where the CPU computes it; the
    # IR records the one it is to run in, and the engine compiles it so.
    assert set(result["agreements"]) == ({"f32", "bf16"} if cpu_runs_bf16() else {"f32"})
    want = "bf16" if result["agreements"].get("bf16", 0) >= BF16_AGREEMENT else "f32"
    assert result["precision"] == want and f"runs in {want}" in printed
    assert openvino_engine(str(xml), "x").precision == want
    assert openvino_engine(str(xml), "x", "f32").precision == "f32"
    # Written under temporary names, then renamed: none is left.
    assert not [p.name for p in model_dir.iterdir() if ".tmp" in p.name]

    photos = _photos(tmp_path / "photos")
    outs = {}
    for engine, m in (("keras", model), ("openvino", xml), ("openvino", model)):
        out = tmp_path / f"out_{engine}_{m.suffix}"
        summary = run_predict([str(photos)], str(m), engine, str(out))
        assert summary["engine"] == engine and summary["predicted"] == 3
        outs[(engine, m.suffix)] = [
            cv2.imread(str(out / f"p{i}_ids.png"), cv2.IMREAD_UNCHANGED) for i in range(3)
        ]
    ref = np.stack(outs[("keras", ".keras")])
    for key in (("openvino", ".xml"), ("openvino", ".keras")):
        got = np.stack(outs[key])
        assert got.shape == ref.shape == (3, 32, 32)
        assert (got == ref).mean() >= 0.995


def test_recorded_precision_reads_the_ir(tmp_path):
    import openvino as ov

    from cityscapes_unet.infer.engines import PRECISION_KEY, recorded_precision

    model = build_unet(16, uf.NUM_CLASSES, (4, 8), 16)
    model.export(str(tmp_path / "m.xml"), format="openvino", verbose=False)
    ov_model = ov.Core().read_model(str(tmp_path / "m.xml"))
    assert recorded_precision(ov_model) == "f32"  # Keras' own export records none
    for value, want in (("bf16", "bf16"), ("f32", "f32"), ("f16", "f32")):
        ov_model.set_rt_info(value, PRECISION_KEY)
        assert recorded_precision(ov_model) == want


def test_engine_errors_are_one_line(model_dir, tmp_path):
    photos = _photos(tmp_path / "photos", 1)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "unet_model.keras").write_bytes((model_dir / "unet_model.keras").read_bytes())
    r = main_in_process("predict", "--model", lonely / "unet_model.keras", "--engine", "openvino", photos)
    assert r.returncode == 2 and "main.py export --model" in r.stderr and "Traceback" not in r.stderr

    # An export older than its model is refused: it would predict for the old one.
    r = main_in_process("export", "--model", lonely / "unet_model.keras")
    assert r.returncode == 0, r.stderr[-2000:]
    future = time.time() + 60
    os.utime(lonely / "unet_model.keras", (future, future))
    r = main_in_process("predict", "--model", lonely / "unet_model.keras", "--engine", "openvino", photos)
    assert r.returncode == 2 and "is older than" in r.stderr

    bad = tmp_path / "bad.xml"
    bad.write_text("<not a model/>")
    r = main_in_process("predict", "--model", bad, photos)
    assert r.returncode == 2 and "not a usable OpenVINO model" in r.stderr and "Traceback" not in r.stderr
    r = main_in_process("export", "--model", lonely / "unet_model.keras", "--out", tmp_path / "x.onnx")
    assert r.returncode == 2 and f"--out {tmp_path / 'x.onnx'}" in r.stderr
    # An export runs what it was exported with: no averaging on top.
    r = main_in_process("predict", "--model", lonely / "unet_model.xml", "--tta", "flip", photos)
    assert r.returncode == 2 and "--tta flip" in r.stderr and "Traceback" not in r.stderr


def test_export_saved_model(model_dir, tmp_path):
    tf = pytest.importorskip("tensorflow")
    from cityscapes_unet.infer.export import run_export

    out = tmp_path / "sm"
    run_export(str(model_dir / "unet_model.keras"), "tf_saved_model", out=str(out))
    loaded = tf.saved_model.load(str(out))
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    want = keras.models.load_model(model_dir / "unet_model.keras", compile=False).predict(x, verbose=0)
    np.testing.assert_allclose(loaded.serve(x).numpy(), want, atol=1e-4)


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_export_openvino_of_a_saved_model_below_the_data_size(tmp_path, tta):
    # As a run below the data's size saves it: area resize in, bilinear scores
    # out; with the mirrored photo's scores averaged in for `--tta flip`.
    from cityscapes_unet.infer.export import run_export
    from cityscapes_unet.infer.saved_model import saved_model
    from segmentation_model import sized_model

    keras.utils.set_random_seed(6)
    network = build_unet(None, uf.NUM_CLASSES, (4, 8), 16)
    head = network.get_layer("head_conv")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 30, bias])
    saved_model(sized_model(network, 24, 16)).save(tmp_path / "unet_model.keras")  # 24 -> 16: up 2, pool 3
    result = run_export(str(tmp_path / "unet_model.keras"), tta=tta)
    assert result["agreement"] >= 0.995
    assert result["path"] == str(tmp_path / ("unet_model.xml" if tta == "none" else f"unet_model_{tta}.xml"))
