"""Where a run's data comes from: the image pairs or the official Cityscapes.

Three sources, one interface (`RunData`), so training, metrics and outputs
are the same whichever feeds them:

- the pairs through tf.data (`data_pipeline`), the default wherever
  TensorFlow is installed, for every Keras backend;
- the pairs through NumPy and OpenCV (`numpy_pipeline`), for JAX or PyTorch
  machines without TensorFlow: the same class ids, bit for bit;
- the official full-resolution Cityscapes through TensorFlow Datasets
  (`tfds_source`), with its own train and validation splits.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pair_files import jpeg_header

DATASETS = ("pairs", "tfds-cityscapes")
PIPELINES = ("auto", "tf", "numpy")


def tensorflow_installed() -> bool:
    """Whether TensorFlow can be imported here."""
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


def resolve_pipeline(requested: str, dataset: str = "pairs") -> tuple[str, str]:
    """Pick the input pipeline of `--pipeline REQUESTED`.

    Args:
        requested: One of `PIPELINES`.
        dataset: One of `DATASETS`.

    Returns:
        `(pipeline, reason)`, pipeline `tf` or `numpy`.

    Raises:
        ValueError: One line, when the choice cannot work here.
    """
    have_tf = tensorflow_installed()
    if dataset == "tfds-cityscapes":
        if requested == "numpy" or not have_tf:
            raise ValueError("--dataset tfds-cityscapes: needs TensorFlow (tf.data and tensorflow-datasets)")
        return "tf", "TensorFlow Datasets feeds tf.data"
    if requested == "auto":
        if have_tf:
            return "tf", "TensorFlow is installed: tf.data feeds every backend"
        return "numpy", "no TensorFlow here: NumPy/OpenCV decoding in a keras.utils.PyDataset"
    if requested == "tf" and not have_tf:
        raise ValueError("--pipeline tf: TensorFlow is not installed (use --pipeline numpy)")
    return requested, "as requested"


@dataclass
class RunData:
    """The data of a run, ready for `model.fit`.

    Attributes:
        train: Training batches `(x, y, w)` (a `tf.data.Dataset` or a
            `keras.utils.PyDataset`), shuffled and augmented.
        val: Validation batches, in order.
        n_train: Number of training samples.
        n_val: Number of validation samples.
        val_source: Where the validation split comes from, in words.
        pipeline: `tf` or `numpy`.
        class_frequencies: Returns the share of labelled pixels per class
            in the training split, float64 `(19,)`.
        samples: `samples(count, spread, size=None)` returns `(names,
            photos, ids)` for `count` validation samples: uint8 `(K, S, S,
            3)` and `(K, S, S)`, S the run's image size or `size`; spread
            evenly over the split when `spread`, else the first ones.
        source_size: Side of the square photo and label halves of the pair
            files (of the first training file), or None when they are not
            square (or the data are not pairs).
    """

    train: object
    val: object
    n_train: int
    n_val: int
    val_source: str
    pipeline: str
    class_frequencies: Callable[[], np.ndarray]
    samples: Callable[..., tuple[list[str], np.ndarray, np.ndarray]]
    source_size: int | None = None


def _stacked(names: list[str], pairs: list, image_size: int):
    # (names, photos (K, S, S, 3), ids (K, S, S)), also for K = 0.
    if not pairs:
        return (
            [],
            np.zeros((0, image_size, image_size, 3), np.uint8),
            np.zeros((0, image_size, image_size), np.uint8),
        )
    return names, np.stack([np.asarray(p) for p, _ in pairs]), np.stack([np.asarray(t) for _, t in pairs])


def _picks(n: int, count: int, spread: bool) -> np.ndarray:
    if spread:
        return np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int))
    return np.arange(min(count, n))


def from_pairs(
    train_files: list[str],
    val_files: list[str],
    val_source: str,
    image_size: int,
    batch_size: int,
    seed: int,
    augment: str,
    pipeline: str = "tf",
    pad_to: int = 1,
) -> RunData:
    """The pair files through tf.data (`pipeline="tf"`) or NumPy.

    Args:
        train_files: Training pair files.
        val_files: Validation pair files.
        val_source: Where the validation files come from, in words.
        image_size: Side of the square model input.
        batch_size: Global batch size.
        seed: Seed of the shuffle and augmentation.
        augment: One of `utils_func.AUGMENTS`.
        pipeline: `tf` or `numpy`.
        pad_to: Pad every batch to a multiple of this with weightless
            samples (data parallelism that needs equal shares).

    Returns:
        A `RunData`.
    """
    height, width, _ = jpeg_header(train_files[0])
    source_size = height if width == 2 * height else None
    if pipeline == "numpy":
        from numpy_pipeline import PairDataset, class_frequencies_np, decode_pair_np

        train = PairDataset(train_files, image_size, batch_size, True, seed, augment, pad_to=pad_to)
        val = PairDataset(val_files, image_size, batch_size, False, pad_to=pad_to)

        def samples(count: int, spread: bool = True, size: int | None = None):
            size = size or image_size
            picks = _picks(len(val.files), count, spread)
            decoded = [decode_pair_np(val.files[i], size) for i in picks]
            return _stacked([os.path.basename(val.files[i]) for i in picks], decoded, size)

        return RunData(
            train,
            val,
            len(train.files),
            len(val.files),
            val_source,
            "numpy",
            lambda: class_frequencies_np(train),
            samples,
            source_size,
        )

    import tensorflow as tf

    from data_pipeline import class_frequencies, decode_pair, decoded_dataset, make_dataset

    decoded = decoded_dataset(train_files, image_size)

    def samples(count: int, spread: bool = True, size: int | None = None):  # noqa: F811 - one per pipeline
        size = size or image_size
        picks = _picks(len(val_files), count, spread)
        decoded_val = [tuple(t.numpy() for t in decode_pair(tf.constant(val_files[i]), size)) for i in picks]
        return _stacked([os.path.basename(val_files[i]) for i in picks], decoded_val, size)

    return RunData(
        make_dataset(decoded, image_size, batch_size, True, seed, augment, pad_to=pad_to),
        make_dataset(val_files, image_size, batch_size, False, pad_to=pad_to),
        len(train_files),
        len(val_files),
        val_source,
        "tf",
        # Iterating the decoded split also fills the cache the training reads.
        lambda: class_frequencies(decoded),
        samples,
        source_size,
    )


def from_tfds(
    image_size: int,
    batch_size: int,
    seed: int,
    augment: str,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    limit: int | None = None,
    pad_to: int = 1,
) -> RunData:
    """The official Cityscapes (`train` and `validation`) through TFDS.

    Args:
        image_size: Side of the square model input.
        batch_size: Global batch size.
        seed: Seed of the shuffle and augmentation.
        augment: One of `utils_func.AUGMENTS`.
        data_dir: TFDS data directory (None: TFDS' default).
        manual_dir: Folder with the downloaded zips (needed once, to prepare).
        limit: Use only the first N examples of each split.
        pad_to: See `from_pairs`.

    Returns:
        A `RunData`.

    Raises:
        tfds_source.TfdsSourceError: One line, when the data cannot be read.
    """
    from data_pipeline import class_frequencies, make_dataset
    from tfds_source import TfdsSourceError, load_cityscapes, num_examples, sample_pairs

    splits = {}
    for split in ("train", "validation"):
        decoded = load_cityscapes(split, image_size, data_dir, manual_dir, limit)
        try:
            n = num_examples(split, data_dir, manual_dir)
            n = min(n, limit or n)
        except TfdsSourceError:
            # Size not recorded (e.g. under tfds.testing.mock_data): count.
            # This fills the decode cache, as the first epoch would.
            n = int(decoded.reduce(np.int64(0), lambda count, _: count + 1))
        splits[split] = (decoded, n)
    (train_dec, n_train), (val_dec, n_val) = splits["train"], splits["validation"]

    def samples(count: int, spread: bool = True, size: int | None = None):
        # The first ones: reaching samples spread over the split would
        # decode every full-resolution example before them.
        size = size or image_size
        pairs = sample_pairs("validation", size, min(count, n_val), data_dir, manual_dir) if count else []
        return _stacked([f"validation #{i + 1}" for i in range(len(pairs))], pairs, size)

    return RunData(
        make_dataset(train_dec, image_size, batch_size, True, seed, augment, pad_to=pad_to),
        make_dataset(val_dec, image_size, batch_size, False, pad_to=pad_to),
        n_train,
        n_val,
        f"TFDS {data_dir or 'default data dir'}: cityscapes/semantic_segmentation, split validation",
        "tf",
        lambda: class_frequencies(train_dec),
        samples,
    )
