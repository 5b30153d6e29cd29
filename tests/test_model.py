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


def test_classic_unet_widths():
    model = build_unet(256)
    assert model.get_layer("enc1_conv1").filters == 64
    assert model.get_layer("bottleneck_conv1").filters == 1024
    assert model.output_shape == (None, 256, 256, 19)


def test_last_layer_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_unet(32, 19, widths_from_base(4))
        assert model.get_layer("enc1_conv1").compute_dtype == "bfloat16"
        out = model(np.zeros((1, 32, 32, 3), "float32"))
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_float32_copy_of_a_mixed_precision_model(policy):
    from cityscapes_unet.infer.saved_model import at_source_size, float32_copy

    keras.mixed_precision.set_global_policy(policy)
    try:
        core = build_unet(32, 19, widths_from_base(4))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # Trained-looking weights and batch norm statistics (the head starts at
    # zero), so that all of them must be copied.
    rng = np.random.default_rng(0)
    for w in core.weights:
        low, high = (0.5, 1.5) if "moving_variance" in w.path else (-0.3, 0.3)
        w.assign(rng.uniform(low, high, w.shape).astype("float32"))
    wrapped = at_source_size(core, 64)
    assert {layer.dtype_policy.name for layer in _all_layers(wrapped)} >= {policy}
    copy = float32_copy(wrapped)
    assert copy is not wrapped
    assert {layer.dtype_policy.name for layer in _all_layers(copy)} == {"float32"}
    assert [layer.name for layer in _all_layers(copy)] == [layer.name for layer in _all_layers(wrapped)]
    for a, b in zip(copy.get_weights(), wrapped.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # The same weights computed in float32 from the start.
    reference = build_unet(32, 19, widths_from_base(4))
    reference.set_weights(core.get_weights())
    x = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    expected = at_source_size(reference, 64).predict(x, verbose=0)
    err_copy = np.abs(copy.predict(x, verbose=0) - expected).max()
    assert err_copy <= 1e-6
    # 16-bit computation differs from it by more.
    assert np.abs(wrapped.predict(x, verbose=0) - expected).max() > 10 * err_copy
    # A float32 model is returned as it is.
    assert float32_copy(reference) is reference


def test_image_size_must_divide():
    with pytest.raises(ValueError, match="divisible by 16"):
        build_unet(100, 19, widths_from_base(4))


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


@pytest.mark.parametrize("source, size", [(256, 96), (256, 100), (32, 16), (24, 16), (16, 32)])
def test_at_source_size_resizes_like_the_pipeline(source, size):
    tf = pytest.importorskip("tensorflow")
    from cityscapes_unet.infer.saved_model import area_matrix, at_source_size

    np.testing.assert_allclose(area_matrix(source, size).sum(1), 1.0, atol=1e-6)
    core = build_unet(size, widths=(4, 8))
    model = at_source_size(core, source)
    assert model.input_shape == (None, source, source, 3) and model.output_shape == (None, source, source, 19)
    x = np.random.default_rng(source + size).integers(0, 256, (2, source, source, 3)).astype("float32")
    # The frozen Dense layers are TensorFlow's area resize.
    inner = keras.Model(model.input, model.get_layer("photo_to_hwc").output)(x)
    area = tf.image.resize(x, (size, size), method="area").numpy()
    np.testing.assert_allclose(inner, area, atol=5e-3)  # float32 sums in another order
    want = tf.image.resize(core(area), (source, source), method="bilinear").numpy()
    np.testing.assert_allclose(model(x), want, atol=1e-4)
    assert not model.get_layer("photo_area_h").trainable


@pytest.mark.parametrize("source, size", [(256, 96), (256, 100), (32, 16), (24, 16), (16, 32)])
def test_area_matrix_is_the_numpy_pipelines_area_resize(source, size):
    """Without TensorFlow: the in-model resize is `resize_area` before its rounding."""
    from cityscapes_unet.data.numpy_pipeline import resize_area
    from cityscapes_unet.infer.saved_model import area_matrix, at_source_size

    model = at_source_size(build_unet(size, widths=(4, 8)), source)
    x = np.random.default_rng(source * size).integers(0, 256, (2, source, source, 3)).astype(np.uint8)
    inner = keras.Model(model.input, model.get_layer("photo_to_hwc").output).predict(
        x.astype("float32"), verbose=0
    )
    rounded = np.stack([resize_area(photo, size, size) for photo in x]).astype(np.float32)
    # The same values but for the rounding: where the two differ by a grey
    # level, the unrounded value is a tie (x.5, summed in another order).
    assert np.abs(inner - rounded).max() <= 0.5 + 5e-3
    apart = np.round(inner) != rounded
    assert (np.abs(inner - np.floor(inner) - 0.5)[apart] < 5e-3).all()
    np.testing.assert_allclose(area_matrix(source, size).sum(1), 1.0, atol=1e-6)


@pytest.mark.parametrize("source, size", [(256, 96), (24, 16), (32, 32)])
def test_at_source_size_with_flip_averages_the_mirrored_scores(source, size):
    tf = pytest.importorskip("tensorflow")
    from cityscapes_unet.infer.saved_model import at_source_size

    core = build_unet(size, widths=(4, 8))
    rng = np.random.default_rng(source + size)
    for w in core.weights:  # the head starts at zero: scores would not vary
        low, high = (0.5, 1.5) if "moving_variance" in w.path else (-0.5, 0.5)
        w.assign(rng.uniform(low, high, w.shape).astype("float32"))
    model = at_source_size(core, source, flip=True)
    assert model.input_shape == (None, source, source, 3) and model.output_shape == (None, source, source, 19)
    x = rng.integers(0, 256, (2, source, source, 3)).astype("float32")
    area = tf.image.resize(x, (size, size), method="area").numpy()
    plain = core(area).numpy()
    mirrored = core(area[:, :, ::-1]).numpy()[:, :, ::-1]
    want = tf.image.resize((plain + mirrored) / 2, (source, source), method="bilinear").numpy()
    unflipped = tf.image.resize(plain, (source, source), method="bilinear").numpy()
    # Far closer to the average than the plain scores are: the flip is seen.
    err = np.abs(model(x).numpy() - want).max()
    assert err < 0.05 * np.abs(unflipped - want).max(), err
    # The core's weights only, shared (frozen resize and mirror matrices aside).
    assert len(model.trainable_weights) == len(core.trainable_weights)


def test_at_source_size_of_a_model_at_that_size_is_an_uncompiled_view():
    from cityscapes_unet.infer.saved_model import at_source_size

    core = build_unet(32, widths=(4, 8))
    core.compile(optimizer="adam", loss="categorical_crossentropy")
    view = at_source_size(core, 32)
    assert view is not core and not view.compiled
    assert view.input_shape == core.input_shape and len(view.weights) == len(core.weights)
    # The same layers: the view follows the core's weights.
    assert all(a is b for a, b in zip(view.weights, core.weights, strict=True))
    x = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(view(x), core(x))


def _random_unet(size, seed=0):
    core = build_unet(size, widths=(4, 8))
    rng = np.random.default_rng(seed)
    for w in core.weights:  # the head starts at zero: scores would not vary
        low, high = (0.5, 1.5) if "moving_variance" in w.path else (-0.5, 0.5)
        w.assign(rng.uniform(low, high, w.shape).astype("float32"))
    return core


def test_tta_sizes():
    from cityscapes_unet.infer.saved_model import tta_sizes

    assert tta_sizes(96, False) == (96,)
    assert tta_sizes(96, True) == (96, 112)  # 96 * 7/6 = 112
    assert tta_sizes(32, True) == (32, 48)  # 37.3, up to a multiple of 16
    assert tta_sizes(256, True, 32) == (256, 320)  # 298.7, up to a multiple of 32
    # After the last epochs at a larger size: that size, one step below and one above.
    assert tta_sizes(96, True, 16, 128) == (128, 112, 144)
    assert tta_sizes(96, False, 16, 128) == (128,)
    assert tta_sizes(32, True, 16, 64) == (64, 48, 80)
    assert tta_sizes(96, True, 16, 144) == (144, 128, 160)
    assert tta_sizes(128, True, 16, 160) == (160, 144, 176)  # the long recipe
    assert tta_sizes(96, True, 16, 112) == (112, 96, 128)
    assert tta_sizes(96, True, 16, 104) == (104, 96, 120)  # never below the training size
    assert tta_sizes(96, True, 16, 96) == (96, 112)  # not larger: no final size


def test_any_size_copy_runs_the_same_weights_at_other_sizes():
    from cityscapes_unet.infer.saved_model import any_size_copy

    core = _random_unet(16)
    free = any_size_copy(core)
    assert free.input_shape == (None, None, None, 3)
    assert [layer.name for layer in free.layers] == [layer.name for layer in core.layers]
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(free(x), core(x), atol=1e-6)
    # At 32x32: the same as a model built at 32x32 with these weights.
    at32 = build_unet(32, widths=(4, 8))
    at32.set_weights(core.get_weights())
    x = rng.integers(0, 256, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(free(x), at32(x), atol=1e-6)
    # A copy: the core keeps its own weights.
    free.get_layer("head_conv").bias.assign(np.ones(19, np.float32))
    assert not np.any(core.get_layer("head_conv").bias.numpy() == 1)


def test_at_source_size_with_two_sizes_averages_both():
    tf = pytest.importorskip("tensorflow")
    from cityscapes_unet.infer.saved_model import any_size_copy, at_source_size

    core = any_size_copy(_random_unet(32, seed=3))
    model = at_source_size(core, 64, flip=True, sizes=(32, 48))
    assert model.input_shape == (None, 64, 64, 3) and model.output_shape == (None, 64, 64, 19)
    x = np.random.default_rng(4).integers(0, 256, (2, 64, 64, 3)).astype("float32")
    want = 0
    for s in (32, 48):
        area = tf.image.resize(x, (s, s), method="area").numpy()
        both = (core(area).numpy() + core(area[:, :, ::-1]).numpy()[:, :, ::-1]) / 2
        want = want + tf.image.resize(both, (64, 64), method="bilinear").numpy() / 2
    one = at_source_size(core, 64, flip=True, sizes=(32,))(x).numpy()
    err = np.abs(model(x).numpy() - want).max()
    assert err < 1e-4 and np.abs(one - want).max() > 100 * err, err
    # One copy of the network's weights serves both sizes.
    assert len(model.trainable_weights) == len(core.trainable_weights)


def test_with_logit_bias_shifts_the_scores_before_the_softmax():
    from cityscapes_unet.infer.saved_model import with_logit_bias

    core = _random_unet(16, seed=5)
    bias = np.linspace(-2, 2, 19).astype("float32")
    adjusted = with_logit_bias(core, bias)
    x = np.random.default_rng(6).integers(0, 256, (2, 16, 16, 3)).astype("float32")
    p = core(x).numpy()
    logits = np.log(p) + bias
    want = np.exp(logits - logits.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(adjusted(x).numpy(), want, atol=1e-5)
    assert (adjusted(x).numpy().argmax(-1) != p.argmax(-1)).any()  # the bias moves some pixels
    np.testing.assert_allclose(core(x).numpy(), p)  # the core itself is untouched


def test_inference_model_save_load_round_trip(tmp_path):
    from cityscapes_unet.infer.saved_model import inference_model

    core = _random_unet(16, seed=7)
    bias = np.linspace(1, -1, 19)
    model = inference_model(core, 32, flip=True, sizes=(16, 32), logit_bias=bias)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path, compile=False)
    x = np.random.default_rng(8).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)


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
