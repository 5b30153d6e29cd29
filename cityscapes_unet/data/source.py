"""Where a run's data comes from: the image pairs or the official Cityscapes.

Three sources, one interface (`RunData`), so training, metrics and outputs
are the same whichever feeds them:

- the pairs through tf.data (`tf_pipeline`), the default wherever
  TensorFlow is installed, for every Keras backend;
- the pairs through NumPy and OpenCV (`numpy_pipeline`), for JAX or PyTorch
  machines without TensorFlow: the same photos and class ids, bit for bit;
- the official full-resolution Cityscapes through TensorFlow Datasets
  (`tfds`), with its own train and validation splits.

Each decodes its photos and ids once and keeps them at the photos' size;
`RunData.datasets(size)` serves batches whose labels are at the size the
network runs at. `tf_pipeline` and `tfds` are imported inside the functions
that use them: both import TensorFlow, which the NumPy path must not load.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cityscapes_unet.data.files import list_images, pair_height, scan_pairs, split_train_val
from cityscapes_unet.data.numpy_pipeline import (
    PairDataset,
    class_frequencies_np,
    decode_files,
    decode_pair_np,
)
from cityscapes_unet.errors import TfdsSourceError, UsageError
from cityscapes_unet.settings import TrainConfig, read_json, upgrade_config


def tensorflow_installed() -> bool:
    """Whether TensorFlow can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


def resolve_pipeline(requested: str, dataset: str = "pairs") -> tuple[str, str]:
    """The input pipeline of `--pipeline REQUESTED`: `(tf or numpy, reason)`.

    Raises:
        UsageError: One line, when the choice cannot work here.
    """
    have_tf = tensorflow_installed()
    if dataset == "tfds-cityscapes":
        if requested == "numpy" or not have_tf:
            raise UsageError("--dataset tfds-cityscapes: needs TensorFlow (tf.data and tensorflow-datasets)")
        return "tf", "TensorFlow Datasets feeds tf.data"
    if requested == "auto":
        if have_tf:
            return "tf", "TensorFlow is installed: tf.data feeds every backend"
        return "numpy", "no TensorFlow here: NumPy/OpenCV decoding in a keras.utils.PyDataset"
    if requested == "tf" and not have_tf:
        raise UsageError("--pipeline tf: TensorFlow is not installed (use --pipeline numpy)")
    return requested, "as requested"


@dataclass(frozen=True)
class DataSpec:
    """How batches are drawn, whatever the source.

    Attributes:
        batch_size: Global batch size.
        seed: Seed of the shuffle and the flips.
        augment: `flip` or `none` (training batches only).
        pipeline: `tf` or `numpy`.
        pad_to: Pad every batch to a multiple of this with weightless
            samples (data parallelism that needs equal shares).
    """

    batch_size: int
    seed: int = 0
    augment: str = "none"
    pipeline: str = "tf"
    pad_to: int = 1


@dataclass(frozen=True)
class RunData:
    """The data of a run, decoded once, ready for `model.fit` at any network size.

    Attributes:
        n_train: Number of training samples.
        n_val: Number of validation samples.
        val_source: Where the validation split comes from, in words.
        pipeline: `tf` or `numpy`.
        source_size: Side of the square photos (and of the saved model's input).
        datasets: `datasets(size)` -> `(train, val)` batches `(x, y, w)`:
            photos at `source_size`, labels at `size`; the training ones
            shuffled and augmented. Each call starts the seeded draws anew.
        class_frequencies: The share of labelled pixels per class in the
            training split, float64 `(num_classes,)`.
        samples: `samples(count, spread)` -> `(names, photos, ids)` of
            `count` validation samples at `source_size`, uint8; spread over
            the split when `spread`, else the first ones.
    """

    n_train: int
    n_val: int
    val_source: str
    pipeline: str
    source_size: int
    datasets: Callable[[int], tuple[object, object]]
    class_frequencies: Callable[[], np.ndarray]
    samples: Callable[..., tuple[list[str], np.ndarray, np.ndarray]]


