"""Where a run's data comes from: the image pairs or the official Cityscapes.

Three sources, one interface (`RunData`), so training, metrics and outputs
are the same whichever feeds them:

- the pairs through tf.data (`tf_pipeline`), the default wherever
  TensorFlow is installed, for every Keras backend;
- the pairs through NumPy and OpenCV (`numpy_pipeline`), for JAX or PyTorch
  machines without TensorFlow: the same class ids, bit for bit;
- the official full-resolution Cityscapes through TensorFlow Datasets
  (`tfds`), with its own train and validation splits.

`tf_pipeline` and `tfds` are imported inside the functions that use them,
not here: both import TensorFlow, which the NumPy path must not load (it
runs where TensorFlow is not installed).
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cityscapes_unet.data.files import jpeg_header, list_images, scan_pairs, split_train_val
from cityscapes_unet.data.numpy_pipeline import PairDataset, class_frequencies_np, decode_pair_np
from cityscapes_unet.errors import TfdsSourceError, UsageError

DATASETS = ("pairs", "tfds-cityscapes")
PIPELINES = ("auto", "tf", "numpy")


def tensorflow_installed() -> bool:
    """Whether TensorFlow can be imported here (without importing it).

    Returns:
        True when the `tensorflow` package is found.
    """
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


def skip_epochs(train: object, count: int) -> None:
    """Move a training dataset on by `count` epochs without reading them.

    Both pipelines draw each epoch's order and flips from their seed, one
    epoch after the other: a run resumed in a new process skips the epochs
    it has done, so that its next epochs see the order and flips of the
    uninterrupted run.

    Args:
        train: `RunData.train` of either pipeline, before any epoch of it.
        count: Epochs to skip; 0 or less skips none.
    """
    if count <= 0:
        return
    if isinstance(train, PairDataset):
        train.epoch += count
        return
    # tf.data draws a new shuffle and flip seed when an iterator is made, and
    # only then; making one reads nothing.
    for _ in range(count):
        iter(train)


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
        augment: One of `decode.AUGMENTS`.
        pipeline: `tf` or `numpy`.
        pad_to: Pad every batch to a multiple of this with weightless
            samples (data parallelism that needs equal shares).

    Returns:
        A `RunData`.
    """
    height, width, _ = jpeg_header(train_files[0])
    source_size = height if width == 2 * height else None
    build = _numpy_pairs if pipeline == "numpy" else _tf_pairs
    return build(
        train_files, val_files, val_source, image_size, batch_size, seed, augment, pad_to, source_size
    )


def _numpy_pairs(
    train_files, val_files, val_source, image_size, batch_size, seed, augment, pad_to, source_size
) -> RunData:
    # `from_pairs` through numpy_pipeline (no TensorFlow).
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


