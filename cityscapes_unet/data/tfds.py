"""The official full-resolution Cityscapes through TensorFlow Datasets.

The alternative to the 512x256 image pairs: the fine annotations of
Cityscapes at their own 2048x1024, read with the TFDS builder
`cityscapes/semantic_segmentation`, and turned into exactly what
`tf_pipeline.decoded_dataset` gives (uint8 square photos and trainIds,
cached), so `tf_pipeline.make_dataset` and everything after it work
unchanged.

Get the data (registration required, non-commercial research and education
only): log in at https://www.cityscapes-dataset.com/downloads/ and download

    leftImg8bit_trainvaltest.zip   (11 GB: the photos)
    gtFine_trainvaltest.zip        (241 MB: the fine labels)

into one folder, unextracted; that folder is the manual directory. Then

    python main.py --dataset tfds-cityscapes --set tfds_manual_dir=DIR [--set tfds_data_dir=DIR]

The first run has TFDS extract the zips and write its own records to the data
directory (`tfds_data_dir`; TFDS' default `~/tensorflow_datasets`, or
`$TFDS_DATA_DIR`): a one-time step that needs about 25 GB free there beside
the zips (the extracted copy under `downloads/extracted/` may be deleted
afterwards). Later runs read the prepared records and need no manual
directory. Splits: `train` (2975), `validation` (500) and `test` (1525, whose
public labels are all void: every pixel is IGNORE_ID).

The photo is resized to a square (squashing the 2:1 aspect, as the pairs do)
with the pairs' area resize (`tf_pipeline.area_resize`); the labelIds are
mapped to trainIds at full resolution and then resized with nearest
neighbour only (`tf_pipeline.nearest_resize`): class ids are never
interpolated.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import tensorflow as tf

from cityscapes_unet.data.tf_pipeline import area_resize, nearest_resize
from cityscapes_unet.errors import TfdsSourceError
from utils_func import IGNORE_ID, LABELS

#: The TFDS builder and config read here.
BUILDER_NAME = "cityscapes/semantic_segmentation"
#: What the manual directory must hold, as downloaded from cityscapes-dataset.com.
MANUAL_FILES = ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip")
#: The builder's splits; `val` is accepted for `validation`.
SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"val": "validation"}


def _label_lut() -> np.ndarray:
    lut = np.full((256,), IGNORE_ID, np.uint8)
    for lab in LABELS:
        if 0 <= lab.id < 256:
            lut[lab.id] = lab.train_id
    return lut


#: uint8 `(256,)`: labelId -> trainId, from `utils_func.LABELS`; every other
#: value (void and untrained labels, 255, unknown ids) -> IGNORE_ID.
LABEL_ID_TO_TRAIN_ID: np.ndarray = _label_lut()
LABEL_ID_TO_TRAIN_ID.flags.writeable = False


def labels_to_train_ids(label_ids: tf.Tensor | np.ndarray) -> tf.Tensor:
    """Map Cityscapes labelIds (a `*_gtFine_labelIds.png`) to trainIds.

    Args:
        label_ids: Integer tensor `(H, W)` or `(H, W, 1)` of labelIds,
            normally uint8. Values outside 0..255 become IGNORE_ID.

    Returns:
        uint8 tensor `(H, W)` of trainIds 0..18 or IGNORE_ID.
    """
    ids = tf.convert_to_tensor(label_ids)
    if ids.shape.rank == 3:
        if ids.shape[-1] != 1:
            raise ValueError(f"expected labelIds of shape (H, W) or (H, W, 1), got {ids.shape}")
        ids = ids[..., 0]
    lut = tf.constant(LABEL_ID_TO_TRAIN_ID)
    if ids.dtype == tf.uint8:
        return tf.gather(lut, tf.cast(ids, tf.int32))
    idx = tf.cast(ids, tf.int64)
    inside = (idx >= 0) & (idx < 256)
    return tf.where(inside, tf.gather(lut, tf.clip_by_value(idx, 0, 255)), tf.constant(IGNORE_ID, tf.uint8))


def decode_example(example: dict, image_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Turn one TFDS Cityscapes example into a `(photo, ids)` pair.

    Args:
        example: Dict with `image_left` uint8 `(1024, 2048, 3)` and
            `segmentation_label` uint8 `(1024, 2048, 1)` labelIds.
        image_size: Side of the square output.

    Returns:
        `(photo, ids)`: uint8 `(image_size, image_size, 3)` and uint8
        `(image_size, image_size)` trainIds or IGNORE_ID, as
        `tf_pipeline.decode_pair` gives.
    """
    photo = area_resize(example["image_left"], image_size)
    # Ids at full resolution, then nearest neighbour only.
    ids = nearest_resize(labels_to_train_ids(example["segmentation_label"]), image_size)
    photo.set_shape((image_size, image_size, 3))
    ids.set_shape((image_size, image_size))
    return photo, ids


def _import_tfds():
    try:
        import importlib_resources  # noqa: F401
    except ImportError:
        # TFDS 4.9.x uses `importlib_resources.abc` when preparing a dataset
        # but declares the package only for Python < 3.9
        # (tensorflow/datasets#11212). The standard library's
        # importlib.resources (3.11+) has the same `abc.Traversable`.
        try:
            import importlib.resources
            import importlib.resources.abc  # noqa: F401

            sys.modules.setdefault("importlib_resources", importlib.resources)
        except ImportError:
            pass
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise TfdsSourceError(
            f"tensorflow-datasets is needed here: pip install tensorflow-datasets ({e})"
        ) from None
    return tfds


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _expected() -> str:
    return f"must hold {' and '.join(MANUAL_FILES)} as downloaded (unextracted) from cityscapes-dataset.com"


