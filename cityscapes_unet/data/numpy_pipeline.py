"""NumPy/OpenCV input pipeline for the Cityscapes image pairs, without TensorFlow.

The counterpart of `tf_pipeline`'s tf.data pipeline for machines that run
Keras on JAX or PyTorch and have no TensorFlow: the same decode steps
(`decode.decode_halves`, here with NumPy's kernels, `NUMPY_KERNELS`), the
same cache of compact uint8 arrays, the same seeded shuffling and flips,
and the same `(x, y, w)` batches (`decode.targets`), served by a
`keras.utils.PyDataset`.

The decoded arrays are those of `tf_pipeline.decode_pair`, bit for bit, on
x86-64 (checked by `tests/data/test_numpy_pipeline.py`):

- JPEG: OpenCV's libjpeg decodes with the same integer DCT that
  `decode_jpeg(dct_method="INTEGER_ACCURATE")` asks for.
- Photo: `resize_area` reproduces TensorFlow's `ResizeArea` kernel in float32,
  operation by operation. `cv2.INTER_AREA` is not used: it rounds ties
  upwards where TensorFlow rounds them to even, and interpolates bilinearly
  when enlarging.
- Ids: `utils_func.colors_to_ids` looks them up in `utils_func.color_lut`,
  the table the tf.data pipeline gathers from, and `resize_nearest` brings
  them to the model's size picking the source pixels of TensorFlow 2's
  `method="nearest"` (half-pixel centres), not those of
  `cv2.INTER_NEAREST`, which would change the validation scores.

Nothing here imports TensorFlow, directly or through `tf_pipeline`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import keras
import numpy as np

from cityscapes_unet.data import decode
from utils_func import NUM_CLASSES, colors_to_ids


def nearest_source_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output position in TensorFlow 2's nearest resize.

    `tf.image.resize(..., method="nearest")` uses half-pixel centres:
    `floor((dst + 0.5) * in_size / out_size)`, computed in float32 as its
    kernel does (float64 would pick a different pixel at a few sizes),
    clipped to the input.

    Args:
        in_size: Input length along one axis.
        out_size: Output length along that axis.

    Returns:
        int64 array `(out_size,)` of indices into the input.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale)
    return np.clip(src.astype(np.int64), 0, in_size - 1)


def resize_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize picking the pixels TensorFlow 2 picks.

    Args:
        array: Array `(H, W, ...)` of any dtype, e.g. uint8 class ids.
        height: Output height.
        width: Output width.

    Returns:
        Array `(height, width, ...)` of the input's dtype; every value is a
        value of the input.
    """
    rows = nearest_source_indices(array.shape[0], height)
    cols = nearest_source_indices(array.shape[1], width)
    return array[rows[:, None], cols[None, :]]


def _area_terms(in_size: int, out_size: int):
    # TensorFlow's ResizeArea (core/kernels/image/resize_area_op.cc), one
    # axis: output pixel o covers [o * scale, (o + 1) * scale) of the input;
    # each source pixel it touches is weighted by the length it covers. All
    # in float32, the kernel's own expressions. The terms are padded with
    # weight 0 to the longest span, which adds exact zeros.
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    o = np.arange(out_size)
    lo = o.astype(f32) * scale
    hi = (o + 1).astype(f32) * scale
    start = np.floor(lo).astype(np.int64)
    end = np.ceil(hi).astype(np.int64)
    span = int((end - start).max())
    index = np.zeros((span, out_size), np.int64)
    weight = np.zeros((span, out_size), f32)
    for k in range(span):
        v = start + k
        vf = v.astype(f32)
        w = np.where(
            vf < lo,
            np.where(vf + 1 > hi, scale, (v + 1).astype(f32) - lo),
            np.where(vf + 1 > hi, hi - vf, f32(1.0)),
        ).astype(f32)
        index[k] = np.clip(v, 0, in_size - 1)
        weight[k] = np.where(v < end, w, f32(0.0))
    return scale, index, weight


