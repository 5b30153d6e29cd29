"""Builders and UNet: shapes, names, dtypes."""

import keras
import numpy as np
import pytest

from segmentation_model import CLASSIC_WIDTHS, bottleneck, build_unet, down_block, up_block, widths_from_base


def test_down_block_shapes_and_names():
    x = keras.Input((32, 32, 3))
    pooled, skip = down_block(x, 8, "enc1")
    assert tuple(pooled.shape) == (None, 16, 16, 8)
    assert tuple(skip.shape) == (None, 32, 32, 8)
    model = keras.Model(x, [pooled, skip])
    names = {layer.name for layer in model.layers}
    assert {"enc1_conv1", "enc1_bn1", "enc1_relu1", "enc1_conv2", "enc1_pool"} <= names


def test_bottleneck_and_up_block_shapes():
    x = keras.Input((8, 8, 16))
    b = bottleneck(x, 32, dropout=0.5)
    assert tuple(b.shape) == (None, 8, 8, 32)
    skip = keras.Input((16, 16, 16))
    up = up_block(b, skip, 16, "dec2")
    assert tuple(up.shape) == (None, 16, 16, 16)
    names = {layer.name for layer in keras.Model([x, skip], up).layers}
    assert {"bottleneck_conv1", "bottleneck_dropout", "dec2_upconv", "dec2_concat", "dec2_conv2"} <= names


def test_residual_block_adds_its_input_before_the_last_relu():
    from segmentation_model import conv_block

    # Same width: the input itself is added (no projection).
    x = keras.Input((8, 8, 4))
    model = keras.Model(x, conv_block(x, 4, "blk", residual=True))
    names = {layer.name for layer in model.layers}
    assert "blk_add" in names and "blk_proj" not in names
    # With the second batch norm's output forced to 0 (gamma = beta = 0), the
    # block returns relu(input): the shortcut is the identity.
    bn = model.get_layer("blk_bn2")
    bn.set_weights([np.zeros_like(w) if i < 2 else w for i, w in enumerate(bn.get_weights())])
    v = np.random.default_rng(0).normal(size=(2, 8, 8, 4)).astype("float32")
    np.testing.assert_allclose(model.predict(v, verbose=0), np.maximum(v, 0), atol=1e-6)
    # Another width: a 1x1 projection with its batch norm.
    y = conv_block(x, 6, "wide", residual=True)
    assert tuple(y.shape) == (None, 8, 8, 6)
    names = {layer.name for layer in keras.Model(x, y).layers}
    assert {"wide_proj", "wide_proj_bn", "wide_add"} <= names


def test_residual_unet_shapes_and_names():
    plain = build_unet(32, 19, widths_from_base(4))
    model = build_unet(32, 19, widths_from_base(4), residual=True)
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    assert model.predict(x, verbose=0).shape == (2, 32, 32, 19)
    names = {layer.name for layer in model.layers}
    for prefix in ("enc1", "enc4", "bottleneck", "dec4", "dec1"):
        assert f"{prefix}_add" in names and f"{prefix}_proj" in names
    assert not any(name.endswith("_add") for name in (layer.name for layer in plain.layers))
    assert model.count_params() > plain.count_params()


def test_widths():
    assert widths_from_base(64) == CLASSIC_WIDTHS
    assert widths_from_base(16) == (16, 32, 64, 128)


def test_unet_output_shape_probabilities_and_names():
    model = build_unet(64, 19, widths_from_base(4))
    x = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)).astype("float32")
    y = model.predict(x, verbose=0)
    assert y.shape == (2, 64, 64, 19)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-4)
    names = [layer.name for layer in model.layers]
    for level in (1, 2, 3, 4):
        assert f"enc{level}_conv1" in names and f"dec{level}_upconv" in names
    assert "bottleneck_conv2" in names and names[-1] == "head_softmax"
    # Widths 4, 8, 16, 32; the bottleneck is twice the last one.
    assert model.get_layer("enc4_conv1").filters == 32
    assert model.get_layer("bottleneck_conv1").filters == 64


def test_classic_unet_widths_and_any_size():
    model = build_unet(256)
    assert model.get_layer("enc1_conv1").filters == 64
    assert model.get_layer("bottleneck_conv1").filters == 1024
    assert model.output_shape == (None, 256, 256, 19)
    # Without a size, one network runs at any multiple of 16.
    free = build_unet(None, 19, (4, 8))
    assert free.input_shape == (None, None, None, 3)
    for side in (16, 48):
        assert free(np.zeros((1, side, side, 3), "float32")).shape == (1, side, side, 19)


