"""tf.data input pipeline for the Cityscapes image pairs.

Each file is one JPEG holding the street photo (left half) and its
Cityscapes colour label image (right half). The pipeline reads and decodes
each file once, with the decode steps of `decode.decode_halves` and
TensorFlow's kernels (`TF_KERNELS`), caches the compact uint8 photos and
trainIds, and expands them to one-hot masks and per-pixel weights (0 on
ignored pixels, `decode.targets`) per batch, as late as possible.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from cityscapes_unet.data import decode
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
    tf.data map function would be rebuilt by every graph that uses it and
    slows the first pass.
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
        method: `table`: one lookup per pixel in `utils_func.color_lut`,
            the exact answer for every 24-bit colour (built once per
            process and threshold); `search`: the distance to every palette
            colour per pixel. The same ids; the table is faster
            (`bench/pipeline.py` measures both).

    Returns:
        uint8 tensor `(H, W)` of trainIds or IGNORE_ID.
    """
    if method == "table":
        return tf.gather(_lut_tensor(float(max_distance)), lut_index(tf.cast(label_rgb, tf.int32)))
    colors, train_ids = decode_palette()
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2 as one small matmul: (H*W, 3) x (3, 29);
    # exact in float32 (integers below 2**24).
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


def _is_size(image: tf.Tensor, image_size: int) -> tf.Tensor:
    # At the label's own size (256 for these pairs) the resizes are the
    # identity, and skipping them makes the first pass faster.
    return tf.reduce_all(tf.shape(image)[:2] == image_size)


def area_resize(photo: tf.Tensor, image_size: int) -> tf.Tensor:
    """Area resize of a photo to the square model input, rounded to uint8.

    Area resampling averages whole source pixels; the values are rounded
    half to even and clipped. `numpy_pipeline.resize_area` gives the same
    bytes (a test checks it).

    Args:
        photo: uint8 tensor `(H, W, 3)`.
        image_size: Side of the square output.

    Returns:
        uint8 tensor `(image_size, image_size, 3)`.
    """

    def resize():
        out = tf.image.resize(photo, (image_size, image_size), method="area")
        return tf.cast(tf.round(tf.clip_by_value(out, 0, 255)), tf.uint8)

    return tf.cond(_is_size(photo, image_size), lambda: photo, resize)