def resize_area(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area resize of a uint8 image, as `tf.image.resize(method="area")` + round.

    Reproduces TensorFlow's float32 arithmetic in the same order (sum along a
    row, then across rows, then one multiplication by the inverse area), so
    that ties round the same way; then rounds half to even and clips, as
    `tf_pipeline.area_resize` does.

    Args:
        image: uint8 array `(H, W, C)`.
        height: Output height.
        width: Output width.

    Returns:
        uint8 array `(height, width, C)`.
    """
    f32 = np.float32
    sy, iy, wy = _area_terms(image.shape[0], height)
    sx, ix, wx = _area_terms(image.shape[1], width)
    x = image.astype(f32)
    # Within each input row: first term, middle terms, last term, in order.
    rows = x[:, ix[0]] * wx[0][None, :, None]
    for k in range(1, ix.shape[0]):
        rows = rows + x[:, ix[k]] * wx[k][None, :, None]
    total = rows[iy[0]] * wy[0][:, None, None]
    for k in range(1, iy.shape[0]):
        total = total + rows[iy[k]] * wy[k][:, None, None]
    # `float scale = 1.0 / (height_scale * width_scale)`: a float32 product,
    # divided in double, stored as float32.
    inv_area = f32(1.0 / np.float64(sy * sx))
    out = np.clip(total * inv_area, f32(0), f32(255))
    return np.round(out).astype(np.uint8)  # half to even, like tf.round


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode a JPEG file to RGB the way `tf_pipeline.decode_pair` does.

    Args:
        path: File path.

    Returns:
        uint8 array `(H, W, 3)`, RGB.

    Raises:
        ValueError: If the file cannot be read or decoded (a truncated JPEG
            included: OpenCV refuses it, as `tf.io.decode_jpeg` does).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror or e}") from None
    # EXIF orientation ignored: tf.io.decode_jpeg does not apply it either.
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if image is None:
        raise ValueError(f"{path}: not a decodable JPEG (empty, truncated or corrupt)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _area_square(photo: np.ndarray, image_size: int) -> np.ndarray:
    if photo.shape[:2] == (image_size, image_size):
        return photo  # the identity, as in tf_pipeline.area_resize
    return resize_area(photo, image_size, image_size)


def _nearest_square(array: np.ndarray, image_size: int) -> np.ndarray:
    return resize_nearest(array, image_size, image_size)


#: NumPy's kernels for `decode.decode_halves`.
NUMPY_KERNELS = decode.Kernels(_area_square, _nearest_square, colors_to_ids)


def decode_pair_np(path: str | os.PathLike, image_size: int, full_labels: bool = False):
    """Read one pair file and return the resized photo and label ids.

    The NumPy counterpart of `tf_pipeline.decode_pair`, with the same
    outputs.

    Args:
        path: File path.
        image_size: Side of the square output.
        full_labels: Also return the ids at the label's own resolution.

    Returns:
        `(photo, ids)`: uint8 `(image_size, image_size, 3)` and uint8
        `(image_size, image_size)`; with `full_labels`, `(photo, ids,
        full_ids)` where `full_ids` is uint8 `(H, W)` at the label's size.

    Raises:
        ValueError: If the file cannot be decoded.
    """
    return decode.decode_halves(read_rgb(path), image_size, NUMPY_KERNELS, full_labels)


def to_model_inputs_np(photo: np.ndarray, ids: np.ndarray, num_classes: int = NUM_CLASSES):
    """Expand cached uint8 arrays into what the model trains on.

    The counterpart of `tf_pipeline.to_model_inputs`. Everything stays
    uint8 (a quarter of the memory of float32 one-hot masks); Keras casts
    inside the training step.

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
    y, w = decode.targets(np.asarray(ids), num_classes)
    return photo, y.astype(np.uint8), w.astype(np.uint8)


