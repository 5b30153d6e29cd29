"""UNet for semantic segmentation, built from Functional-API block builders.

Every builder takes a tensor and returns one, and names its layers from a
prefix (``enc2_conv1``), so that a saved model reads like its diagram. The
model is backend-agnostic: only ``keras.layers`` and ``keras.ops``.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

#: Encoder widths of the classic UNet (Ronneberger et al., 2015); the
#: bottleneck is twice the last one (1024).
CLASSIC_WIDTHS = (64, 128, 256, 512)


def widths_from_base(base_filters: int, depth: int = 4) -> tuple[int, ...]:
    """Encoder widths that double at each level, starting at ``base_filters``.

    Args:
        base_filters: Width of the first encoder level (64 is the classic UNet).
        depth: Number of down-sampling levels.

    Returns:
        A tuple of ``depth`` widths, e.g. ``(64, 128, 256, 512)`` for 64.
    """
    return tuple(base_filters * 2**i for i in range(depth))


def conv_block(x, filters: int, prefix: str, residual: bool = False):
    """Two 3x3 convolutions, each followed by batch norm and ReLU.

    With `residual`, the block's input is added to the second batch norm's
    output before its ReLU (ResNet's basic block; He et al., 2016), through
    a 1x1 convolution and batch norm where the widths differ: the shortcut
    lets a short run's gradients reach every level.

    Args:
        x: Input tensor, shape `(batch, height, width, channels)`.
        filters: Output channels of both convolutions.
        prefix: Name prefix of every layer, e.g. ``"enc1"``.
        residual: Add the input (projected) before the last ReLU.

    Returns:
        Tensor of shape `(batch, height, width, filters)`.
    """
    shortcut = x
    for i in (1, 2):
        # No bias: batch norm's offset does the same job.
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{prefix}_conv{i}")(x)
        # momentum 0.9: the moving statistics keep up with weights that move
        # fast in short, high-learning-rate runs (0.99 lagged far behind).
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"{prefix}_bn{i}")(x)
        if residual and i == 2:
            if shortcut.shape[-1] != filters:
                shortcut = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{prefix}_proj")(shortcut)
                shortcut = keras.layers.BatchNormalization(momentum=0.9, name=f"{prefix}_proj_bn")(shortcut)
            x = keras.layers.Add(name=f"{prefix}_add")([x, shortcut])
        x = keras.layers.Activation("relu", name=f"{prefix}_relu{i}")(x)
    return x


def down_block(x, filters: int, prefix: str, residual: bool = False):
    """Encoder level: a conv block, then 2x2 max pooling.

    Args:
        x: Input tensor, shape `(batch, H, W, C)`.
        filters: Width of the level.
        prefix: Name prefix, e.g. ``"enc1"``.
        residual: Residual conv block (see `conv_block`).

    Returns:
        A pair `(pooled, skip)`: `pooled` has shape `(batch, H/2, W/2, filters)`
        and feeds the next level; `skip` has shape `(batch, H, W, filters)` and
        feeds the matching decoder level.
    """
    skip = conv_block(x, filters, prefix, residual)
    pooled = keras.layers.MaxPooling2D(2, name=f"{prefix}_pool")(skip)
    return pooled, skip


def bottleneck(x, filters: int, prefix: str = "bottleneck", dropout: float = 0.0, residual: bool = False):
    """Lowest level of the UNet: a conv block, optionally with dropout.

    Args:
        x: Input tensor, shape `(batch, H, W, C)`.
        filters: Width of the bottleneck (1024 in the classic UNet).
        prefix: Name prefix.
        dropout: Dropout rate after the block; 0 disables it.
        residual: Residual conv block (see `conv_block`).

    Returns:
        Tensor of shape `(batch, H, W, filters)`.
    """
    x = conv_block(x, filters, prefix, residual)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name=f"{prefix}_dropout")(x)
    return x


def up_block(x, skip, filters: int, prefix: str, residual: bool = False):
    """Decoder level: 2x2 transposed convolution, concatenation, conv block.

    Args:
        x: Input from the level below, shape `(batch, H/2, W/2, C)`.
        skip: Skip tensor from the encoder, shape `(batch, H, W, filters)`.
        filters: Width of the level.
        prefix: Name prefix, e.g. ``"dec1"``.
        residual: Residual conv block (see `conv_block`).

    Returns:
        Tensor of shape `(batch, H, W, filters)`.
    """
    x = keras.layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"{prefix}_upconv")(x)
    x = keras.layers.Concatenate(name=f"{prefix}_concat")([x, skip])
    return conv_block(x, filters, prefix, residual)


def build_unet(
    image_size: int = 256,
    num_classes: int = 19,
    widths: Sequence[int] = CLASSIC_WIDTHS,
    bottleneck_filters: int | None = None,
    dropout: float = 0.0,
    name: str = "unet",
    residual: bool = False,
) -> keras.Model:
    """Assemble a UNet from `down_block`, `bottleneck` and `up_block`.

    The model takes raw RGB in 0..255 (any real dtype) and rescales it inside,
    so a user feeds it photos as they are read. Its last layer is a float32
    softmax, whatever the mixed-precision policy.

    Args:
        image_size: Height and width of the square input; must be divisible
            by `2 ** len(widths)`.
        num_classes: Number of output classes.
        widths: Encoder widths, one per down-sampling level.
        bottleneck_filters: Width of the bottleneck; twice the last width when
            None (1024 for the classic widths).
        dropout: Dropout rate in the bottleneck.
        name: Model name.
        residual: Residual conv blocks throughout (see `conv_block`); False
            is the classic UNet.

    Returns:
        A `keras.Model` mapping `(batch, image_size, image_size, 3)` RGB to
        per-pixel class probabilities `(batch, image_size, image_size,
        num_classes)`, float32.
    """
    factor = 2 ** len(widths)
    if image_size % factor:
        raise ValueError(
            f"image size {image_size} is not divisible by {factor} (2 ** {len(widths)} down-sampling levels)"
        )
    if bottleneck_filters is None:
        bottleneck_filters = 2 * widths[-1]

    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)

    skips = []
    for level, filters in enumerate(widths, start=1):
        x, skip = down_block(x, filters, prefix=f"enc{level}", residual=residual)
        skips.append(skip)

    x = bottleneck(x, bottleneck_filters, dropout=dropout, residual=residual)

    for level in range(len(widths), 0, -1):
        x = up_block(x, skips[level - 1], widths[level - 1], prefix=f"dec{level}", residual=residual)

    x = keras.layers.Conv2D(num_classes, 1, name="head_conv")(x)
    # float32 softmax: stable probabilities under mixed precision.
    outputs = keras.layers.Activation("softmax", dtype="float32", name="head_softmax")(x)
    return keras.Model(inputs, outputs, name=name)


#: Pretrained encoders for `build_encoder_unet`: the application, and its
#: feature layers at strides 2, 4, 8, 16 (the skips) and 32 (the bottom).
ENCODERS = {
    "resnet50": (
        "ResNet50",
        ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    ),
    "efficientnetb0": (
        "EfficientNetB0",
        (
            "block2a_expand_activation",
            "block3a_expand_activation",
            "block4a_expand_activation",
            "block6a_expand_activation",
            "top_activation",
        ),
    ),
}
#: Decoder widths from the bottom up (those of segmentation_models' UNet).
DECODER_WIDTHS = (256, 128, 64, 32, 16)


def caffe_preprocess(x, prefix: str = "caffe"):
    """RGB 0..255 to the BGR, mean-subtracted input ResNet50's weights expect.

    A frozen 1x1 convolution (channel swap, then minus the ImageNet mean)
    instead of a Lambda layer, so the saved model loads in Keras' safe mode.

    Args:
        x: Tensor `(batch, H, W, 3)`, RGB in 0..255.
        prefix: Layer name prefix.

    Returns:
        Tensor `(batch, H, W, 3)`.
    """
    import numpy as np

    swap = np.zeros((1, 1, 3, 3), "float32")
    swap[0, 0, [2, 1, 0], [0, 1, 2]] = 1.0  # output BGR from input RGB
    mean = np.array([103.939, 116.779, 123.68], "float32")
    layer = keras.layers.Conv2D(
        3,
        1,
        name=f"{prefix}_bgr_minus_mean",
        trainable=False,
        kernel_initializer=keras.initializers.Constant(swap),
        bias_initializer=keras.initializers.Constant(-mean),
    )
    return layer(x)


def build_encoder_unet(
    image_size: int = 256,
    num_classes: int = 19,
    encoder: str = "resnet50",
    weights: str | None = "imagenet",
    decoder_widths: Sequence[int] = DECODER_WIDTHS,
    name: str | None = None,
) -> keras.Model:
    """A UNet decoder on a `keras.applications` encoder.

    The encoder's features at strides 16, 8, 4 and 2 are the skips of
    `up_block`s; a last up-sampling returns to the input size. Like
    `build_unet`, the model takes raw RGB in 0..255 and ends in a float32
    softmax.

    Args:
        image_size: Side of the square input; a multiple of 32.
        num_classes: Number of output classes.
        encoder: A key of `ENCODERS`.
        weights: `"imagenet"` or None (random initialisation). The caller
            handles a failed download (see `training.build_model`).
        decoder_widths: Widths of the five decoder levels, bottom up.
        name: Model name; `unet_<encoder>` by default.

    Returns:
        A `keras.Model` `(batch, S, S, 3)` -> `(batch, S, S, num_classes)`.
    """
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; one of {', '.join(ENCODERS)}")
    if image_size % 32:
        raise ValueError(f"image size {image_size} is not divisible by 32 (the encoder's stride)")
    app_name, feature_layers = ENCODERS[encoder]
    app = getattr(keras.applications, app_name)(
        include_top=False, weights=weights, input_shape=(image_size, image_size, 3)
    )
    features = keras.Model(
        app.input, [app.get_layer(n).output for n in feature_layers], name=f"{encoder}_encoder"
    )

    inputs = keras.Input((image_size, image_size, 3), name="image")
    # EfficientNet rescales inside; ResNet50 wants caffe-style input.
    x = caffe_preprocess(inputs) if encoder == "resnet50" else inputs
    *skips, x = features(x)
    for level, (filters, skip) in enumerate(zip(decoder_widths, reversed(skips), strict=False), start=1):
        x = up_block(x, skip, filters, prefix=f"dec{len(skips) + 1 - level}")
    # Stride 2 -> 1: no encoder feature at full size, so no skip.
    x = keras.layers.Conv2DTranspose(decoder_widths[-1], 2, strides=2, padding="same", name="dec0_upconv")(x)
    x = conv_block(x, decoder_widths[-1], "dec0")
    x = keras.layers.Conv2D(num_classes, 1, name="head_conv")(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="head_softmax")(x)
    return keras.Model(inputs, outputs, name=name or f"unet_{encoder}")


def area_matrix(source_size: int, size: int):
    """The area resize of one axis as a matrix.

    Output pixel `o` covers `[o * scale, (o + 1) * scale)` of the input,
    `scale = source_size / size`; each input pixel it touches is weighted by
    the length it covers, divided by `scale` (TensorFlow's `area` resize,
    OpenCV's `INTER_AREA` when shrinking).

    Args:
        source_size: Input length.
        size: Output length.

    Returns:
        float32 array `(size, source_size)` whose rows sum to 1.
    """
    import numpy as np

    scale = source_size / size
    a = np.zeros((size, source_size), np.float64)
    for o in range(size):
        lo, hi = o * scale, (o + 1) * scale
        for i in range(int(np.floor(lo)), min(int(np.ceil(hi)), source_size)):
            a[o, i] = (min(hi, i + 1) - max(lo, i)) / scale
    return a.astype(np.float32)


def _frozen_axis_map(matrix, name: str):
    """A frozen float32 `Dense` that maps the last axis by `matrix` `(in, out)`."""
    return keras.layers.Dense(
        matrix.shape[1],
        use_bias=False,
        trainable=False,
        kernel_initializer=keras.initializers.Constant(matrix),
        # float32 under every policy: the resize must match the pipeline's.
        dtype="float32",
        name=name,
    )


def any_size_copy(core: keras.Model) -> keras.Model:
    """A copy of a functional model whose inputs take any height and width.

    Convolutions, pooling and up-sampling do not depend on the image size,
    so the same weights run at several sizes (test-time augmentation over
    scales). Every input layer, nested models' too, gets `None` for its
    height and width; the weights are copied.

    Args:
        core: A functional `keras.Model` of Keras' own layers, `(batch, S, S,
            3)` -> `(batch, S, S, C)`.

    Returns:
        A new `keras.Model` `(batch, None, None, 3)` -> `(batch, None, None,
        C)` with the same layer names and weights.
    """

    def free(config):
        if isinstance(config, dict):
            inner = config.get("config")
            if (
                config.get("class_name") == "InputLayer"
                and isinstance(inner, dict)
                and inner.get("batch_shape")
            ):
                shape = list(inner["batch_shape"])
                return {**config, "config": {**inner, "batch_shape": [shape[0], None, None, *shape[3:]]}}
            return {k: free(v) for k, v in config.items()}
        if isinstance(config, list):
            return [free(v) for v in config]
        return config

    copy = core.__class__.from_config(free(core.get_config()))
    copy.set_weights(core.get_weights())
    return copy


def with_logit_bias(core: keras.Model, bias) -> keras.Model:
    """A copy of a model with `bias` added to the scores before its softmax.

    The bias goes into the head convolution's own bias (`head_conv`), so the
    copy has the same layers as the model, and loads without this project.
    Training with class weights multiplies each class's odds by about its
    weight; a bias of `-alpha * log(weights)` divides part of that back out
    (logit adjustment, Menon et al., 2021).

    Args:
        core: A model ending in `head_conv` (a `Conv2D` with bias) and a softmax.
        bias: `(C,)` values added to the logits of the C classes.

    Returns:
        A new `keras.Model`, the same as `core` but for `head_conv`'s bias.
    """
    import numpy as np

    copy = core.__class__.from_config(core.get_config())
    copy.set_weights(core.get_weights())
    head = copy.get_layer("head_conv")
    head.bias.assign(np.asarray(head.bias.numpy(), np.float32) + np.asarray(bias, np.float32))
    return copy


def tta_sizes(size: int, scales: int, step: int = 16) -> tuple[int, ...]:
    """Input sizes for test-time augmentation over scales.

    Args:
        size: The training size.
        scales: How many sizes: 1 for `size` alone, 2 adds one about a sixth
            larger (112 for 96), rounded up to a multiple of `step`.
        step: The network's total down-sampling factor.

    Returns:
        The sizes, the training size first.
    """
    extra = [-(-round(size * (1 + k / 6)) // step) * step for k in range(1, scales)]
    return (size, *extra)


def at_source_size(
    core: keras.Model,
    source_size: int,
    name: str | None = None,
    flip: bool = False,
    sizes: Sequence[int] | None = None,
) -> keras.Model:
    """Wrap a model so that it takes and returns images at the data's size.

    The photo (raw RGB, `(batch, source_size, source_size, 3)`) is area
    resized to the core's input inside the model, as the training pipeline
    resizes it, and the core's class probabilities are resized bilinearly
    back to `source_size` (class ids are never interpolated; the argmax is
    taken after). Whoever feeds the saved model photos "resized to its input
    size" then feeds them as they are: the model is not judged on a resize
    it was not trained with (bilinear without antialiasing, OpenCV's
    default, lost 0.013 mean IoU against area on the CPU default model), and
    its output lines up with the full-size labels.

    With `flip`, the core also sees the mirrored photo, and its scores,
    mirrored back, are averaged with the plain ones (test-time
    augmentation: twice the prediction cost, for +0.004 mean IoU and
    +0.0025 pixel accuracy on the CPU default model; README, Measured).
    With more than one of `sizes`, the core also runs at the others (the
    photo area-resized to each) and their scores, each resized to
    `source_size`, are averaged in (test-time augmentation over scales).

    The area resize is two frozen `Dense` layers holding `area_matrix` (one
    per axis, between `Permute`s); the mirror is the same resize with the
    columns of the width matrix reversed, and the scores are mirrored back
    by a frozen `Dense` holding the reversed identity. Exact, a few small
    matrix products, and only Keras' own layers, so the model loads without
    this project, on every backend, and exports.

    Args:
        core: Model `(batch, S, S, 3)` -> `(batch, S, S, C)` probabilities;
            with several `sizes`, one that takes any size (`any_size_copy`).
        source_size: Side of the photos and labels of the data.
        name: Model name; the core's name with `_at_<source_size>` by default.
        flip: Average in the scores of the horizontally mirrored photo.
        sizes: Sizes to run the core at, its training size first; that
            size alone when None.

    Returns:
        A `keras.Model` `(batch, source_size, source_size, 3)` ->
        `(batch, source_size, source_size, C)`, float32, sharing the core's
        weights; an uncompiled view of the core itself when `source_size`
        is its input size, `flip` is off and there is one size.
    """
    import numpy as np

    shape = core.input_shape
    sizes = tuple(sizes) if sizes else (int(shape[1]),)
    size = sizes[0]
    if source_size == size and not flip and len(sizes) == 1:
        # An uncompiled view: the saved file then carries no loss, and loads
        # without this project whatever `--loss` trained it.
        return keras.Model(core.input, core.output, name=name or core.name)
    inputs = keras.Input((source_size, source_size, 3), name="photo")
    # A fresh Model over the core's graph: the same layers and weights,
    # without the core's compile state, which would be saved with a nested
    # model and then need a custom loss to load even with compile=False.
    view = keras.Model(core.input, core.output, name=core.name)
    chw = keras.layers.Permute((3, 1, 2), name="photo_to_chw")(inputs)  # (B, 3, H, W)
    per_size = []
    for k, s in enumerate(sizes):
        # The first size keeps the names a one-size model has always had.
        at = "" if k == 0 else f"_{s}"
        area = area_matrix(source_size, s).T  # (source, s)
        area_h = _frozen_axis_map(area, f"photo_area_h{at}")
        scores = []
        for mirrored in (False, True) if flip else (False,):
            tag = ("_flip" if mirrored else "") + at
            if source_size == s and not mirrored:
                x = inputs
            else:
                # Reversed columns: the resize and the mirror in one product.
                area_w = _frozen_axis_map(area[:, ::-1] if mirrored else area, f"photo_area_w{tag}")
                x = area_w(chw)  # (B, 3, H, s)
                x = keras.layers.Permute((1, 3, 2), name=f"photo_swap_hw{tag}")(x)  # (B, 3, s, H)
                x = area_h(x)  # (B, 3, s(w), s(h))
                x = keras.layers.Permute((3, 2, 1), name=f"photo_to_hwc{tag}")(x)  # (B, s, s, 3)
            probs = view(x)
            if mirrored:
                probs = keras.layers.Permute((1, 3, 2), name=f"scores_to_hcw{at}")(probs)  # (B, s, C, s)
                probs = _frozen_axis_map(np.eye(s, dtype=np.float32)[::-1], f"scores_unflip{at}")(probs)
                probs = keras.layers.Permute((1, 3, 2), name=f"scores_to_hwc{at}")(probs)  # (B, s, s, C)
            scores.append(probs)
        probs = keras.layers.Average(dtype="float32", name=f"scores_mean{at}")(scores) if flip else scores[0]
        if source_size != s:
            probs = keras.layers.Resizing(
                source_size, source_size, interpolation="bilinear", dtype="float32", name=f"scores_resize{at}"
            )(probs)
        per_size.append(probs)
    if len(per_size) > 1:
        probs = keras.layers.Average(dtype="float32", name="scores_mean_sizes")(per_size)
    return keras.Model(inputs, probs, name=name or f"{core.name}_at_{source_size}")


def inference_model(
    core: keras.Model,
    source_size: int,
    flip: bool = False,
    sizes: Sequence[int] | None = None,
    logit_bias=None,
) -> keras.Model:
    """The model a run saves: the trained core, wrapped for use.

    A float32 copy (`float32_copy`) of `at_source_size` over the core, with
    `logit_bias` folded into its head (`with_logit_bias`) and, for several
    `sizes`, a core that takes any size (`any_size_copy`). The training
    model itself is left as it is.

    Args:
        core: The trained model, `(batch, S, S, 3)` -> `(batch, S, S, C)`.
        source_size: Side of the data's photos and labels.
        flip: Average in the scores of the mirrored photo.
        sizes: Sizes to run the core at, S first; S alone when None.
        logit_bias: `(C,)` values added to the core's logits, or None.

    Returns:
        An uncompiled `keras.Model` `(batch, source_size, source_size, 3)` ->
        `(batch, source_size, source_size, C)`.
    """
    if sizes and len(sizes) > 1:
        core = any_size_copy(core)
    if logit_bias is not None:
        core = with_logit_bias(core, logit_bias)
    return float32_copy(at_source_size(core, source_size, flip=flip, sizes=sizes))


def _float32_policies(config):
    """`config` with every mixed dtype policy in it replaced by float32."""
    if isinstance(config, dict):
        inner = config.get("config")
        if config.get("class_name") == "DTypePolicy" and isinstance(inner, dict):
            if str(inner.get("name", "")).startswith("mixed_"):
                return {**config, "config": {**inner, "name": "float32"}}
        return {k: _float32_policies(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_float32_policies(v) for v in config]
    return config


def float32_copy(model: keras.Model) -> keras.Model:
    """A copy of a functional model that computes in float32, with its weights.

    Under `mixed_float16` or `mixed_bfloat16` the weights are float32
    already and only the layers' computation is in 16 bits. A model saved
    that way computes in 16 bits wherever it is loaded: on a CPU without
    bf16 units that is several times slower than float32, and an exported
    copy (OpenVINO computes in float32) disagrees with it on more pixels.
    The copy rebuilds the same layers (nested models too) from the
    model's config with float32 policies and takes its weights.

    Args:
        model: A functional `keras.Model` of Keras' own layers.

    Returns:
        A new, uncompiled `keras.Model` with the same inputs, outputs,
        layer names and weights, every layer float32; `model` itself when
        no layer has a mixed policy.
    """
    config = model.get_config()
    fixed = _float32_policies(config)
    if fixed == config:
        return model
    copy = model.__class__.from_config(fixed)
    copy.set_weights(model.get_weights())
    return copy