def skip_epochs(train: object, count: int) -> None:
    """Move a training dataset on by `count` epochs without reading them.

    Both pipelines draw each epoch's order and flips from their seed, one
    epoch after the other: a run resumed in a new process skips the epochs
    it has done, so that its next epochs see those of the uninterrupted run.
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


def _picks(n: int, count: int, spread: bool) -> np.ndarray:
    if spread:
        return np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int)) if n else np.arange(0)
    return np.arange(min(count, n))


def _pair_samples(val_files: list[str], source_size: int):
    """`RunData.samples` of pair files, decoded with NumPy (the same pixels as tf.data)."""

    def samples(count: int, spread: bool = True):
        picks = _picks(len(val_files), count, spread)
        pairs = [decode_pair_np(val_files[i]) for i in picks]
        photos = np.zeros((0, source_size, source_size, 3), np.uint8)
        ids = np.zeros((0, source_size, source_size), np.uint8)
        if pairs:
            photos, ids = np.stack([p for p, _ in pairs]), np.stack([t for _, t in pairs])
        return [os.path.basename(val_files[i]) for i in picks], photos, ids

    return samples


def from_pairs(train_files: list[str], val_files: list[str], val_source: str, spec: DataSpec) -> RunData:
    """The pair files through tf.data or NumPy (`spec.pipeline`); all of one size (`files.scan_pairs`)."""
    source_size = pair_height(train_files[0])
    if spec.pipeline == "numpy":
        train, val = decode_files(train_files, source_size), decode_files(val_files, source_size)

        def datasets(size: int):
            common = {"batch_size": spec.batch_size, "pad_to": spec.pad_to}
            return (
                PairDataset(train, size, training=True, seed=spec.seed, augment=spec.augment, **common),
                PairDataset(val, size, training=False, **common),
            )

        frequencies = lambda: class_frequencies_np(train.ids)  # noqa: E731
    else:
        # Imported here: it imports TensorFlow (see the module's docstring).
        from cityscapes_unet.data.tf_pipeline import class_frequencies, decoded_dataset, make_dataset

        train, val = decoded_dataset(train_files, source_size), decoded_dataset(val_files, source_size)

        def datasets(size: int):
            return (
                make_dataset(train, size, spec.batch_size, True, spec.seed, spec.augment, spec.pad_to),
                make_dataset(val, size, spec.batch_size, False, pad_to=spec.pad_to),
            )

        # Counting the decoded split also fills the cache the training reads.
        frequencies = lambda: class_frequencies(train)  # noqa: E731
    return RunData(
        len(train_files), len(val_files), val_source, spec.pipeline, source_size,
        datasets, frequencies, _pair_samples(val_files, source_size),
    )  # fmt: skip


#: Side of the photos the official Cityscapes is kept at (area-resized from
#: 2048x1024 when decoded): the pairs' size, or larger for larger networks.
TFDS_SIZE = 256


def from_tfds(
    spec: DataSpec, network_size: int, data_dir: str | None = None, manual_dir: str | None = None,
    limit: int | None = None,
) -> RunData:  # fmt: skip
    """The official Cityscapes (`train` and `validation`) through TFDS.

    Args:
        spec: How batches are drawn.
        network_size: The largest size the network runs at.
        data_dir: TFDS data directory (None: TFDS' default).
        manual_dir: Folder with the downloaded zips (needed once, to prepare).
        limit: Use only the first N examples of each split.

    Raises:
        TfdsSourceError: One line, when the data cannot be read.
    """
    # Imported here: both import TensorFlow (see the module's docstring).
    from cityscapes_unet.data.tf_pipeline import class_frequencies, make_dataset
    from cityscapes_unet.data.tfds import load_cityscapes, sample_pairs

    size = max(TFDS_SIZE, network_size)
    train = load_cityscapes("train", size, data_dir, manual_dir, limit)
    val = load_cityscapes("validation", size, data_dir, manual_dir, limit)
    counts = [
        _tfds_count(name, ds, data_dir, manual_dir, limit)
        for name, ds in (("train", train), ("validation", val))
    ]

    def datasets(label_size: int):
        return (
            make_dataset(train, label_size, spec.batch_size, True, spec.seed, spec.augment, spec.pad_to),
            make_dataset(val, label_size, spec.batch_size, False, pad_to=spec.pad_to),
        )

    def samples(count: int, spread: bool = True):
        # The first ones: reaching samples spread over the split would decode
        # every full-resolution example before them.
        pairs = sample_pairs("validation", size, min(count, counts[1]), data_dir, manual_dir) if count else []
        photos = np.stack([p for p, _ in pairs]) if pairs else np.zeros((0, size, size, 3), np.uint8)
        ids = np.stack([t for _, t in pairs]) if pairs else np.zeros((0, size, size), np.uint8)
        return [f"validation #{i + 1}" for i in range(len(pairs))], photos, ids

    where = f"TFDS {data_dir or 'default data dir'}: cityscapes/semantic_segmentation, split validation"
    return RunData(*counts, where, "tf", size, datasets, lambda: class_frequencies(train), samples)


def _tfds_count(split: str, decoded, data_dir, manual_dir, limit) -> int:
    """Examples in a TFDS split (at most `limit`); counted where TFDS has no record (mock data)."""
    # Imported here: tfds imports TensorFlow (see the module's docstring).
    from cityscapes_unet.data.tfds import num_examples

    try:
        n = num_examples(split, data_dir, manual_dir)
        return min(n, limit or n)
    except TfdsSourceError:
        # Counting fills the decode cache, as the first epoch would.
        return int(decoded.reduce(np.int64(0), lambda count, _: count + 1))


def _usable(folder: str, limit: int | None, root: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The usable pairs of `folder` (the first `limit` files), and the skipped ones."""
    pool = list_images(folder)[: limit or None]
    good, skipped = scan_pairs(pool)
    if not good:
        what = f"no usable pair among {len(pool)} JPEG files" if pool else "no .jpg files"
        kaggle = os.path.join(root, "cityscapes_data")
        if not pool and os.path.isdir(kaggle):
            raise UsageError(
                f"--data-dir {root}: {what} in {folder}; the pairs are in {kaggle}: pass --data-dir {kaggle}"
            )
        raise UsageError(
            f"--data-dir {root}: {what} in {folder} (put the Cityscapes pairs in {root}/train; see images/README.md)"
        )
    return good, skipped


def find_data(
    data_dir: str, limit: int | None = None, val_split: float = 0.15, seed: int = 42
) -> tuple[list[str], list[str], str, list[tuple[str, str]]]:
    """Locate the train and validation pair files of a data folder.

    `DIR/train` (else `DIR` itself) holds training pairs; `DIR/val`, when it
    exists, is the validation split, else a seeded `val_split` share of the
    training pairs is held out as runs of neighbouring files
    (`split_train_val`).

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
    good, skipped = _usable(train_dir, limit, root)
    if os.path.isdir(val_dir) and list_images(val_dir):
        val, val_skipped = _usable(val_dir, limit, root)
        if pair_height(val[0]) != pair_height(good[0]):
            raise UsageError(
                f"--data-dir {root}: the pairs in {val_dir} are not the size of those in {train_dir}"
            )
        return good, val, f"folder {val_dir}", skipped + val_skipped
    if len(good) < 2:
        raise UsageError(
            f"--data-dir {root}: only {len(good)} usable pair; need 2 or more to hold out validation"
        )
    train, val = split_train_val(good, val_split, seed)
    return (
        train,
        val,
        f"seeded {val_split:.0%} of {train_dir} (seed {seed}, runs of neighbouring files)",
        skipped,
    )


def resolve_eval_files(model_path: str, data_dir: str | None) -> tuple[list[str], str, list[tuple[str, str]]]:
    """The pair files to score, where they come from, and the files skipped.

    Without `data_dir`: the validation split of the run that wrote the model,
    rebuilt from the `config.json` beside it. With `data_dir`: `data_dir/val`
    when it exists, else every pair in `data_dir`.

    Raises:
        UsageError: When no usable pair is found, or the run's split cannot be rebuilt.
    """
    if data_dir is None:
        cfg_path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "config.json")
        if not os.path.isfile(cfg_path):
            raise UsageError(f"--model {model_path}: no config.json beside it; pass --data-dir")
        fields, retired = upgrade_config(read_json(cfg_path, "--model"))
        if "carve" in retired:
            raise UsageError(
                f"--model {model_path}: its run drew validation files one by one, which this version does not rebuild; pass --data-dir"
            )
        cfg = TrainConfig(
            **{k: v for k, v in fields.items() if k in ("data_dir", "limit", "val_split", "seed")}
        )
        _, val, source, skipped = find_data(cfg.data_dir, cfg.limit, cfg.val_split, cfg.seed)
        # Those skipped from the folder the split comes from, not the training folder's.
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