def decode_files(files: Sequence[str | os.PathLike], image_size: int):
    """Decode pair files into one compact cache, leaving out those that fail.

    Each file left out is named in a warning, as tf.data's `ignore_errors`
    logs one.

    Decodes in threads (OpenCV and NumPy release the GIL) into arrays filled
    in place as the decodes come in: no second copy of the cache.

    Args:
        files: Pair files.
        image_size: Side of the square model input.

    Returns:
        `(kept, photos, ids, skipped)`: the paths decoded, in file order;
        uint8 photos `(N, S, S, 3)` and trainIds `(N, S, S)` of those; and
        `(path, reason)` of each file left out.

    Raises:
        ValueError: When no file can be decoded.
    """

    def decode_one(path):
        try:
            return decode_pair_np(path, image_size)
        except ValueError as e:
            return str(e)

    files = [os.fspath(f) for f in files]
    photos = np.empty((len(files), image_size, image_size, 3), np.uint8)
    ids = np.empty((len(files), image_size, image_size), np.uint8)
    kept: list[str] = []
    skipped: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for path, result in zip(files, pool.map(decode_one, files), strict=True):
            if isinstance(result, str):
                skipped.append((path, result))
                warnings.warn(f"skipped {result}", stacklevel=3)  # at the caller of PairDataset
            else:
                photos[len(kept)], ids[len(kept)] = result
                kept.append(path)
    if not kept:
        raise ValueError(f"no decodable pair among the {len(files)} files")
    return kept, photos[: len(kept)], ids[: len(kept)], skipped


