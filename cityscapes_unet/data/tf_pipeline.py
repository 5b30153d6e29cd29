"""tf.data input pipeline for the image pairs.

Each file is one JPEG holding the street photo (left half) and its
Cityscapes colour label image (right half). The pipeline reads and decodes
each file once, caches the uint8 photo and trainIds at their own size, and
per batch picks the labels at the size the network runs at (nearest
neighbour: ids are never interpolated) and expands them to one-hot masks
and per-pixel weights (0 on ignored pixels, `decode.targets`). Photos stay
at their own size: the model resizes them inside.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from cityscapes_unet.data import decode
from cityscapes_unet.resize import area_matrix, nearest_indices
from utils_func import IGNORE_ID, MAX_COLOR_DISTANCE, NUM_CLASSES, color_lut, decode_palette, lut_index

#: No autotuning thread. Keras drops each epoch's iterators, and dropping one
#: waits out that thread's current sleep, which grows to a minute while the
#: whole CPU idles; a cached pipeline is far ahead of the model without it.
FIXED_KNOBS = tf.data.Options()
FIXED_KNOBS.autotune.enabled = False


@functools.lru_cache(maxsize=4)
def _lut_tensor(max_distance: float) -> tf.Tensor:
    """`color_lut` as one eager tensor per process, captured by the graphs that use it.

    Built outside any graph (`init_scope`): a 16 MB constant inside a
    tf.data map function would be rebuilt by every graph that uses it.
    """
    with tf.init_scope():
        return tf.constant(color_lut(max_distance))


def tf_colors_to_ids(
    label_rgb: tf.Tensor, max_distance: float = MAX_COLOR_DISTANCE, method: str = "table"
) -> tf.Tensor:
    """TF version of `uf.colors_to_ids`: nearest palette colour.

    Args:
        label_rgb: uint8 tensor `(H, W, 3)`.
        max_distance: Pixels farther from every palette colour are ignored.
        method: `table`: one lookup per pixel in `utils_func.color_lut`;
            `search`: the distance to every palette colour per pixel. The
            same ids; `bench/pipeline.py` times both.

    Returns:
        uint8 tensor `(H, W)` of trainIds or IGNORE_ID.
    """
    if method == "table":
        return tf.gather(_lut_tensor(float(max_distance)), lut_index(tf.cast(label_rgb, tf.int32)))
    colors, train_ids = decode_palette()
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2 as one small matmul; exact in float32.
    p = tf.cast(tf.reshape(label_rgb, (-1, 3)), tf.float32)
    c = tf.constant(colors, tf.float32)
    d2 = (
        tf.reduce_sum(p * p, axis=1, keepdims=True)
        - 2.0 * tf.matmul(p, c, transpose_b=True)
        + tf.reduce_sum(c * c, axis=1)[None, :]
    )
    nearest = tf.argmin(d2, axis=1, output_type=tf.int32)
    ids = tf.gather(tf.constant(train_ids, tf.uint8), nearest)
    ids = tf.where(tf.reduce_min(d2, axis=1) > max_distance**2, tf.constant(IGNORE_ID, tf.uint8), ids)
    return tf.reshape(ids, tf.shape(label_rgb)[:2])


def area_resize(photo: tf.Tensor, size: int) -> tf.Tensor:
    """`resize.area_resize` in TensorFlow, to a square, rounded to uint8 (TFDS' full-size photos).

    Args:
        photo: uint8 tensor `(H, W, 3)` of a known static size.
        size: Side of the output.

    Returns:
        uint8 tensor `(size, size, 3)`.
    """
    rows = tf.constant(area_matrix(photo.shape[0], size))
    cols = tf.constant(area_matrix(photo.shape[1], size))
    out = tf.einsum("oh,hwc,pw->opc", rows, tf.cast(photo, tf.float32), cols)
    return tf.cast(tf.round(tf.clip_by_value(out, 0, 255)), tf.uint8)


def nearest_resize(ids: tf.Tensor, size: int, axis: int = 0) -> tf.Tensor:
    """Class ids picked at `size`x`size` (`resize.nearest_indices`: the same pixels as NumPy).

    Args:
        ids: Tensor whose axes `axis` and `axis + 1` (of static size) are height and width.
        size: Side of the output.
        axis: The height axis.
    """
    rows = nearest_indices(ids.shape[axis], size)
    cols = nearest_indices(ids.shape[axis + 1], size)
    return tf.gather(tf.gather(ids, rows, axis=axis), cols, axis=axis + 1)


def decode_pair(path: tf.Tensor, source_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Read one pair file: the photo and its label's trainIds at their own size.

    Args:
        path: Scalar string tensor.
        source_size: Side of the halves (`files.scan_pairs` checked it).

    Returns:
        `(photo, ids)`: uint8 `(S, S, 3)` and uint8 `(S, S)`.
    """
    # INTEGER_ACCURATE: the same pixels as libjpeg/OpenCV, so every decoder of
    # this project gives the same class ids.
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3, dct_method="INTEGER_ACCURATE")
    photo, label = decode.pair_halves(image, width=tf.shape(image)[1])
    ids = tf_colors_to_ids(label)
    return tf.ensure_shape(photo, (source_size, source_size, 3)), tf.ensure_shape(
        ids, (source_size, source_size)
    )


