"""The project's two resizes, defined once: area for photos, nearest for class ids.

The photo resize is `area_matrix`: a matrix per axis. The saved and the
training model apply it as frozen layers (`segmentation_model.resize_photo`),
so inference sees photos reduced exactly as training did; `area_resize` is
its NumPy twin, for photos that must reach a model's input size where no
model runs it (`predict` on photos of another size). Class ids are never
interpolated: `nearest_indices` picks source pixels, the same ones in NumPy
and TensorFlow. Pure NumPy, a leaf of the project.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=64)
def area_matrix(source_size: int, size: int) -> np.ndarray:
    """The area resize of one axis as a matrix.

    Output pixel `o` covers `[o * scale, (o + 1) * scale)` of the input,
    `scale = source_size / size`; each input pixel it touches is weighted by
    the length it covers, divided by `scale`. Enlarging repeats pixels.

    Args:
        source_size: Input length.
        size: Output length.

    Returns:
        Read-only float32 array `(size, source_size)` whose rows sum to 1.
    """
    scale = source_size / size
    a = np.zeros((size, source_size), np.float64)
    for o in range(size):
        lo, hi = o * scale, (o + 1) * scale
        for i in range(int(np.floor(lo)), min(int(np.ceil(hi)), source_size)):
            a[o, i] = (min(hi, i + 1) - max(lo, i)) / scale
    a = a.astype(np.float32)
    a.flags.writeable = False
    return a


def area_resize(photo: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-resize a photo with `area_matrix`, as the models' resize layers do.

    Args:
        photo: Array `(H, W, C)`, any real dtype (uint8 photos: 0..255).
        height: Output height.
        width: Output width.

    Returns:
        float32 array `(height, width, C)`; the input itself, as float32,
        when the size is unchanged.
    """
    x = np.asarray(photo, np.float32)
    if x.shape[:2] == (height, width):
        return x
    rows, cols = area_matrix(x.shape[0], height), area_matrix(x.shape[1], width)
    return np.einsum("oh,hwc,pw->opc", rows, x, cols, optimize=True).astype(np.float32)


def nearest_indices(source_size: int, size: int) -> np.ndarray:
    """The source pixel each output pixel of a nearest-neighbour resize takes.

    Half-pixel centres: `floor((o + 0.5) * source_size / size)`, the pixel
    under each output pixel's centre, as TensorFlow 2's `nearest` resize
    picks.

    Args:
        source_size: Input length.
        size: Output length.

    Returns:
        int64 array `(size,)` of indices into the input.
    """
    scale = np.float32(source_size) / np.float32(size)
    src = np.floor((np.arange(size, dtype=np.float32) + np.float32(0.5)) * scale)
    return np.clip(src.astype(np.int64), 0, source_size - 1)


def nearest_resize(array: np.ndarray, height: int, width: int, axis: int = 0) -> np.ndarray:
    """Nearest-neighbour resize of class ids (or colours): every value is an input value.

    Args:
        array: Array whose axes `axis` and `axis + 1` are height and width,
            e.g. `(H, W)` ids, or `(B, H, W)` with `axis=1`.
        height: Output height.
        width: Output width.
        axis: The height axis.

    Returns:
        The picked pixels, of the input's dtype.
    """
    rows = nearest_indices(array.shape[axis], height)
    cols = nearest_indices(array.shape[axis + 1], width)
    return np.take(np.take(array, rows, axis=axis), cols, axis=axis + 1)
