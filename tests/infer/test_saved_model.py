"""saved_model: a saved model rewrapped with less test-time averaging (`export --tta`)."""

import keras
import numpy as np
import pytest

import utils_func as uf
from cityscapes_unet.infer.engines import ENGINES, FORMATS
from cityscapes_unet.infer.saved_model import EXPORT_TTAS, inference_model, network_of, with_tta
from conftest import main_in_process
from segmentation_model import build_unet


@pytest.fixture(scope="module")
def core():
    """A 32x32 UNet with distinct scores per class."""
    keras.utils.set_random_seed(3)
    model = build_unet(32, uf.NUM_CLASSES, (4, 8, 16, 32), 64)
    head = model.get_layer("head_conv")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 30, bias])
    return model


@pytest.fixture(scope="module")
def photos():
    return np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)


def _saved(model, path):
    """`model` through a save and a load, as a user gets it."""
    model.save(path)
    return keras.models.load_model(path, compile=False)


def test_with_tta_runs_the_saved_network_once_or_with_the_mirror(core, photos, tmp_path):
    # As a run saves it: photos of 64x64, the network at 32, 16 and 48, each with the mirror.
    saved = _saved(inference_model(core, 64, flip=True, sizes=(32, 16, 48)), tmp_path / "m.keras")
    inner, size = network_of(saved)
    assert size == 32 and isinstance(inner, keras.Model) and inner is not saved
    assert with_tta(saved, "saved") is saved
    for tta, flip in (("none", False), ("flip", True)):
        got = with_tta(saved, tta)
        assert got.input_shape == saved.input_shape and got.output_shape == saved.output_shape
        want = inference_model(core, 64, flip=flip, sizes=(32,))
        np.testing.assert_allclose(got.predict(photos, verbose=0), want.predict(photos, verbose=0), atol=1e-5)
    # Less averaging gives other scores than the saved model's.
    full = saved.predict(photos, verbose=0)
    assert np.abs(with_tta(saved, "none").predict(photos, verbose=0) - full).max() > 1e-3


def test_with_tta_of_a_plain_network_is_the_network(core, photos, tmp_path):
    plain = _saved(inference_model(core, 32), tmp_path / "plain.keras")
    assert network_of(plain)[1] == 32
    x = photos[:, ::2, ::2]
    np.testing.assert_allclose(
        with_tta(plain, "none").predict(x, verbose=0), plain.predict(x, verbose=0), atol=1e-6
    )


def test_export_keras_with_less_averaging(core, photos, tmp_path):
    path = tmp_path / "unet_model.keras"
    saved = _saved(inference_model(core, 64, flip=True, sizes=(32, 16, 48)), path)
    r = main_in_process("export", "--model", path, "--format", "keras", "--tta", "none")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "unet_model_none.keras"
    assert f"as keras to {out}" in r.stdout and "test-time averaging: none" in r.stdout
    got = keras.models.load_model(out, compile=False).predict(photos, verbose=0)
    np.testing.assert_allclose(got, with_tta(saved, "none").predict(photos, verbose=0), atol=1e-5)
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]
    # Refused, with one line each: nothing to change, the model itself as the destination.
    r = main_in_process("export", "--model", path, "--format", "keras")
    assert r.returncode == 2 and "give --tta flip or none" in r.stderr and "Traceback" not in r.stderr
    r = main_in_process("export", "--model", path, "--format", "keras", "--tta", "flip", "--out", path)
    assert r.returncode == 2 and "is the model itself" in r.stderr
    r = main_in_process(
        "export", "--model", path, "--format", "keras", "--tta", "none", "--out", tmp_path / "x.xml"
    )
    assert r.returncode == 2 and "--format keras writes a .keras file" in r.stderr


def test_the_inference_flags_choices_are_the_packages():
    # main.py spells its choices out (it parses flags before Keras loads);
    # they must stay the ones the package checks.
    import main

    def choices(parser):
        return {a.dest: tuple(a.choices) for a in parser._actions if a.choices}

    export = choices(main.build_export_parser())
    assert export["format"] == tuple(FORMATS) and export["tta"] == EXPORT_TTAS
    assert choices(main.build_predict_parser())["engine"] == ENGINES