def decoded_dataset(files: list[str], source_size: int) -> tf.data.Dataset:
    """Decoded, cached `(photo, ids)` pairs: each file is decoded once, in file order.

    A file that passed the header check but fails to decode (truncated data)
    is dropped with a logged warning instead of ending the run. Iterating the
    result once (`class_frequencies`) fills the cache for `make_dataset`.
    """
    ds = tf.data.Dataset.from_tensor_slices(files)
    ds = ds.map(lambda p: decode_pair(p, source_size), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.ignore_errors(log_warning=True).cache()


def class_frequencies(decoded: tf.data.Dataset, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Share of labelled pixels in each class (ignored pixels left out), float64 `(num_classes,)`."""
    bins = decode.COUNT_BINS

    def count(acc, batch):
        ids = tf.cast(tf.reshape(batch[1], [-1]), tf.int32)
        return acc + tf.math.bincount(ids, minlength=bins, maxlength=bins, dtype=tf.int64)

    counts = decoded.batch(64).reduce(tf.zeros((bins,), tf.int64), count)
    return decode.frequencies(counts.numpy(), num_classes)


def _flip(photo: tf.Tensor, ids: tf.Tensor, seed: tf.Tensor):
    # One draw for both: photo and mask stay aligned.
    flip = tf.random.stateless_uniform((), seed) < 0.5
    photo = tf.cond(flip, lambda: photo[:, ::-1], lambda: photo)
    ids = tf.cond(flip, lambda: ids[:, ::-1], lambda: ids)
    return photo, ids


def make_dataset(
    decoded: tf.data.Dataset,
    label_size: int,
    batch_size: int,
    training: bool,
    seed: int = 0,
    augment: str = "none",
    pad_to: int = 1,
) -> tf.data.Dataset:
    """Batches for `model.fit` from the decoded cache.

    cache -> [seeded shuffle, flip] -> labels picked at `label_size` ->
    batch -> [pad] -> one-hot -> prefetch.

    Args:
        decoded: A dataset from `decoded_dataset` (or `tfds.load_cityscapes`).
        label_size: Side of the one-hot masks and weights: the network's size.
        batch_size: Batch size.
        training: Shuffle (reshuffled each epoch) and augment when True.
        seed: Seed of the shuffle and the flips.
        augment: `flip` (training only): a random horizontal flip; `none`.
        pad_to: Pad every batch to a multiple of this many samples with
            weightless ones (JAX's data parallelism splits a batch into
            equal shares; a weight of 0 keeps them out of loss and metrics).

    Returns:
        A dataset of `(x, y, w)`: uint8 photos `(B, S, S, 3)`, uint8 one-hot
        masks `(B, s, s, C)` (all zero on ignored pixels) and uint8 weights
        `(B, s, s)` (0 on ignored pixels, else 1).
    """
    ds = decoded
    if training:
        # The whole (compact) split fits the buffer: a full shuffle.
        ds = ds.shuffle(100_000, seed=seed, reshuffle_each_iteration=True)
        if augment == "flip":
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
            ds = tf.data.Dataset.zip((ds, seeds)).map(
                lambda pair, s: _flip(pair[0], pair[1], s), num_parallel_calls=tf.data.AUTOTUNE
            )
    ds = ds.map(
        lambda photo, ids: (photo, nearest_resize(ids, label_size)), num_parallel_calls=tf.data.AUTOTUNE
    )
    ds = ds.batch(batch_size)
    if pad_to > 1:
        ds = ds.map(lambda photo, ids: pad_batch(photo, ids, pad_to), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(FIXED_KNOBS)


def to_model_inputs(photo: tf.Tensor, ids: tf.Tensor, num_classes: int = NUM_CLASSES):
    """`(x, y, w)` of a batch, all uint8: Keras casts them inside the step (a quarter of float32's memory)."""
    y, w = decode.targets(tf.cast(ids, tf.uint8), num_classes)
    return photo, tf.cast(y, tf.uint8), tf.cast(w, tf.uint8)


def pad_batch(photo: tf.Tensor, ids: tf.Tensor, multiple: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Pad a batch to a multiple of `multiple` with black photos whose ids are all `decode.PAD_IDS`."""
    extra = decode.padding(tf.shape(ids)[0], multiple)
    photo = tf.pad(photo, [[0, extra], [0, 0], [0, 0], [0, 0]])
    ids = tf.pad(ids, [[0, extra], [0, 0], [0, 0]], constant_values=decode.PAD_IDS)
    return photo, ids