def test_last_layer_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_unet(32, 19, widths_from_base(4))
        assert model.get_layer("enc1_conv1").compute_dtype == "bfloat16"
        out = model(np.zeros((1, 32, 32, 3), "float32"))
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_image_size_must_divide():
    with pytest.raises(ValueError, match="divisible by 16"):
        build_unet(100, 19, widths_from_base(4))


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["resnet50", "efficientnetb0"])
def test_encoder_unet_shapes_and_preprocessing(encoder):
    from segmentation_model import build_encoder_unet

    model = build_encoder_unet(64, 19, encoder, weights=None)
    assert model.input_shape == (None, 64, 64, 3) and model.output_shape == (None, 64, 64, 19)
    assert model.outputs[0].dtype == "float32"
    names = {layer.name for layer in model.layers}
    assert {"dec1_upconv", "dec4_concat", "dec0_conv2", "head_softmax", f"{encoder}_encoder"} <= names
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    y = model.predict(x, verbose=0)
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-4)
    if encoder == "resnet50":
        # RGB -> BGR minus the ImageNet mean, frozen.
        pre = model.get_layer("caffe_bgr_minus_mean")
        assert not pre.trainable
        out = keras.Model(model.input, pre.output).predict(x[:1], verbose=0)
        np.testing.assert_allclose(out[0, ..., 0], x[0, ..., 2] - 103.939, atol=1e-3)
        np.testing.assert_allclose(out[0, ..., 2], x[0, ..., 0] - 123.68, atol=1e-3)
    with pytest.raises(ValueError, match="divisible by 32"):
        build_encoder_unet(48, 19, encoder, weights=None)
    free = build_encoder_unet(None, 19, encoder, weights=None)
    assert free(np.zeros((1, 96, 96, 3), "float32")).shape == (1, 96, 96, 19)


@pytest.mark.parametrize("source, size", [(256, 96), (256, 100), (32, 16), (24, 16), (16, 32)])
def test_sized_model_resizes_like_tensorflows_area_then_runs_the_network(source, size):
    tf = pytest.importorskip("tensorflow")
    from segmentation_model import sized_model

    network = build_unet(None, widths=(4, 8))
    model = sized_model(network, source, size)
    assert model.input_shape == (None, source, source, 3) and model.output_shape == (None, size, size, 19)
    x = np.random.default_rng(source + size).integers(0, 256, (2, source, source, 3)).astype("float32")
    inner = keras.Model(model.input, model.get_layer("photo_to_hwc").output)(x)
    area = tf.image.resize(x, (size, size), method="area").numpy()
    np.testing.assert_allclose(inner, area, atol=5e-3)  # float32 sums in another order
    np.testing.assert_allclose(model(x), network(area), atol=1e-4)
    assert not model.get_layer("photo_area_h").trainable
    assert len(model.trainable_weights) == len(network.trainable_weights)  # the network's, shared
    # At the photos' own size: nothing in between.
    assert [type(layer).__name__ for layer in sized_model(network, size, size).layers][1:] == ["Functional"]


def test_model_arch_draws_the_levels_without_graphviz(tmp_path, monkeypatch):
    import model_arch

    def no_graphviz(*args, **kwargs):
        raise ImportError("You must install pydot")

    monkeypatch.setattr(keras.utils, "plot_model", no_graphviz)
    model = build_unet(32, 19, (4, 8), 16)
    assert model_arch.unet_levels(model) == [
        ("enc1", 4, 32), ("enc2", 8, 16), ("bottleneck", 16, 8), ("dec2", 8, 16), ("dec1", 4, 32),
    ]  # fmt: skip
    path = model_arch.get_model_arch(model, str(tmp_path))
    assert path == str(tmp_path / "model_arch.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "install pydot" in (tmp_path / "model_arch.txt").read_text()
    # A model without enc/bottleneck/dec blocks gets the summary only.
    inputs = keras.Input((8, 8, 3))
    plain = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="head_conv")(inputs))
    other = tmp_path / "other"
    other.mkdir()
    assert model_arch.get_model_arch(plain, str(other)) == str(other / "model_arch.txt")
    assert not (other / "model_arch.png").exists()
