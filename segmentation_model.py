"""UNet for semantic segmentation, built from Functional-API block builders.

Every builder takes a tensor and returns one, and names its layers from a
prefix (``enc2_conv1``), so that a saved model reads like its diagram. The
model is backend-agnostic: only ``keras.layers`` and ``keras.ops``.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from cityscapes_unet.resize import area_matrix
from cityscapes_unet.settings import ENCODERS

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
    image_size: int | None = None,
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
        image_size: Height and width of the square input, divisible by
            `2 ** len(widths)`; None (the default) takes any such size.
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
    if image_size is not None and image_size % factor:
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


#: The feature layers of each pretrained encoder (`settings.ENCODERS`, the
#: `keras.applications` name in lower case) at strides 2, 4, 8, 16 (the
#: skips) and 32 (the bottom).
ENCODER_FEATURES = {
    "ResNet50": (
        "conv1_relu",
        "conv2_block3_out",
        "conv3_block4_out",
        "conv4_block6_out",
        "conv5_block3_out",
    ),
    "EfficientNetB0": (
        "block2a_expand_activation",
        "block3a_expand_activation",
        "block4a_expand_activation",
        "block6a_expand_activation",
        "top_activation",
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
    image_size: int | None = None,
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
        image_size: Side of the square input, a multiple of 32; None (the
            default) takes any such size.
        num_classes: Number of output classes.
        encoder: One of `settings.ENCODERS`.
        weights: `"imagenet"` or None (random initialisation). The caller
            handles a failed download (see `training.build_model`).
        decoder_widths: Widths of the five decoder levels, bottom up.
        name: Model name; `unet_<encoder>` by default.

    Returns:
        A `keras.Model` `(batch, S, S, 3)` -> `(batch, S, S, num_classes)`.
    """
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; one of {', '.join(ENCODERS)}")
    if image_size is not None and image_size % 32:
        raise ValueError(f"image size {image_size} is not divisible by 32 (the encoder's stride)")
    app_name = next(name for name in ENCODER_FEATURES if name.lower() == encoder)
    feature_layers = ENCODER_FEATURES[app_name]
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


def frozen_axis_map(matrix: np.ndarray, name: str) -> keras.layers.Dense:
    """A frozen float32 `Dense` that maps the last axis by `matrix` `(in, out)`."""
    return keras.layers.Dense(
        matrix.shape[1],
        use_bias=False,
        trainable=False,
        kernel_initializer=keras.initializers.Constant(matrix),
        # float32 under every policy: the resize is the same in training and use.
        dtype="float32",
        name=name,
    )


def resize_photo(x, source_size: int, size: int, prefix: str = "photo", mirror: bool = False):
    """Area-resize square photos inside a model: the project's one photo resize.

    Two frozen `Dense` layers hold `resize.area_matrix`, one per axis,
    between `Permute`s: exact, a few small matrix products, Keras' own
    layers only, so a model holding it loads without this project on every
    backend and exports. With `mirror`, the width matrix's columns are
    reversed: the resize and a horizontal flip in one product.

    Args:
        x: Photos `(batch, source_size, source_size, 3)`, RGB 0..255.
        source_size: Their side.
        size: The side to resize to.
        prefix: Name prefix of the layers (`photo_area_h`, ...).
        mirror: Also mirror the photos.

    Returns:
        Tensor `(batch, size, size, 3)`, float32; `x` itself when nothing changes.
    """
    if source_size == size and not mirror:
        return x
    area = np.asarray(area_matrix(source_size, size)).T  # (source, size)
    x = keras.layers.Permute((3, 1, 2), name=f"{prefix}_to_chw")(x)  # (B, 3, H, W)
    x = frozen_axis_map(area[:, ::-1] if mirror else area, f"{prefix}_area_w")(x)  # (B, 3, H, s)
    x = keras.layers.Permute((1, 3, 2), name=f"{prefix}_swap_hw")(x)  # (B, 3, s, H)
    x = frozen_axis_map(area, f"{prefix}_area_h")(x)  # (B, 3, s(w), s(h))
    return keras.layers.Permute((3, 2, 1), name=f"{prefix}_to_hwc")(x)  # (B, s, s, 3)


def sized_model(network: keras.Model, source_size: int, size: int, name: str | None = None) -> keras.Model:
    """The network behind `resize_photo`: photos of `source_size` in, scores at `size` out.

    What training fits at each input size, and the core of the saved model:
    both see photos reduced by the same layers.

    Args:
        network: A UNet that takes any size (`build_unet()`).
        source_size: Side of the photos the model takes.
        size: Side the network runs at.
        name: Model name; `<network>_at_<size>` by default.

    Returns:
        A `keras.Model` `(batch, source_size, source_size, 3)` -> `(batch, size, size, C)`
        sharing the network's layers.
    """
    photo = keras.Input((source_size, source_size, 3), name="photo")
    scores = network(resize_photo(photo, source_size, size))
    return keras.Model(photo, scores, name=name or f"{network.name}_at_{size}")