def _tf_pairs(
    train_files, val_files, val_source, image_size, batch_size, seed, augment, pad_to, source_size
) -> RunData:
    # `from_pairs` through tf_pipeline. Imported here: it imports TensorFlow
    # (see the module's docstring).
    import tensorflow as tf

    from cityscapes_unet.data.tf_pipeline import class_frequencies, decode_pair, decoded_dataset, make_dataset

    decoded = decoded_dataset(train_files, image_size)

    def samples(count: int, spread: bool = True, size: int | None = None):
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
        augment: One of `decode.AUGMENTS`.
        data_dir: TFDS data directory (None: TFDS' default).
        manual_dir: Folder with the downloaded zips (needed once, to prepare).
        limit: Use only the first N examples of each split.
        pad_to: See `from_pairs`.

    Returns:
        A `RunData`.

    Raises:
        TfdsSourceError: One line, when the data cannot be read.
    """
    # Imported here: both import TensorFlow (see the module's docstring).
    from cityscapes_unet.data.tf_pipeline import class_frequencies, make_dataset
    from cityscapes_unet.data.tfds import sample_pairs

    train_dec, n_train = _tfds_split("train", image_size, data_dir, manual_dir, limit)
    val_dec, n_val = _tfds_split("validation", image_size, data_dir, manual_dir, limit)

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


def _tfds_split(split: str, image_size: int, data_dir, manual_dir, limit):
    # (decoded dataset, number of examples) of one TFDS split. Imported here:
    # tfds imports TensorFlow (see the module's docstring).
    from cityscapes_unet.data.tfds import load_cityscapes, num_examples

    decoded = load_cityscapes(split, image_size, data_dir, manual_dir, limit)
    try:
        n = num_examples(split, data_dir, manual_dir)
        return decoded, min(n, limit or n)
    except TfdsSourceError:
        # Size not recorded (e.g. under tfds.testing.mock_data): count.
        # This fills the decode cache, as the first epoch would.
        return decoded, int(decoded.reduce(np.int64(0), lambda count, _: count + 1))


def find_data(
    data_dir: str, limit: int | None = 0, val_split: float = 0.15, seed: int = 42, carve: str = "blocks"
) -> tuple[list[str], list[str], str, list[tuple[str, str]]]:
    """Locate the train and validation pair files of `cfg.data_dir`.

    `DIR/train` (else `DIR` itself) holds training pairs; `DIR/val`, when it
    exists, is the validation split, else a seeded `val_split` fraction of
    the training pairs is held out.

    Args:
        data_dir: The data folder (`--data-dir`).
        limit: Use at most this many files of each split (0: all).
        val_split: Fraction held out when there is no `val/`.
        seed: Seed of that hold-out.
        carve: How it is drawn: `"random"` files or `"blocks"` of
            neighbouring files (`split_train_val`).

    Returns:
        `(train_files, val_files, val_source, skipped)`.

    Raises:
        UsageError: If the folder is missing or holds no usable pair.
    """
    root = data_dir
    if not os.path.isdir(root):
        raise UsageError(f"--data-dir {root}: folder not found (put the Cityscapes pairs in {root}/train)")
    train_dir = os.path.join(root, "train") if os.path.isdir(os.path.join(root, "train")) else root
    val_dir = os.path.join(root, "val")
    pool = list_images(train_dir)
    if limit:
        pool = pool[:limit]
    good, skipped = scan_pairs(pool)
    if not good:
        what = f"no usable pair among {len(pool)} JPEG files" if pool else "no .jpg files"
        kaggle = os.path.join(root, "cityscapes_data")
        if not pool and os.path.isdir(kaggle):
            raise UsageError(
                f"--data-dir {root}: {what} in {train_dir}; the pairs are in {kaggle}: pass --data-dir {kaggle}"
            )
        raise UsageError(
            f"--data-dir {root}: {what} in {train_dir} (put the Cityscapes pairs in {root}/train; "
            "see images/README.md)"
        )
    if os.path.isdir(val_dir) and list_images(val_dir):
        val_pool = list_images(val_dir)
        if limit:
            val_pool = val_pool[:limit]
        val, val_skipped = scan_pairs(val_pool)
        skipped += val_skipped
        if not val:
            raise UsageError(f"--data-dir {root}: no usable pair in {val_dir}")
        return good, val, f"folder {val_dir}", skipped
    if len(good) < 2:
        raise UsageError(
            f"--data-dir {root}: only {len(good)} usable pair; need 2 or more to hold out validation"
        )
    train, val = split_train_val(good, val_split, seed, carve)
    how = "runs of neighbouring files" if carve == "blocks" else "files drawn one by one"
    return train, val, f"seeded {val_split:.0%} of {train_dir} (seed {seed}, {how})", skipped


def resolve_eval_files(model_path: str, data_dir: str | None) -> tuple[list[str], str, list[tuple[str, str]]]:
    """The files to score, where they come from, and the files skipped.

    Without `data_dir`: the validation split of the run that wrote the model,
    rebuilt from the `config.json` beside it (same folder, fraction, seed).
    With `data_dir`: `data_dir/val` when it exists, else every pair in
    `data_dir`.

    Args:
        model_path: The model to score (its folder holds the run's
            `config.json`).
        data_dir: The folder to score, or None for the run's validation
            split.

    Returns:
        `(files, source, skipped)`: skipped lists `(path, reason)` of the
        unusable files, which are not scored.

    Raises:
        UsageError: When no usable pair is found.
    """
    if data_dir is None:
        cfg_path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "config.json")
        if not os.path.isfile(cfg_path):
            raise UsageError(f"--model {model_path}: no config.json beside it; pass --data-dir")
        with open(cfg_path) as f:
            saved = json.load(f)
        _, val, source, skipped = find_data(
            saved.get("data_dir", "images"),
            saved.get("limit") or 0,
            saved.get("val_split", 0.15),
            saved.get("seed", 42),
            saved.get("carve", "random"),
        )
        # Those skipped from the folder the split comes from (a carved split's
        # pool, or the run's val/), not the training folder's.
        here = os.path.dirname(val[0])
        return (
            val,
            f"validation split of the run ({source})",
            [s for s in skipped if os.path.dirname(s[0]) == here],
        )
    if not os.path.isdir(data_dir):
        raise UsageError(f"--data-dir {data_dir}: folder not found")
    folder = os.path.join(data_dir, "val") if os.path.isdir(os.path.join(data_dir, "val")) else data_dir
    good, skipped = scan_pairs(list_images(folder))
    if not good:
        raise UsageError(f"--data-dir {data_dir}: no usable pair in {folder}")
    return good, folder, skipped