def nearest_resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Nearest-neighbour resize to a square: every output value is an input value.

    Args:
        image: Tensor `(H, W)` (class ids) or `(H, W, C)` (colours).
        image_size: Side of the square output.

    Returns:
        Tensor `(image_size, image_size[, C])` of the input's dtype.
    """
    flat = image.shape.rank == 2

    def resize():
        out = tf.image.resize(image[..., None] if flat else image, (image_size, image_size), method="nearest")
        return out[..., 0] if flat else out

    return tf.cond(_is_size(image, image_size), lambda: image, resize)


#: TensorFlow's kernels for `decode.decode_halves`.
TF_KERNELS = decode.Kernels(area_resize, nearest_resize, tf_colors_to_ids)


def decode_pair(path: tf.Tensor, image_size: int, full_labels: bool = False):
    """Read one pair file and return the resized photo and label ids.

    Args:
        path: Scalar string tensor.
        image_size: Side of the square output.
        full_labels: Also return the ids at the label's own resolution.

    Returns:
        `(photo, ids)`: uint8 `(image_size, image_size, 3)` and uint8
        `(image_size, image_size)`; with `full_labels`, `(photo, ids,
        full_ids)` where `full_ids` is uint8 `(H, W)` at the label's size.
    """
    # INTEGER_ACCURATE: the same pixels as libjpeg/OpenCV, so every decoder of
    # this project gives the same class ids.
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3, dct_method="INTEGER_ACCURATE")
    out = decode.decode_halves(image, image_size, TF_KERNELS, full_labels, width=tf.shape(image)[1])
    out[0].set_shape((image_size, image_size, 3))
    out[1].set_shape((image_size, image_size))
    return out


def to_model_inputs(photo: tf.Tensor, ids: tf.Tensor, num_classes: int = NUM_CLASSES):
    """Expand cached uint8 tensors into what the model trains on.

    Everything stays uint8: the one-hot masks take a quarter of the memory
    of float32 ones, and Keras casts the inputs, targets and weights to
    float inside the training step (on the accelerator, when there is one),
    with identical results.

    Args:
        photo: uint8 `(B, H, W, 3)`.
        ids: uint8 `(B, H, W)` trainIds or IGNORE_ID.
        num_classes: Number of classes.

    Returns:
        `(x, y, w)`: uint8 photo `(B, H, W, 3)` in 0..255, uint8 one-hot
        masks `(B, H, W, num_classes)` (all zeros on ignored pixels), and
        uint8 per-pixel weights `(B, H, W)` (0 on ignored pixels, else 1);
        see `decode.targets`.
    """
    y, w = decode.targets(tf.cast(ids, tf.uint8), num_classes)
    return photo, tf.cast(y, tf.uint8), tf.cast(w, tf.uint8)


def _flip(photo: tf.Tensor, ids: tf.Tensor, seed: tf.Tensor):
    # One draw for both: photo and mask stay aligned.
    flip = tf.random.stateless_uniform((), seed) < 0.5
    photo = tf.cond(flip, lambda: photo[:, ::-1], lambda: photo)
    ids = tf.cond(flip, lambda: ids[:, ::-1], lambda: ids)
    return photo, ids


def augment_pair(
    photo: tf.Tensor,
    ids: tf.Tensor,
    seed: tf.Tensor,
    max_scale: float = 1.5,
    jitter: float = 0.1,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Random flip, zoom-and-crop and photometric jitter of one pair.

    Photo and ids get the same geometric draw. The zoom scales both by a
    factor in [1, max_scale) (the photo bilinearly, the ids by nearest
    neighbour: class ids are never interpolated) and crops a random window of
    the original size, the same window from both. Brightness, contrast and
    saturation of the photo alone change by up to `jitter` (relative).

    Args:
        photo: uint8 `(S, S, 3)`.
        ids: uint8 `(S, S)` trainIds or IGNORE_ID.
        seed: int `(2,)` stateless seed.
        max_scale: Largest zoom factor; 1 disables zooming.
        jitter: Largest relative photometric change; 0 disables it.

    Returns:
        `(photo, ids)` with the input shapes and dtypes.
    """
    seeds = tf.random.experimental.stateless_split(seed, 6)
    photo, ids = _flip(photo, ids, seeds[0])
    size = tf.shape(ids)[0]
    if max_scale > 1:
        scale = tf.random.stateless_uniform((), seeds[1], 1.0, max_scale)
        new = tf.cast(tf.math.ceil(tf.cast(size, tf.float32) * scale), tf.int32)
        big_photo = tf.image.resize(photo, (new, new), method="bilinear")
        big_ids = tf.image.resize(ids[..., None], (new, new), method="nearest")[..., 0]
        # One window for both (maxval is exclusive).
        oy, ox = tf.unstack(tf.random.stateless_uniform((2,), seeds[2], 0, new - size + 1, dtype=tf.int32))
        photo = tf.cast(tf.round(big_photo[oy : oy + size, ox : ox + size]), tf.uint8)
        ids = big_ids[oy : oy + size, ox : ox + size]
    if jitter > 0:
        x = tf.cast(photo, tf.float32)
        gray = tf.reduce_mean(x, axis=-1, keepdims=True)
        sat = tf.random.stateless_uniform((), seeds[3], 1 - jitter, 1 + jitter)
        x = gray + sat * (x - gray)
        con = tf.random.stateless_uniform((), seeds[4], 1 - jitter, 1 + jitter)
        x = tf.reduce_mean(x) + con * (x - tf.reduce_mean(x))
        x = x + 255.0 * tf.random.stateless_uniform((), seeds[5], -jitter, jitter)
        photo = tf.cast(tf.round(tf.clip_by_value(x, 0, 255)), tf.uint8)
    return photo, ids


def decoded_dataset(files: list[str], image_size: int) -> tf.data.Dataset:
    """Decoded, cached `(photo, ids)` pairs: each file is decoded once.

    Args:
        files: Pair files (checked with `scan_pairs`).
        image_size: Side of the square model input.

    Returns:
        A cached dataset of uint8 `(image_size, image_size, 3)` photos and
        uint8 `(image_size, image_size)` trainIds, in file order. Iterating it
        once (see `class_frequencies`) fills the cache for `make_dataset`.
    """
    ds = tf.data.Dataset.from_tensor_slices(files)
    ds = ds.map(lambda p: decode_pair(p, image_size), num_parallel_calls=tf.data.AUTOTUNE)
    # A file that passed the header check but fails to decode (truncated
    # data) is dropped with a logged warning instead of ending the run.
    ds = ds.ignore_errors(log_warning=True)
    return ds.cache()


