"""tf.data input pipeline for the Cityscapes image pairs.

Each file is one JPEG holding the street photo (left half) and its
Cityscapes colour label image (right half). The pipeline reads and decodes
each file once, turns the label half into trainIds by nearest palette colour
at full resolution, resizes the photo (area) and the ids (nearest neighbour
only), caches these compact uint8 tensors, and expands them to one-hot masks
and per-pixel weights (0 on ignored pixels) per batch, as late as possible.
"""

from __future__ import annotations

import os
import re
import struct

import numpy as np
import tensorflow as tf

from utils_func import AUGMENTS, IGNORE_ID, MAX_COLOR_DISTANCE, NUM_CLASSES, decode_palette

IMAGE_SUFFIXES = (".jpg", ".jpeg")
# Decoding a pair takes height * width * 3 bytes; a full-resolution
# Cityscapes pair is 1024 high. Headers claiming far more (a 20000x40000
# pair would need 2.4 GB per decode) are refused before any decode.
MAX_PAIR_HEIGHT = 4096


class DataError(ValueError):
    """A data folder or file that cannot be used; the message is one line."""


def _natural_key(path: str):
    # "2.jpg" before "10.jpg".
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(path))]


def list_images(folder: str) -> list[str]:
    """JPEG files directly inside `folder`, in natural order.

    Args:
        folder: Directory to list.

    Returns:
        Sorted list of paths (sub-folders and other files left out).
    """
    paths = [os.path.join(folder, n) for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES)]
    # isfile follows links: dangling symlinks and folders named *.jpg drop out.
    return sorted((p for p in paths if os.path.isfile(p)), key=_natural_key)


def jpeg_header(path: str) -> tuple[int, int, int]:
    """Read a JPEG's frame header without decoding the image.

    Args:
        path: File path.

    Returns:
        `(height, width, components)`.

    Raises:
        DataError: If the file is empty, unreadable, not a JPEG, or has no
            frame header.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 16)
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}") from None
    if not data:
        raise DataError("empty file")
    if data[:2] != b"\xff\xd8":
        kind = "a PNG" if data[:8] == b"\x89PNG\r\n\x1a\n" else "not a JPEG"
        raise DataError(f"{kind} (no JPEG start marker)")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 10 > len(data):
                break
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return height, width, data[i + 9]
        i += 2 + length
    raise DataError("truncated or corrupt JPEG (no frame header)")


def check_pair(path: str) -> str | None:
    """Why `path` is not a usable image pair, or None when it looks fine.

    Only the header is read: the full decode happens once, in the pipeline.

    Args:
        path: File path.

    Returns:
        A short reason, or None.
    """
    try:
        height, width, components = jpeg_header(path)
    except DataError as e:
        return str(e)
    if components != 3:
        return f"{components}-channel JPEG; a colour photo|label pair has 3"
    if width != 2 * height:
        return f"{width}x{height} is not a side-by-side pair (width must be twice the height)"
    if height < 16:
        return f"{width}x{height} is too small"
    if height > MAX_PAIR_HEIGHT:
        return f"{width}x{height} is too large (pairs up to {MAX_PAIR_HEIGHT} pixels high are decoded)"
    return None


def scan_pairs(paths: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Split files into usable pairs and skipped ones.

    Args:
        paths: Candidate files.

    Returns:
        `(good, skipped)`: good paths, and `(path, reason)` for the rest.
    """
    good, skipped = [], []
    for p in paths:
        reason = check_pair(p)
        if reason is None:
            good.append(p)
        else:
            skipped.append((p, reason))
    return good, skipped


def split_train_val(files: list[str], val_split: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split of one file list into disjoint train and validation lists.

    Args:
        files: All files.
        val_split: Fraction for validation, in (0, 1).
        seed: Seed of the permutation.

    Returns:
        `(train, val)`, each in natural order; val holds at least one file and
        train at least one when there are two or more files.
    """
    n = len(files)
    n_val = min(max(1, round(n * val_split)), n - 1) if n > 1 else 0
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:n_val].tolist())
    train = [f for i, f in enumerate(files) if i not in val_idx]
    val = [f for i, f in enumerate(files) if i in val_idx]
    return train, val


def tf_colors_to_ids(label_rgb: tf.Tensor, max_distance: float = MAX_COLOR_DISTANCE) -> tf.Tensor:
    """TF version of `utils_func.colors_to_ids`: nearest palette colour.

    Args:
        label_rgb: uint8 tensor `(H, W, 3)`.
        max_distance: Pixels farther from every palette colour are ignored.

    Returns:
        uint8 tensor `(H, W)` of trainIds or IGNORE_ID.
    """
    colors, train_ids = decode_palette()
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2 as one small matmul: (H*W, 3) x (3, 29).
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
    # Area resampling averages whole source pixels (what cv2.INTER_AREA does).
    photo = tf.image.resize(photo, (image_size, image_size), method="area")
    photo = tf.cast(tf.round(tf.clip_by_value(photo, 0, 255)), tf.uint8)
    # Ids are decoded at the label's own resolution, then resized with
    # nearest neighbour only: class ids must never be interpolated.
    full_ids = tf_colors_to_ids(label)
    ids = tf.image.resize(full_ids[..., None], (image_size, image_size), method="nearest")[..., 0]
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
    return ds.prefetch(tf.data.AUTOTUNE)
