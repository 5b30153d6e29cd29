"""The decode core that the tf.data and the NumPy pipelines share.

Each pair file is one JPEG holding the street photo (left half) and its
Cityscapes colour label image (right half). Both pipelines
(`tf_pipeline.decode_pair`, `numpy_pipeline.decode_pair_np`) read the JPEG
with their own decoder and resize with their own kernels (a `Kernels`
bundle); the steps themselves are written here once:

- the split of the pair into its halves (`pair_halves`);
- the order of the decode steps (`decode_halves`): the photo resized by
  area, the label turned into trainIds through `utils_func.color_lut` and
  resized by nearest neighbour only;
- the rule for ignored pixels in what the model trains on (`targets`,
  `padding`, `PAD_IDS`);
- the class frequencies of the counted ids (`frequencies`);
- the augmentation choices (`AUGMENTS`, `augment_mode`).

Backend-independent: the functions use only slicing, arithmetic and
comparisons, which NumPy arrays and TensorFlow tensors share, and nothing
here imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from utils_func import IGNORE_ID, NUM_CLASSES

#: `--augment` choices: `none`; `flip` (random horizontal flip); `full`:
#: flip, random zoom-and-crop and photometric jitter
#: (`tf_pipeline.augment_pair`); `mild`: the same, weaker.
AUGMENTS = ("none", "flip", "full", "mild")

#: Zoom-and-crop's largest factor and the photometric jitter's largest
#: relative change of the choices that need them (tf.data only).
ZOOM_JITTER = {"full": (1.5, 0.1), "mild": (1.2, 0.05)}

#: Id of the samples that pad a batch: ignored, so they weigh nothing.
PAD_IDS = IGNORE_ID

#: Bins of the id counts: every uint8 id, IGNORE_ID included.
COUNT_BINS = 256


def augment_mode(augment: bool | str) -> str:
    """The augmentation of `augment`, checked.

    Args:
        augment: One of `AUGMENTS`; True means `flip`, False `none`.

    Returns:
        One of `AUGMENTS`.

    Raises:
        ValueError: If `augment` is none of these.
    """
    mode = {True: "flip", False: "none"}.get(augment, augment)
    if mode not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    return mode


def pair_halves(image, width=None):
    """Split a side-by-side pair into its photo and colour label halves.

    Args:
        image: uint8 array or tensor `(H, W, 3)`, photo left, label right.
        width: `W`, for a tensor whose width is only known when it runs
            (`tf.shape(image)[1]`); None reads `image.shape[1]`.

    Returns:
        `(photo, label)`: `(H, W // 2, 3)` each, of the input's type.
    """
    half = (image.shape[1] if width is None else width) // 2
    return image[:, :half], image[:, half:]


class Kernels(NamedTuple):
    """What one backend brings to `decode_halves`.

    Attributes:
        area_resize: `(photo, size)` -> uint8 `(size, size, 3)`: area
            resampling rounded half to even, as TensorFlow's `area` resize.
        nearest_resize: `(array, size)` -> `(size, size, ...)`: the source
            pixels TensorFlow 2's `method="nearest"` picks, for `(H, W)`
            ids and `(H, W, 3)` colours alike.
        colors_to_ids: `(label)` -> uint8 `(H, W)`: trainIds from
            `utils_func.color_lut`, IGNORE_ID off the palette.
    """

    area_resize: Callable
    nearest_resize: Callable
    colors_to_ids: Callable


def decode_halves(image, image_size: int, kernels: Kernels, full_labels: bool = False, width=None):
    """Turn a decoded pair into the resized photo and label ids.

    Ids are resized with nearest neighbour only: class ids are never
    interpolated. Picking pixels commutes with the per-pixel colour -> id
    map, so when only the resized ids are wanted the colours of the picked
    pixels are looked up, not all of them: the same ids as decoding the
    whole label and resizing its ids (a test checks it), with far fewer
    table lookups at the small sizes, which dominate the first pass.

    Args:
        image: uint8 `(H, W, 3)` RGB pair, as the backend's decoder gives it.
        image_size: Side of the square output.
        kernels: The backend's resize and lookup functions.
        full_labels: Also return the ids at the label's own resolution.
        width: See `pair_halves`.

    Returns:
        `(photo, ids)`: uint8 `(image_size, image_size, 3)` and uint8
        `(image_size, image_size)`; with `full_labels`, `(photo, ids,
        full_ids)` where `full_ids` is uint8 `(H, W // 2)`.
    """
    photo, label = pair_halves(image, width)
    photo = kernels.area_resize(photo, image_size)
    if not full_labels:
        return photo, kernels.colors_to_ids(kernels.nearest_resize(label, image_size))
    full_ids = kernels.colors_to_ids(label)
    return photo, kernels.nearest_resize(full_ids, image_size), full_ids


def targets(ids, num_classes: int = NUM_CLASSES):
    """One-hot masks and per-pixel weights of class ids, as booleans.

    The rule for ignored pixels: an id outside 0..num_classes-1 (IGNORE_ID,
    a padding sample) matches no class, so its one-hot row is all zero and
    its weight 0, which keeps it out of the loss and of every metric.

    Args:
        ids: uint8 array or tensor `(...)` of trainIds or IGNORE_ID.
        num_classes: Number of classes.

    Returns:
        `(one_hot, labelled)`: bool `(..., num_classes)` and bool `(...)`,
        of the input's type; the caller casts them (to uint8).
    """
    return ids[..., None] == np.arange(num_classes, dtype=np.uint8), ids < num_classes


def padding(batch: int, multiple: int) -> int:
    """How many samples pad a batch of `batch` to a multiple of `multiple`.

    JAX's data parallelism splits a batch into equal shares; the padding
    samples are black photos with `PAD_IDS` everywhere, which `targets` gives
    weight 0.

    Args:
        batch: Samples in the batch (an int, or an int tensor).
        multiple: The padded batch size is a multiple of this.

    Returns:
        The number of samples to add, in `[0, multiple)`.
    """
    return (multiple - batch % multiple) % multiple


def frequencies(counts: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Share of labelled pixels in each class, from the counts of every id.

    Args:
        counts: Integer array `(COUNT_BINS,)`: pixels of each uint8 id.
        num_classes: Number of classes; higher ids are ignored ones and are
            left out.

    Returns:
        float64 array `(num_classes,)` summing to 1 (all zeros if no pixel
        is labelled).
    """
    counts = np.asarray(counts)[:num_classes].astype(np.float64)
    total = counts.sum()
    return counts / total if total else counts
