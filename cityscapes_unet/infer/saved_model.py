"""The model a run saves, and test-time averaging where a user asks for it.

A run trains `segmentation_model.sized_model`: the photo area-resized inside
(`resize_photo`), then the network. The saved model is the same graph with
the class scores resized back to the photo's size (bilinearly: the argmax
is taken after, ids are never interpolated), the logit adjustment folded
into the head, and every layer in float32. It runs the network once.
`with_tta` rewraps that network to average over the mirrored photo
(`flip`) and over two more sizes (`scales`), for `predict`, `evaluate`
and `export --tta`. Only Keras' own layers: the file loads without this
project, on every backend, and exports.
"""

from __future__ import annotations

import keras
import numpy as np

from cityscapes_unet.settings import TTAS
from segmentation_model import frozen_axis_map, resize_photo

#: Power of the class weights divided back out of the saved model's odds
#: (`with_logit_bias`); docs/experiments.md has the runs that chose it.
LOGIT_ADJUST = 0.3


def network_of(model: keras.Model) -> tuple[keras.Model, int]:
    """The trained network inside a saved or training model, and the size it runs at.

    Args:
        model: A model from `sized_model` or `saved_model` (with or without
            averaging), or a plain network.

    Returns:
        `(network, size)`: the nested network (`model` itself when it has
        none) and the side its photos are resized to first (`photo_area_h`
        holds that resize; else the input's side).
    """
    network = next((layer for layer in model.layers if isinstance(layer, keras.Model)), model)
    try:
        size = model.get_layer("photo_area_h").units
    except ValueError:
        size = model.input_shape[1]
    return network, int(size)


def network_stride(network: keras.Model) -> int:
    """What the network's input sides must be a multiple of: 32 for a pretrained encoder."""
    if any(isinstance(layer, keras.Model) for layer in network.layers):
        return 32
    return 2 ** sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in network.layers)


def with_logit_bias(network: keras.Model, bias) -> keras.Model:
    """A copy of a network with `bias` added to its logits (in `head_conv`'s own bias).

    Training with class weights multiplies each class's odds by about its
    weight; a bias of `-alpha * log(weights)` divides part of that back out
    (logit adjustment, Menon et al., 2021). The copy has the same layers, so
    it loads without this project.

    Args:
        network: A model ending in `head_conv` (a `Conv2D` with bias) and a softmax.
        bias: `(C,)` values added to the logits of the C classes.

    Returns:
        A new `keras.Model`.
    """
    copy = network.__class__.from_config(network.get_config())
    copy.set_weights(network.get_weights())
    head = copy.get_layer("head_conv")
    head.bias.assign(np.asarray(head.bias.numpy(), np.float32) + np.asarray(bias, np.float32))
    return copy


def logit_bias(class_weights) -> np.ndarray | None:
    """The bias `saved_model` folds in for a run's class weights (None without weights)."""
    if class_weights is None:
        return None
    return -LOGIT_ADJUST * np.log(np.asarray(class_weights, np.float64))


def tta_sizes(size: int, tta: str, step: int) -> tuple[int, ...]:
    """The sizes the network runs at under `tta`: `size`, and one `step` below and above for `scales`."""
    if tta != "scales":
        return (size,)
    return (size, *(s for s in (size - step, size + step) if s >= step))


def _unflipped(scores, size: int, tag: str):
    """Scores of a mirrored photo, mirrored back: a frozen reversed identity over the width."""
    scores = keras.layers.Permute((1, 3, 2), name=f"scores_to_hcw{tag}")(scores)  # (B, s, C, s)
    scores = frozen_axis_map(np.eye(size, dtype=np.float32)[::-1], f"scores_unflip{tag}")(scores)
    return keras.layers.Permute((1, 3, 2), name=f"scores_to_hwc{tag}")(scores)


def _scores_at(network, photo, source_size: int, size: int, flip: bool, tag: str):
    """The network's scores for the photo at `size` (averaged with the mirror's), back at `source_size`."""
    scores = [network(resize_photo(photo, source_size, size, f"photo{tag}"))]
    if flip:
        mirrored = network(resize_photo(photo, source_size, size, f"photo_flip{tag}", mirror=True))
        scores.append(_unflipped(mirrored, size, tag))
        scores = [keras.layers.Average(dtype="float32", name=f"scores_mean{tag}")(scores)]
    if size == source_size:
        return scores[0]
    return keras.layers.Resizing(
        source_size, source_size, interpolation="bilinear", dtype="float32", name=f"scores_resize{tag}"
    )(scores[0])


