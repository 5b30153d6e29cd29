"""tf.data input pipeline for the Cityscapes image pairs.

Each file is one JPEG holding the street photo (left half) and its
Cityscapes colour label image (right half). The pipeline reads and decodes
each file once, turns the label half into trainIds by nearest palette colour
at full resolution, resizes the photo (area) and the ids (nearest neighbour
only), caches these compact uint8 tensors, and expands them to one-hot masks
and per-pixel weights (0 on ignored pixels) per batch, as late as possible.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from utils_func import AUGMENTS, IGNORE_ID, MAX_COLOR_DISTANCE, NUM_CLASSES, color_lut, decode_palette


@functools.lru_cache(maxsize=4)
def _lut_tensor(max_distance: float) -> tf.Tensor:
    """`color_lut` as one eager tensor per process, captured by the graphs that use it.

    Built outside any graph (`init_scope`): a 16 MB constant inside a
    tf.data map function made the first pass 1.5x slower than this capture.
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
        method: `table`: one lookup per pixel in `uf.color_lut`, the
            exact answer for every 24-bit colour (built once per process
            and threshold, under a second); `search`: the distance to every
            palette colour per pixel. The same ids; the table is about 4x
            faster (`bench/pipeline.py`).

    Returns:
        uint8 tensor `(H, W)` of trainIds or IGNORE_ID.
    """
    if method == "table":
        rgb = tf.cast(label_rgb, tf.int32)
        index = (rgb[..., 0] * 256 + rgb[..., 1]) * 256 + rgb[..., 2]
        return tf.gather(_lut_tensor(float(max_distance)), index)
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


def _area_resize(photo: tf.Tensor, image_size: int) -> tf.Tensor:
    # Area resampling averages whole source pixels (what cv2.INTER_AREA does).
    photo = tf.image.resize(photo, (image_size, image_size), method="area")
    return tf.cast(tf.round(tf.clip_by_value(photo, 0, 255)), tf.uint8)


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
    half = tf.shape(image)[1] // 2
    photo, label = image[:, :half], image[:, half:]
    # At the label's own size (256 for these pairs) both resizes are the
    # identity, and skipping them makes the first pass faster.
    same = tf.reduce_all(tf.shape(label)[:2] == image_size)
    photo = tf.cond(same, lambda: photo, lambda: _area_resize(photo, image_size))

    # Ids are resized with nearest neighbour only: class ids are never
    # interpolated. Picking pixels commutes with the per-pixel colour -> id
    # map, so when only the resized ids are wanted the colours of the picked
    # pixels are looked up, not all of them: the same ids as decoding the
    # whole label and resizing its ids (a test checks it), with 1/7 of the
    # table lookups at 96x96, which dominate the first pass.
    def nearest(x):
        return tf.image.resize(x, (image_size, image_size), method="nearest")

    if full_labels:
        full_ids = tf_colors_to_ids(label)
        ids = tf.cond(same, lambda: full_ids, lambda: nearest(full_ids[..., None])[..., 0])
    else:
        ids = tf_colors_to_ids(tf.cond(same, lambda: label, lambda: nearest(label)))
    photo.set_shape((image_size, image_size, 3))
    ids.set_shape((image_size, image_size))
    return (photo, ids, full_ids) if full_labels else (photo, ids)


def to_model_inputs(photo: tf.Tensor, ids: tf.Tensor, num_classes: int = NUM_CLASSES):
    """Expand cached uint8 tensors into what the model trains on.

    Everything stays uint8: the one-hot masks are 1.2 MB per 256x256 sample
    instead of 5 MB in float32, and Keras casts the inputs, targets and
    weights to float inside the training step (on the accelerator, when
    there is one), with identical results.

    Args:
        photo: uint8 `(B, H, W, 3)`.
        ids: uint8 `(B, H, W)` trainIds or IGNORE_ID.
        num_classes: Number of classes.

    Returns:
        `(x, y, w)`: uint8 photo `(B, H, W, 3)` in 0..255, uint8 one-hot
        masks `(B, H, W, num_classes)` (all zeros on ignored pixels), and
        uint8 per-pixel weights `(B, H, W)` (0 on ignored pixels, else 1).
    """
    # tf.one_hot gives an all-zero row for ids outside 0..num_classes-1.
    y = tf.one_hot(tf.cast(ids, tf.int32), num_classes, dtype=tf.uint8)
    w = tf.cast(ids < num_classes, tf.uint8)
    return photo, y, w


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
    counts = decoded.batch(256).reduce(
        tf.zeros((256,), tf.int64),
        lambda acc, batch: (
            acc
            + tf.math.bincount(
                tf.cast(tf.reshape(batch[1], [-1]), tf.int32), minlength=256, maxlength=256, dtype=tf.int64
            )
        ),
    )
    counts = counts.numpy()[:num_classes].astype(np.float64)
    return counts / counts.sum() if counts.sum() else counts


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
    cache (uint8) -> [seeded shuffle, flip] -> batch -> one-hot -> prefetch.

    Args:
        files: Pair files (checked with `scan_pairs`), or a dataset from
            `decoded_dataset` to reuse its cache.
        image_size: Side of the square model input.
        batch_size: Batch size.
        training: Shuffle (reshuffled each epoch) and augment when True.
        seed: Seed of the shuffle and the augmentation draws.
        augment: One of `AUGMENTS` (training only): `flip`, a random
            horizontal flip; `full`, `augment_pair`. True means `flip`,
            False `none`.
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
        mode = {True: "flip", False: "none"}.get(augment, augment)
        if mode not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        if mode != "none":
            fn = _flip if mode == "flip" else augment_pair
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
            ds = tf.data.Dataset.zip((ds, seeds)).map(
                lambda pair, s: fn(pair[0], pair[1], s),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
    ds = ds.batch(batch_size)
    ds = ds.map(to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE)
    if pad_to > 1:
        ds = ds.map(lambda x, y, w: pad_batch((x, y, w), pad_to), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def pad_batch(tensors: tuple[tf.Tensor, ...], multiple: int) -> tuple[tf.Tensor, ...]:
    """Pad the batch axis of each tensor with zeros to a multiple of `multiple`.

    Zero weights make the padded samples count nowhere; zero one-hot rows
    and black photos are what an ignored pixel looks like anyway.

    Args:
        tensors: Tensors sharing their first (batch) dimension.
        multiple: The batch size becomes a multiple of this.

    Returns:
        The padded tensors, in order.
    """
    n = tf.shape(tensors[0])[0]
    extra = (multiple - n % multiple) % multiple
    return tuple(tf.pad(t, [[0, extra]] + [[0, 0]] * (len(t.shape) - 1)) for t in tensors)
