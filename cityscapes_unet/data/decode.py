"""The decode core that the tf.data and the NumPy pipelines share.

Each pair file is one JPEG holding the street photo (left half) and its
Cityscapes colour label image (right half). Both pipelines decode the JPEG
with libjpeg (TensorFlow's and OpenCV's) and turn the label's colours into
trainIds through `utils_func.color_lut`; the rest is written here once:

- the split of a pair into its halves (`pair_halves`);
- the rule for ignored pixels in what the model trains on (`targets`,
  `padding`, `PAD_IDS`);
- the class frequencies of the counted ids (`frequencies`).

Photos are cached at their own size: the models resize them inside
(`segmentation_model.resize_photo`). Backend-independent: only slicing,
arithmetic and comparisons, which NumPy arrays and TensorFlow tensors
share; nothing here imports TensorFlow.
"""

from __future__ import annotations

import numpy as np

from utils_func import IGNORE_ID, NUM_CLASSES

#: Id of the samples that pad a batch: ignored, so they weigh nothing.
PAD_IDS = IGNORE_ID

#: Bins of the id counts: every uint8 id, IGNORE_ID included.
COUNT_BINS = 256


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