class PairDataset(keras.utils.PyDataset):
    """Batches of `(x, y, w)` from pair files, for `model.fit` on any backend.

    The counterpart of `tf_pipeline.make_dataset`. Every file is decoded
    once, eagerly, in the constructor (`decode_files`), and the compact
    uint8 photos and ids are kept in memory (4 bytes a pixel of the model's
    input). Eager decoding keeps the
    batches cheap and the object safe to share between Keras' worker threads
    or processes, which then only index the cache; it also gives
    `class_frequencies_np` its ids without a second pass. Files that cannot
    be decoded are left out with a warning, as tf.data's `ignore_errors`
    does; they are listed in `skipped`.

    In training, the order is a seeded permutation and the flips are seeded
    draws, both redrawn by `on_epoch_end` (Keras calls it after every epoch)
    from `(seed, epoch)`: the same seed gives the same epochs, and batch `i`
    of an epoch is the same whichever worker makes it and when. Out of
    training, batches follow the file order without augmentation.

    Two things `model.fit` adds: with `shuffle=True` (its default) it also
    shuffles the order of the batches with Python's `random`; pass
    `shuffle=False` to keep exactly this order (the samples are shuffled here
    already). And it calls `on_epoch_end` once before the first epoch too
    (Keras 3.15 resets its iterator after building the model, on every
    backend), so fit's first epoch gets the draw of `epoch` 1; runs are
    reproducible all the same.

    Args:
        files: Pair files (checked with `files.scan_pairs` or alike).
        image_size: Side of the square model input.
        batch_size: Batch size; the last batch holds the rest.
        training: Shuffle (reshuffled each epoch) and augment when True.
        seed: Seed of the shuffle and the flips.
        augment: One of `decode.AUGMENTS` (training only): `flip`, a
            random horizontal flip, the same draw for photo and ids; `none`.
            True means `flip`, False `none`. `full` is not implemented here
            and raises NotImplementedError in training.
        pad_to: Pad every batch to a multiple of this many samples with
            weightless ones (see `tf_pipeline.make_dataset`).
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size`, passed
            to `keras.utils.PyDataset`.

    Raises:
        ValueError: On a bad argument, or when no file can be decoded.
        NotImplementedError: For `augment` `full` or `mild` in training.
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike],
        image_size: int,
        batch_size: int,
        training: bool,
        seed: int = 0,
        augment: bool | str = "flip",
        pad_to: int = 1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(image_size) < 1 or int(batch_size) < 1:
            raise ValueError(f"image_size and batch_size must be positive, got {image_size}, {batch_size}")
        mode = decode.augment_mode(augment)
        if training and mode in decode.ZOOM_JITTER:
            raise NotImplementedError(
                f"augment={mode!r} (zoom, crop and colour jitter) is not implemented in numpy_pipeline; "
                "use 'flip' or 'none', or tf_pipeline (TensorFlow)"
            )
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.training = bool(training)
        self.seed = int(seed)
        self.augment = mode if self.training else "none"
        self.pad_to = max(1, int(pad_to))
        #: Paths of the decoded files, in file order; cache: uint8 photos
        #: `(N, S, S, 3)` and trainIds `(N, S, S)`; `(path, reason)` of each
        #: file left out.
        self.files, self.photos, self.ids, self.skipped = decode_files(files, self.image_size)
        self._epoch = 0
        self._draw()

    def _draw(self) -> None:
        n = len(self.files)
        if not self.training:
            self._order, self._flips = np.arange(n), np.zeros(n, bool)
            return
        # One generator per (seed, epoch): any epoch can be reproduced alone.
        rng = np.random.default_rng([self.seed, self._epoch])
        self._order = rng.permutation(n)
        # Indexed by sample, drawn for all even without flips: switching
        # augment off and on does not change the order.
        flips = rng.random(n) < 0.5
        self._flips = flips if self.augment == "flip" else np.zeros(n, bool)

    @property
    def epoch(self) -> int:
        """The epoch whose order and flips are served (0 first)."""
        return self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        # E.g. to continue a resumed run with the epochs it would have seen.
        self._epoch = int(value)
        self._draw()

    def on_epoch_end(self) -> None:
        """Draw the next epoch's order and flips (training only)."""
        self.epoch = self._epoch + 1

    def __len__(self) -> int:
        return math.ceil(len(self.files) / self.batch_size)

    def __getitem__(self, index: int):
        """Batch `index` of the current epoch.

        Args:
            index: Batch position, 0 to `len(self) - 1`.

        Returns:
            `(x, y, w)`: uint8 photos `(B, S, S, 3)`, uint8 one-hot masks
            `(B, S, S, 19)` (all zeros on ignored pixels) and uint8 weights
            `(B, S, S)` (0 on ignored pixels, else 1), `B` the batch size
            (less in the last batch).
        """
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for {len(self)} batches")
        sel = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        # Fancy indexing copies: flipping below leaves the cache untouched.
        photo, ids = self.photos[sel], self.ids[sel]
        flip = self._flips[sel]
        if flip.any():
            # One draw for both: photo and mask stay aligned.
            photo[flip] = photo[flip, :, ::-1]
            ids[flip] = ids[flip, :, ::-1]
        extra = decode.padding(len(sel), self.pad_to)
        if extra:
            # Weightless samples: ignored ids give zero one-hot rows and weights.
            photo = np.concatenate([photo, np.zeros((extra, *photo.shape[1:]), np.uint8)])
            ids = np.concatenate([ids, np.full((extra, *ids.shape[1:]), decode.PAD_IDS, np.uint8)])
        return to_model_inputs_np(photo, ids)


def class_frequencies_np(
    dataset_or_ids: PairDataset | np.ndarray | Iterable[np.ndarray], num_classes: int = NUM_CLASSES
) -> np.ndarray:
    """Share of labelled pixels in each class (ignored pixels left out).

    The counterpart of `tf_pipeline.class_frequencies`.

    Args:
        dataset_or_ids: A `PairDataset` (its cached ids are counted), a
            uint8 array of ids of any shape, or an iterable of such arrays.
        num_classes: Number of classes.

    Returns:
        float64 array `(num_classes,)` summing to 1 (all zeros if no pixel
        is labelled).
    """
    if isinstance(dataset_or_ids, PairDataset):
        arrays: Iterable[np.ndarray] = [dataset_or_ids.ids]
    elif isinstance(dataset_or_ids, np.ndarray):
        arrays = [dataset_or_ids]
    else:
        arrays = dataset_or_ids
    counts = np.zeros(decode.COUNT_BINS, np.int64)
    for ids in arrays:
        counts += np.bincount(np.asarray(ids, np.uint8).ravel(), minlength=decode.COUNT_BINS)
    return decode.frequencies(counts, num_classes)
