"""cityscapes_unet.data.tfds: Cityscapes through TensorFlow Datasets, without the real data.

Two ways in, both offline: `tfds.testing.mock_data` (random examples of the
builder's own features, no files), and the real builder preparing tiny zips
laid out like the Cityscapes downloads (extraction, TFRecords, split sizes).
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from cityscapes_unet.data import tf_pipeline
from cityscapes_unet.data import tfds as tfds_source
from cityscapes_unet.data.tfds import LABEL_ID_TO_TRAIN_ID, load_cityscapes, num_examples, sample_pairs
from conftest import write_pairs
from utils_func import IGNORE_ID, LABELS, NUM_CLASSES

tfds = pytest.importorskip("tensorflow_datasets")

H, W = 1024, 2048


def test_lut_follows_labels():
    assert LABEL_ID_TO_TRAIN_ID.shape == (256,) and LABEL_ID_TO_TRAIN_ID.dtype == np.uint8
    by_id = {lab.id: lab.train_id for lab in LABELS}
    assert sorted(by_id) == list(range(34))
    for label_id in range(256):
        assert LABEL_ID_TO_TRAIN_ID[label_id] == by_id.get(label_id, IGNORE_ID), label_id
    assert (LABEL_ID_TO_TRAIN_ID[7], LABEL_ID_TO_TRAIN_ID[26], LABEL_ID_TO_TRAIN_ID[33]) == (0, 13, 18)
    for void in (0, 1, 5, 9, 34, 255):
        assert LABEL_ID_TO_TRAIN_ID[void] == IGNORE_ID
    # Each of the 19 trained classes is reached exactly once.
    trained = LABEL_ID_TO_TRAIN_ID[LABEL_ID_TO_TRAIN_ID != IGNORE_ID]
    assert sorted(trained.tolist()) == list(range(NUM_CLASSES))


def test_labels_to_train_ids():
    label_ids = np.array([[7, 8, 26], [0, 255, 33]], np.uint8)
    expected = np.array([[0, 1, 13], [255, 255, 18]], np.uint8)
    for given in (label_ids, label_ids[..., None]):
        out = tfds_source.labels_to_train_ids(given)
        assert out.dtype == tf.uint8
        np.testing.assert_array_equal(out.numpy(), expected)
    # Wider integers: out-of-range values are ignored, not an error.
    wide = tfds_source.labels_to_train_ids(np.array([[7, -1, 300]], np.int32))
    np.testing.assert_array_equal(wide.numpy(), [[0, 255, 255]])
    with pytest.raises(ValueError):
        tfds_source.labels_to_train_ids(np.zeros((2, 2, 3), np.uint8))


@pytest.fixture
def mocked(tmp_path):
    """TFDS mocked: 3 random examples per split, labelIds 0..33; a manual dir."""
    manual = tmp_path / "manual"
    manual.mkdir()
    for name in tfds_source.MANUAL_FILES:
        (manual / name).write_bytes(b"")
    with tfds.testing.mock_data(num_examples=3, max_value=34, policy=tfds.testing.MockPolicy.USE_CODE):
        yield str(manual)


def test_load_with_mock_data_matches_the_raw_examples(mocked):
    pairs = list(load_cityscapes("train", 32, manual_dir=mocked).as_numpy_iterator())
    assert len(pairs) == 3
    # The same examples, straight from the builder, resized and mapped here.
    raw = tfds.builder(tfds_source.BUILDER_NAME).as_dataset(split="train", shuffle_files=False)
    for (photo, ids), ex in zip(pairs, raw, strict=True):
        assert photo.shape == (32, 32, 3) and photo.dtype == np.uint8
        assert ids.shape == (32, 32) and ids.dtype == np.uint8
        assert set(np.unique(ids)) <= set(range(NUM_CLASSES)) | {IGNORE_ID}
        assert ex["segmentation_label"].shape == (H, W, 1)
        small = tf.image.resize(ex["segmentation_label"], (32, 32), method="nearest")[..., 0]
        np.testing.assert_array_equal(ids, LABEL_ID_TO_TRAIN_ID[small.numpy()])
        area = tf.image.resize(ex["image_left"], (32, 32), method="area").numpy()
        assert np.abs(photo.astype(np.float32) - area).max() <= 0.5 + 1e-3
    assert len({np.asarray(i).tobytes() for _, i in pairs}) == 3
    # sample_pairs gives the first pairs of the same split.
    sample = sample_pairs("train", 32, 2, manual_dir=mocked)
    assert len(sample) == 2
    for (p, i), (p2, i2) in zip(sample, pairs[:2], strict=True):
        np.testing.assert_array_equal(p, p2)
        np.testing.assert_array_equal(i, i2)


def test_make_dataset_accepts_it(mocked, tmp_path):
    decoded = load_cityscapes("validation", 32, manual_dir=mocked)
    freqs = tf_pipeline.class_frequencies(decoded)
    assert freqs.shape == (NUM_CLASSES,) and freqs.sum() == pytest.approx(1.0)
    pairs = tf_pipeline.decoded_dataset(write_pairs(tmp_path / "pairs", 2), 32)
    ds = tf_pipeline.make_dataset(decoded, 16, batch_size=2, training=True, augment="flip")
    pairs_ds = tf_pipeline.make_dataset(pairs, 16, batch_size=2, training=True, augment="flip")
    assert ds.element_spec == pairs_ds.element_spec
    sizes = []
    for x, y, w in ds:
        assert x.shape[1:] == (32, 32, 3) and y.shape[1:] == (16, 16, NUM_CLASSES)
        assert w.shape[1:] == (16, 16) and x.dtype == y.dtype == w.dtype == tf.uint8
        sizes.append(x.shape[0])
    assert sorted(sizes) == [1, 2]


def test_split_names(mocked):
    assert len(list(load_cityscapes("val", 16, manual_dir=mocked, limit=1))) == 1
    with pytest.raises(ValueError, match="unknown Cityscapes split"):
        load_cityscapes("training", 16)  # checked before any data is needed


def _zip_png(z: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    z.writestr(name, tf.io.encode_png(array).numpy())


# Fake downloads: labelIds in four quadrants (road, person / car, ego
# vehicle), the photo one colour per quadrant, brighter per example.
QUADRANT_IDS = np.array([[7, 24], [26, 1]], np.uint8)
QUADRANT_TRAIN_IDS = np.array([[0, 11], [13, IGNORE_ID]], np.uint8)
QUADRANT_RGB = np.array([[[128, 64, 128], [220, 20, 60]], [[0, 0, 142], [10, 10, 10]]], np.uint8)


def _quadrants(small: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.repeat(np.repeat(small, height // 2, axis=0), width // 2, axis=1)


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    """A manual dir with the two zips laid out as the real ones (2/1/1 images)."""
    manual = tmp_path_factory.mktemp("cityscapes") / "manual"
    manual.mkdir()
    images = zipfile.ZipFile(manual / tfds_source.MANUAL_FILES[0], "w")
    labels = zipfile.ZipFile(manual / tfds_source.MANUAL_FILES[1], "w")
    with images, labels:
        for split, count in (("train", 2), ("val", 1), ("test", 1)):
            for i in range(count):
                image_id = f"aachen_{i:06d}_000019"
                photo = _quadrants(QUADRANT_RGB + 5 * i, H, W)
                ids = _quadrants(QUADRANT_IDS, H, W) if split != "test" else np.zeros((H, W), np.uint8)
                _zip_png(images, f"leftImg8bit/{split}/aachen/{image_id}_leftImg8bit.png", photo)
                _zip_png(labels, f"gtFine/{split}/aachen/{image_id}_gtFine_labelIds.png", ids[..., None])
    return str(manual)


def test_real_builder_prepares_the_downloads(downloads, tmp_path):
    data_dir = str(tmp_path / "tfds")
    assert num_examples("train", data_dir, downloads) == 2
    # Prepared once: the manual dir is no longer needed.
    assert num_examples("validation", data_dir) == 1
    assert num_examples("test", data_dir) == 1
    (photo, ids), *_ = load_cityscapes("val", 32, data_dir).as_numpy_iterator()
    np.testing.assert_array_equal(photo, _quadrants(QUADRANT_RGB, 32, 32))
    np.testing.assert_array_equal(ids, _quadrants(QUADRANT_TRAIN_IDS, 32, 32))
    train = list(load_cityscapes("train", 16, data_dir).as_numpy_iterator())
    assert len(train) == 2 and all((i == _quadrants(QUADRANT_TRAIN_IDS, 16, 16)).all() for _, i in train)
    (_, test_ids), *_ = sample_pairs("test", 16, 5, data_dir)
    assert (test_ids == IGNORE_ID).all()


def _one_line_error(match: str, **kwargs) -> str:
    with pytest.raises(ValueError, match=match) as info:
        num_examples("train", **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_or_wrong_manual_dir_is_one_line(downloads, tmp_path):
    data_dir = str(tmp_path / "tfds")
    absent = tmp_path / "nowhere"
    message = _one_line_error("no folder", data_dir=data_dir, manual_dir=str(absent))
    assert str(absent) in message and all(f in message for f in tfds_source.MANUAL_FILES)
    # Without a manual dir, TFDS' default one is named.
    message = _one_line_error("no folder", data_dir=data_dir)
    assert os.path.join(data_dir, "downloads", "manual") in message
    partial = tmp_path / "partial"
    partial.mkdir()
    os.symlink(os.path.join(downloads, tfds_source.MANUAL_FILES[0]), partial / tfds_source.MANUAL_FILES[0])
    message = _one_line_error(
        r"missing: gtFine_trainvaltest\.zip\)$", data_dir=data_dir, manual_dir=str(partial)
    )
    assert str(partial) in message
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in tfds_source.MANUAL_FILES:
        (broken / name).write_bytes(b"not a zip")
    message = _one_line_error("cannot prepare", data_dir=data_dir, manual_dir=str(broken))
    assert str(broken) in message and tfds_source.MANUAL_FILES[1] in message


@pytest.mark.slow
def test_training_end_to_end_on_mock_cityscapes(mocked, tmp_path):
    """`--dataset tfds-cityscapes`: the same training, metrics and outputs, from TFDS."""
    import json

    from cityscapes_unet.settings import TrainConfig
    from cityscapes_unet.train.run import run_training

    out = tmp_path / "run"
    cfg = TrainConfig(
        output_dir=str(out),
        dataset="tfds-cityscapes",
        tfds_manual_dir=mocked,
        epochs=1,
        image_size=32,
        base_filters=4,
        batch_size=2,
        xla="off",
        num_preds=2,
    )
    summary = run_training(cfg)
    assert summary["model"] == str(out / "unet_model.keras")
    with open(out / "config.json") as f:
        config = json.load(f)
    # Mocked splits hold 3 examples each; their sizes are counted.
    assert (config["train_files"], config["val_files"]) == (3, 3)
    assert "cityscapes/semantic_segmentation, split validation" in config["val_source"]
    for name in ("history.csv", "acc.png", "pred_1.png", "pred_2.png", "classes.json", "progress.gif"):
        assert (out / name).is_file(), name
