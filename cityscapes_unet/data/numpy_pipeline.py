"""NumPy/OpenCV input pipeline for the image pairs, without TensorFlow.

The counterpart of `tf_pipeline` for machines that run Keras on JAX or
PyTorch and have no TensorFlow: the same decoded pairs (OpenCV's libjpeg
decodes with the integer DCT that `tf_pipeline` asks TensorFlow's for; the
same colour table gives the ids), the same cache of uint8 photos and ids at
their own size, the same seeded shuffle and flips, and the same `(x, y, w)`
batches (`decode.targets`), served by a `keras.utils.PyDataset`. A test
compares the two pipelines on real pairs, bit for bit.

Nothing here imports TensorFlow, directly or through `tf_pipeline`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import cv2
import keras
import numpy as np

from cityscapes_unet.data import decode
from cityscapes_unet.resize import nearest_resize
from utils_func import NUM_CLASSES, colors_to_ids


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


def decode_pair_np(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one pair file: the photo and its label's trainIds, at their own size.

    Args:
        path: File path.

    Returns:
        `(photo, ids)`: uint8 `(H, W // 2, 3)` and uint8 `(H, W // 2)`.

    Raises:
        ValueError: If the file cannot be decoded.
    """
    photo, label = decode.pair_halves(read_rgb(path))
    return photo, colors_to_ids(label)


class DecodedPairs(NamedTuple):
    """The pair files decoded once, in memory.

    Attributes:
        files: Paths of the decoded files, in file order.
        photos: uint8 `(N, S, S, 3)`.
        ids: uint8 `(N, S, S)` trainIds or IGNORE_ID.
        skipped: `(path, reason)` of each file left out.
    """

    files: list[str]
    photos: np.ndarray
    ids: np.ndarray
    skipped: list[tuple[str, str]]


def decode_files(files: Sequence[str | os.PathLike], source_size: int) -> DecodedPairs:
    """Decode pair files of `source_size`-high halves, in threads, into one cache.

    A file that fails to decode, or whose halves have another size, is
    left out and named in a warning, as tf.data's `ignore_errors` logs one.

    Raises:
        ValueError: When no file can be decoded.
    """

    def decode_one(path):
        try:
            photo, ids = decode_pair_np(path)
        except ValueError as e:
            return str(e)
        if ids.shape != (source_size, source_size):
            return f"{path}: halves of {ids.shape[1]}x{ids.shape[0]}, not {source_size}x{source_size}"
        return photo, ids

    files = [os.fspath(f) for f in files]
    photos = np.empty((len(files), source_size, source_size, 3), np.uint8)
    ids = np.empty((len(files), source_size, source_size), np.uint8)
    kept: list[str] = []
    skipped: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for path, result in zip(files, pool.map(decode_one, files), strict=True):
            if isinstance(result, str):
                skipped.append((path, result))
                warnings.warn(f"skipped {result}", stacklevel=3)
            else:
                photos[len(kept)], ids[len(kept)] = result
                kept.append(path)
    if not kept:
        raise ValueError(f"no decodable pair among the {len(files)} files")
    return DecodedPairs(kept, photos[: len(kept)], ids[: len(kept)], skipped)


class PairDataset(keras.utils.PyDataset):
    """Batches of `(x, y, w)` from decoded pairs, for `model.fit` on any backend.

    The counterpart of `tf_pipeline.make_dataset`: photos at their own size,
    labels picked by nearest neighbour at `label_size` (the size the network
    runs at), one-hot masks and weights (`decode.targets`).

    In training, the order is a seeded permutation and the flips seeded
    draws, both redrawn by `on_epoch_end` from `(seed, epoch)`: the same
    seed gives the same epochs, whichever worker makes a batch and when.
    Out of training, batches follow the file order. Pass `shuffle=False` to
    `model.fit` (it would shuffle the batches again); it also calls
    `on_epoch_end` once before the first epoch, so fit's first epoch gets
    the draw of `epoch` 1, reproducibly.

    Args:
        decoded: The cache (`decode_files`), shared by the datasets of every size.
        label_size: Side of the one-hot masks and weights.
        batch_size: Batch size; the last batch holds the rest.
        training: Shuffle (reshuffled each epoch) and augment when True.
        seed: Seed of the shuffle and the flips.
        augment: `flip` (training only): a random horizontal flip, one draw
            for photo and ids; `none`.
        pad_to: Pad every batch to a multiple of this many samples with
            weightless ones (see `tf_pipeline.make_dataset`).
        **kwargs: Passed to `keras.utils.PyDataset`.
    """

    def __init__(
        self,
        decoded: DecodedPairs,
        label_size: int,
        batch_size: int,
        training: bool,
        seed: int = 0,
        augment: str = "none",
        pad_to: int = 1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.decoded = decoded
        self.label_size = int(label_size)
        self.batch_size = int(batch_size)
        self.training = bool(training)
        self.seed = int(seed)
        self.augment = augment if self.training else "none"
        self.pad_to = max(1, int(pad_to))
        self._epoch = 0
        self._draw()

    def _draw(self) -> None:
        n = len(self.decoded.files)
        if not self.training:
            self._order, self._flips = np.arange(n), np.zeros(n, bool)
            return
        # One generator per (seed, epoch): any epoch can be reproduced alone.
        rng = np.random.default_rng([self.seed, self._epoch])
        self._order = rng.permutation(n)
        # Drawn for all even without flips: switching them on does not change the order.
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
        return math.ceil(len(self.decoded.files) / self.batch_size)

    def __getitem__(self, index: int):
        """Batch `index` of the current epoch: uint8 photos, one-hot masks and weights."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for {len(self)} batches")
        sel = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        # Fancy indexing copies: flipping below leaves the cache untouched.
        photo, ids = self.decoded.photos[sel], self.decoded.ids[sel]
        flip = self._flips[sel]
        if flip.any():
            # One draw for both: photo and mask stay aligned.
            photo[flip] = photo[flip, :, ::-1]
            ids[flip] = ids[flip, :, ::-1]
        ids = nearest_resize(ids, self.label_size, self.label_size, axis=1)
        extra = decode.padding(len(sel), self.pad_to)
        if extra:
            # Weightless samples: ignored ids give zero one-hot rows and weights.
            photo = np.concatenate([photo, np.zeros((extra, *photo.shape[1:]), np.uint8)])
            ids = np.concatenate([ids, np.full((extra, *ids.shape[1:]), decode.PAD_IDS, np.uint8)])
        y, w = decode.targets(ids, NUM_CLASSES)
        return photo, y.astype(np.uint8), w.astype(np.uint8)


def class_frequencies_np(ids: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Share of labelled pixels in each class (ignored pixels left out), float64 `(num_classes,)`."""
    counts = np.bincount(np.asarray(ids, np.uint8).ravel(), minlength=decode.COUNT_BINS)
    return decode.frequencies(counts, num_classes)