def class_frequencies(decoded: tf.data.Dataset, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Share of labelled pixels in each class (ignored pixels left out).

    Args:
        decoded: A dataset from `decoded_dataset`.
        num_classes: Number of classes.

    Returns:
        float64 array `(num_classes,)` summing to 1 (all zeros if no pixel
        is labelled).
    """
    bins = decode.COUNT_BINS

    def count(acc, batch):
        ids = tf.cast(tf.reshape(batch[1], [-1]), tf.int32)
        return acc + tf.math.bincount(ids, minlength=bins, maxlength=bins, dtype=tf.int64)

    counts = decoded.batch(256).reduce(tf.zeros((bins,), tf.int64), count)
    return decode.frequencies(counts.numpy(), num_classes)


def make_dataset(
    files: list[str] | tf.data.Dataset,
    image_size: int,
    batch_size: int,
    training: bool,
    seed: int = 0,
    augment: bool | str = "flip",
    pad_to: int = 1,
) -> tf.data.Dataset:
    """Build the input pipeline over pair files.

    read -> decode -> split halves -> resize photo / decode and resize ids ->
    cache (uint8) -> [seeded shuffle, flip] -> batch -> [pad] -> one-hot ->
    prefetch.

    Args:
        files: Pair files (checked with `scan_pairs`), or a dataset from
            `decoded_dataset` to reuse its cache.
        image_size: Side of the square model input.
        batch_size: Batch size.
        training: Shuffle (reshuffled each epoch) and augment when True.
        seed: Seed of the shuffle and the augmentation draws.
        augment: One of `decode.AUGMENTS` (training only): `flip`, a random
            horizontal flip; `full` and `mild`, `augment_pair` with the
            strengths of `decode.ZOOM_JITTER`. True means `flip`, False
            `none`.
        pad_to: Pad every batch to a multiple of this many samples with
            weightless ones (JAX's data parallelism splits a batch into
            equal shares; a weight of 0 keeps them out of loss and metrics).

    Returns:
        A dataset of `(x, y, w)` batches, see `to_model_inputs`.
    """
    ds = files if isinstance(files, tf.data.Dataset) else decoded_dataset(files, image_size)
    if training:
        # The whole (compact) split fits the buffer: a full shuffle.
        ds = ds.shuffle(100_000, seed=seed, reshuffle_each_iteration=True)
        mode = decode.augment_mode(augment)
        if mode != "none":
            if mode == "flip":
                fn = _flip
            else:
                max_scale, jitter = decode.ZOOM_JITTER[mode]
                fn = functools.partial(augment_pair, max_scale=max_scale, jitter=jitter)
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
            ds = tf.data.Dataset.zip((ds, seeds)).map(
                lambda pair, s: fn(pair[0], pair[1], s),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
    ds = ds.batch(batch_size)
    if pad_to > 1:
        ds = ds.map(lambda photo, ids: pad_batch(photo, ids, pad_to), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(FIXED_KNOBS)


def pad_batch(photo: tf.Tensor, ids: tf.Tensor, multiple: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Pad a batch to a multiple of `multiple` samples with weightless ones.

    The padding samples are black photos whose ids are all `decode.PAD_IDS`
    (ignored): `to_model_inputs` gives them zero one-hot rows and zero
    weights, so they count nowhere.

    Args:
        photo: uint8 `(B, H, W, 3)`.
        ids: uint8 `(B, H, W)`.
        multiple: The batch size becomes a multiple of this.

    Returns:
        `(photo, ids)` with `B` rounded up to a multiple of `multiple`.
    """
    extra = decode.padding(tf.shape(ids)[0], multiple)
    photo = tf.pad(photo, [[0, extra], [0, 0], [0, 0], [0, 0]])
    ids = tf.pad(ids, [[0, extra], [0, 0], [0, 0]], constant_values=decode.PAD_IDS)
    return photo, ids
