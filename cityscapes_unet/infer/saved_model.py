"""The model a run saves: the trained core wrapped to take and return the data's size.

Area resize in, bilinear scores out, optional test-time augmentation (flip,
scales), a logit bias folded into the head, and a float32 copy.

Inside the model, the area resize is two frozen `Dense` layers holding
`area_matrix` (one per axis, between `Permute`s); the mirror is the same
resize with the columns of the width matrix reversed, and the scores are
mirrored back by a frozen `Dense` holding the reversed identity. Exact, a
few small matrix products, and only Keras' own layers, so the model loads
without this project, on every backend, and exports.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np


def area_matrix(source_size: int, size: int) -> np.ndarray:
    """The area resize of one axis as a matrix.

    Output pixel `o` covers `[o * scale, (o + 1) * scale)` of the input,
    `scale = source_size / size`; each input pixel it touches is weighted by
    the length it covers, divided by `scale`: the resize of TensorFlow's
    `method="area"` and of `numpy_pipeline.resize_area` (before rounding),
    in any direction.

    Args:
        source_size: Input length.
        size: Output length.

    Returns:
        float32 array `(size, source_size)` whose rows sum to 1.
    """
    scale = source_size / size
    a = np.zeros((size, source_size), np.float64)
    for o in range(size):
        lo, hi = o * scale, (o + 1) * scale
        for i in range(int(np.floor(lo)), min(int(np.ceil(hi)), source_size)):
            a[o, i] = (min(hi, i + 1) - max(lo, i)) / scale
    return a.astype(np.float32)


def _frozen_axis_map(matrix: np.ndarray, name: str) -> keras.layers.Dense:
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


def any_size_copy(core: keras.Model, size: int | None = None) -> keras.Model:
    """A copy of a functional model whose inputs take any height and width.

    Convolutions, pooling and up-sampling do not depend on the image size,
    so the same weights run at several sizes (test-time augmentation over
    scales). Every input layer, nested models' too, gets `None` for its
    height and width (or `size`); the weights are copied.

    Args:
        core: A functional `keras.Model` of Keras' own layers, `(batch, S, S,
            3)` -> `(batch, S, S, C)`.
        size: A side to fix instead (every layer's shape is then known, as
            a FLOP count needs); None: any.

    Returns:
        A new `keras.Model` `(batch, None, None, 3)` -> `(batch, None, None,
        C)` (with `size`: `(batch, size, size, 3)` -> `(batch, size, size,
        C)`) with the same layer names and weights.
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
                return {**config, "config": {**inner, "batch_shape": [shape[0], size, size, *shape[3:]]}}
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
    copy = core.__class__.from_config(core.get_config())
    copy.set_weights(core.get_weights())
    head = copy.get_layer("head_conv")
    head.bias.assign(np.asarray(head.bias.numpy(), np.float32) + np.asarray(bias, np.float32))
    return copy


def tta_sizes(size: int, scales: bool, step: int = 16, final: int = 0) -> tuple[int, ...]:
    """Input sizes for the saved model's network, with or without averaging over scales.

    Args:
        size: The training size.
        scales: Run the network at more than one size (`tta` "scales").
            Then the sizes are `size` and one about a sixth larger (112 for
            96), rounded up to a multiple of `step`.
        step: The network's total down-sampling factor.
        final: The size of the last epochs (`final_size`); ignored unless
            larger than `size`. Then the sizes are `final` alone, or with
            `scales` `final` and one `step` below and above: 144, 128 and
            160 after epochs at 144 (docs/experiments.md compares others).

    Returns:
        The sizes, the (last) training size first.
    """
    if final > size:
        return (final, max(size, final - step), final + step) if scales else (final,)
    return (size, -(-round(size * 7 / 6) // step) * step) if scales else (size,)


def _area_resized(photo, chw, source_size: int, size: int, area_h, mirrored: bool, tag: str):
    """The photo area-resized to `size` inside the model, mirrored if asked.

    Args:
        photo: The model's input, `(B, source_size, source_size, 3)`.
        chw: The same, permuted to `(B, 3, H, W)`.
        source_size: Side of the photo.
        size: Side to resize to.
        area_h: The frozen `Dense` of the height axis, shared by the plain
            and mirrored photo.
        mirrored: Mirror the photo horizontally as well.
        tag: Suffix of the new layers' names.

    Returns:
        A tensor `(B, size, size, 3)`: `photo` itself when nothing changes.
    """
    if source_size == size and not mirrored:
        return photo
    area = area_matrix(source_size, size).T  # (source, size)
    # Reversed columns: the resize and the mirror in one product.
    area_w = _frozen_axis_map(area[:, ::-1] if mirrored else area, f"photo_area_w{tag}")
    x = area_w(chw)  # (B, 3, H, s)
    x = keras.layers.Permute((1, 3, 2), name=f"photo_swap_hw{tag}")(x)  # (B, 3, s, H)
    x = area_h(x)  # (B, 3, s(w), s(h))
    return keras.layers.Permute((3, 2, 1), name=f"photo_to_hwc{tag}")(x)  # (B, s, s, 3)


def _unflipped(probs, size: int, at: str):
    """Scores of a mirrored photo mirrored back, `(B, size, size, C)`."""
    probs = keras.layers.Permute((1, 3, 2), name=f"scores_to_hcw{at}")(probs)  # (B, s, C, s)
    probs = _frozen_axis_map(np.eye(size, dtype=np.float32)[::-1], f"scores_unflip{at}")(probs)
    return keras.layers.Permute((1, 3, 2), name=f"scores_to_hwc{at}")(probs)  # (B, s, s, C)


def _scores_at(view: keras.Model, photo, chw, source_size: int, size: int, at: str, flip: bool):
    """The core's scores with the photo at `size` (and mirrored), back at `source_size`.

    Args:
        view: The core, `(B, size, size, 3)` -> `(B, size, size, C)`.
        photo: The model's input, `(B, source_size, source_size, 3)`.
        chw: The same as `(B, 3, H, W)`.
        source_size: Side of the photo and of the returned scores.
        size: Side the core runs at.
        at: Suffix of the new layers' names ("" for the first size).
        flip: Average in the scores of the mirrored photo.

    Returns:
        A float32 tensor `(B, source_size, source_size, C)`.
    """
    area_h = _frozen_axis_map(area_matrix(source_size, size).T, f"photo_area_h{at}")
    scores = []
    for mirrored in (False, True) if flip else (False,):
        tag = ("_flip" if mirrored else "") + at
        probs = view(_area_resized(photo, chw, source_size, size, area_h, mirrored, tag))
        scores.append(_unflipped(probs, size, at) if mirrored else probs)
    probs = keras.layers.Average(dtype="float32", name=f"scores_mean{at}")(scores) if flip else scores[0]
    if source_size != size:
        probs = keras.layers.Resizing(
            source_size, source_size, interpolation="bilinear", dtype="float32", name=f"scores_resize{at}"
        )(probs)
    return probs


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
    it was not trained with, and its output lines up with the full-size
    labels.

    With `flip`, the core also sees the mirrored photo, and its scores,
    mirrored back, are averaged with the plain ones (test-time
    augmentation, at twice the prediction cost). With more than one of
    `sizes`, the core also runs at the others (the photo area-resized to
    each) and their scores, each resized to `source_size`, are averaged in
    (test-time augmentation over scales). The module docstring says how.

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
    sizes = tuple(sizes) if sizes else (int(core.input_shape[1]),)
    if source_size == sizes[0] and not flip and len(sizes) == 1:
        # An uncompiled view: the saved file then carries no loss, and loads
        # without this project whatever `--loss` trained it.
        return keras.Model(core.input, core.output, name=name or core.name)
    photo = keras.Input((source_size, source_size, 3), name="photo")
    # A fresh Model over the core's graph: the same layers and weights,
    # without the core's compile state, which would be saved with a nested
    # model and then need a custom loss to load even with compile=False.
    view = keras.Model(core.input, core.output, name=core.name)
    chw = keras.layers.Permute((3, 1, 2), name="photo_to_chw")(photo)  # (B, 3, H, W)
    # The first size keeps the names a one-size model has always had.
    per_size = [
        _scores_at(view, photo, chw, source_size, s, "" if k == 0 else f"_{s}", flip)
        for k, s in enumerate(sizes)
    ]
    probs = per_size[0]
    if len(per_size) > 1:
        probs = keras.layers.Average(dtype="float32", name="scores_mean_sizes")(per_size)
    return keras.Model(photo, probs, name=name or f"{core.name}_at_{source_size}")


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
    `sizes` or one other than S, a core that takes any size
    (`any_size_copy`). The training
    model itself is left as it is.

    Args:
        core: The trained model, `(batch, S, S, 3)` -> `(batch, S, S, C)`.
        source_size: Side of the data's photos and labels.
        flip: Average in the scores of the mirrored photo.
        sizes: Sizes to run the core at, the last training size first; S
            alone when None.
        logit_bias: `(C,)` values added to the core's logits, or None.

    Returns:
        An uncompiled `keras.Model` `(batch, source_size, source_size, 3)` ->
        `(batch, source_size, source_size, C)`.
    """
    if sizes and (len(sizes) > 1 or sizes[0] != core.input_shape[1]):
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
    bf16 units that is slower than float32, and an exported
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


#: `export --tta` choices: keep the saved model's averaging, or run its
#: network once at its first size, with the mirror (`flip`) or alone.
EXPORT_TTAS = ("saved", "flip", "none")


def network_of(saved: keras.Model) -> tuple[keras.Model, int]:
    """The trained network inside a saved model, and the first size it runs at.

    Args:
        saved: A model as a run saves it (`inference_model`), or a plain
            network.

    Returns:
        `(core, size)`: the nested network (`saved` itself when it has none)
        and the side its photos are resized to first (`photo_area_h` holds
        that resize; the input's side when the model resizes nothing).
    """
    core = next((layer for layer in saved.layers if isinstance(layer, keras.Model)), saved)
    try:
        size = saved.get_layer("photo_area_h").units
    except ValueError:
        size = int(saved.input_shape[1])
    return core, int(size)


def with_tta(saved: keras.Model, tta: str) -> keras.Model:
    """A saved model rewrapped with less test-time averaging, for speed.

    The trained network, its logit bias and the input and output size stay;
    only the averaging changes: `flip` runs the network once at its first
    size and once on the mirror, `none` once (`scales` runs it at three
    sizes, each with the mirror).

    Args:
        saved: A model as a run saves it.
        tta: One of `EXPORT_TTAS`; `saved` returns `saved` itself.

    Returns:
        A float32 `keras.Model` with the input and output shapes of `saved`.
    """
    if tta == "saved":
        return saved
    core, size = network_of(saved)
    return inference_model(core, int(saved.input_shape[1]), flip=tta == "flip", sizes=(size,))