def _check_manual_dir(folder: str) -> None:
    if not os.path.isdir(folder):
        raise TfdsSourceError(f"Cityscapes for TFDS: no folder {folder}; it {_expected()}")
    missing = [f for f in MANUAL_FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise TfdsSourceError(f"Cityscapes for TFDS: {folder} {_expected()} (missing: {', '.join(missing)})")


def _split_name(split: str) -> str:
    name = _SPLIT_ALIASES.get(split, split)
    if name not in SPLITS:
        raise TfdsSourceError(f"unknown Cityscapes split {split!r}; one of {', '.join(SPLITS)}")
    return name


def get_builder(data_dir: str | None = None, manual_dir: str | None = None):
    """The prepared TFDS Cityscapes builder, preparing it on first use.

    Args:
        data_dir: TFDS data directory (None: TFDS' default,
            `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
        manual_dir: Folder holding `MANUAL_FILES`; needed only while the
            dataset is not prepared in `data_dir` yet (None: TFDS' default,
            `DATA_DIR/downloads/manual`).

    Returns:
        A prepared `tfds.core.DatasetBuilder`.

    Raises:
        TfdsSourceError: A one-line reason, e.g. the manual files are
            missing or the preparation failed.
    """
    tfds = _import_tfds()
    try:
        builder = tfds.builder(BUILDER_NAME, data_dir=data_dir)
    except Exception as e:
        where = data_dir or "the default TFDS data dir"
        raise TfdsSourceError(f"cannot open TFDS {BUILDER_NAME} in {where}: {_one_line(e)}") from None
    if builder.is_prepared():
        return builder
    manual = os.path.abspath(
        os.path.expanduser(
            manual_dir or os.path.join(os.fspath(builder.data_dir_root), "downloads", "manual")
        )
    )
    _check_manual_dir(manual)
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    except Exception as e:
        raise TfdsSourceError(
            f"cannot prepare TFDS {BUILDER_NAME} from {manual} ({_one_line(e)}); it {_expected()}"
        ) from None
    return builder


def _examples(builder, name: str) -> tf.data.Dataset:
    known = list(builder.info.splits)
    if known and name not in known:
        raise TfdsSourceError(f"the prepared {BUILDER_NAME} has no split {name!r}; it has {', '.join(known)}")
    try:
        return builder.as_dataset(split=name, shuffle_files=False)
    except Exception as e:
        raise TfdsSourceError(f"cannot read split {name!r} of {BUILDER_NAME}: {_one_line(e)}") from None


def load_cityscapes(
    split: str,
    image_size: int,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    limit: int | None = None,
) -> tf.data.Dataset:
    """Decoded, cached `(photo, ids)` pairs of one Cityscapes split.

    The TFDS counterpart of `tf_pipeline.decoded_dataset`: pass the result
    to `tf_pipeline.make_dataset` (and `class_frequencies`).

    Args:
        split: `train`, `validation` (or `val`) or `test` (all void).
        image_size: Side of the square model input.
        data_dir: TFDS data directory, see `get_builder`.
        manual_dir: Folder with the downloaded zips, see `get_builder`.
        limit: Use only the first `limit` examples (None: all).

    Returns:
        A cached dataset of uint8 `(image_size, image_size, 3)` photos and
        uint8 `(image_size, image_size)` trainIds, in the prepared data's
        (fixed) order.

    Raises:
        TfdsSourceError: A one-line reason (a ValueError).
    """
    name = _split_name(split)
    ds = _examples(get_builder(data_dir, manual_dir), name)
    if limit is not None:
        ds = ds.take(limit)
    ds = ds.map(lambda ex: decode_example(ex, image_size), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.cache()


def num_examples(split: str, data_dir: str | None = None, manual_dir: str | None = None) -> int:
    """Number of examples in a split of the prepared dataset.

    Args:
        split: `train`, `validation` (or `val`) or `test`.
        data_dir: TFDS data directory, see `get_builder`.
        manual_dir: Folder with the downloaded zips, see `get_builder`.

    Returns:
        The split's size as recorded by TFDS.

    Raises:
        TfdsSourceError: A one-line reason (a ValueError).
    """
    name = _split_name(split)
    splits = get_builder(data_dir, manual_dir).info.splits
    if name not in list(splits):
        raise TfdsSourceError(f"the size of split {name!r} of {BUILDER_NAME} is not known")
    return int(splits[name].num_examples)


def sample_pairs(
    split: str,
    image_size: int,
    count: int,
    data_dir: str | None = None,
    manual_dir: str | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first `count` pairs of a split as NumPy arrays (progress pictures).

    Args:
        split: `train`, `validation` (or `val`) or `test`.
        image_size: Side of the square model input.
        count: Number of pairs (fewer when the split is smaller).
        data_dir: TFDS data directory, see `get_builder`.
        manual_dir: Folder with the downloaded zips, see `get_builder`.

    Returns:
        A list of `(photo, ids)`: uint8 `(image_size, image_size, 3)` and
        uint8 `(image_size, image_size)`, the same pairs as the first of
        `load_cityscapes`.

    Raises:
        TfdsSourceError: A one-line reason (a ValueError).
    """
    name = _split_name(split)
    ds = _examples(get_builder(data_dir, manual_dir), name).take(count)
    ds = ds.map(lambda ex: decode_example(ex, image_size))
    return list(ds.as_numpy_iterator())