def inference_model(network: keras.Model, source_size: int, size: int, tta: str = "none") -> keras.Model:
    """Photos of `source_size` in, class probabilities at that size out, the network at `size`.

    Args:
        network: A network that takes any size.
        source_size: Side of the photos.
        size: Side the network runs at (with `scales`, also a stride below and above).
        tta: One of `settings.TTAS`.

    Returns:
        A float32 `keras.Model` `(batch, source_size, source_size, 3)` ->
        `(batch, source_size, source_size, C)`.
    """
    if tta not in TTAS:
        raise ValueError(f"tta must be one of {', '.join(TTAS)}, not {tta!r}")
    photo = keras.Input((source_size, source_size, 3), name="photo")
    sizes = tta_sizes(size, tta, network_stride(network))
    per_size = [_scores_at(network, photo, source_size, s, tta != "none", "" if i == 0 else f"_{s}")
                for i, s in enumerate(sizes)]  # fmt: skip
    scores = per_size[0]
    if len(per_size) > 1:
        scores = keras.layers.Average(dtype="float32", name="scores_mean_sizes")(per_size)
    return float32_copy(keras.Model(photo, scores, name=f"{network.name}_at_{source_size}"))


def saved_model(trained: keras.Model, class_weights=None) -> keras.Model:
    """The file a run saves, from the model it trains (`sized_model`).

    A fresh, uncompiled model over the trained layers, so no custom loss is
    saved; the logit adjustment of `class_weights` folded into the head.

    Args:
        trained: The training model, `(batch, S, S, 3)` -> `(batch, s, s, C)`.
        class_weights: The run's class weights, or None.

    Returns:
        A float32 `keras.Model` `(batch, S, S, 3)` -> `(batch, S, S, C)`.
    """
    network, size = network_of(trained)
    bias = logit_bias(class_weights)
    if bias is not None:
        network = with_logit_bias(network, bias)
    return inference_model(network, int(trained.input_shape[1]), size)


def with_tta(saved: keras.Model, tta: str) -> keras.Model:
    """A saved model rewrapped to average over the mirror (`flip`) or sizes too (`scales`).

    Args:
        saved: A model as a run saves it.
        tta: One of `settings.TTAS`; `none` returns `saved` itself.

    Returns:
        A float32 `keras.Model` with the input and output shapes of `saved`.
    """
    if tta == "none":
        return saved
    network, size = network_of(saved)
    return inference_model(network, int(saved.input_shape[1]), size, tta)


def fixed_size_copy(network: keras.Model, size: int | None) -> keras.Model:
    """A copy of a functional network whose inputs, nested ones too, take `size` (None: any size).

    The weights are copied; every layer's shape is then known, as a drawing
    or a FLOP count needs.
    """

    def fix(config):
        if isinstance(config, dict):
            inner = config.get("config")
            if (
                config.get("class_name") == "InputLayer"
                and isinstance(inner, dict)
                and inner.get("batch_shape")
            ):
                shape = list(inner["batch_shape"])
                return {**config, "config": {**inner, "batch_shape": [shape[0], size, size, *shape[3:]]}}
            return {k: fix(v) for k, v in config.items()}
        if isinstance(config, list):
            return [fix(v) for v in config]
        return config

    copy = network.__class__.from_config(fix(network.get_config()))
    copy.set_weights(network.get_weights())
    return copy


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

    A model trained under `mixed_bfloat16` computes in 16 bits wherever it is
    loaded: slower than float32 on a CPU without bf16 units, and further from
    its exports. The copy rebuilds the same layers (nested models too) with
    float32 policies and takes the weights.

    Args:
        model: A functional `keras.Model` of Keras' own layers.

    Returns:
        A new, uncompiled `keras.Model` with the same layers and weights;
        `model` itself when no layer has a mixed policy.
    """
    config = model.get_config()
    fixed = _float32_policies(config)
    if fixed == config:
        return model
    copy = model.__class__.from_config(fixed)
    copy.set_weights(model.get_weights())
    return copy
