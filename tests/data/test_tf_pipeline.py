"""tf.data pipeline: decoding, resizing, one-hot, split, header checks."""

import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from cityscapes_unet.data.files import (  # noqa: E402
    VAL_BLOCKS,
    check_pair,
    jpeg_header,
    list_images,
    scan_pairs,
    split_train_val,
)
from cityscapes_unet.data.tf_pipeline import decode_pair, decoded_dataset, to_model_inputs  # noqa: E402
from cityscapes_unet.data.tf_pipeline import make_dataset as make_from_decoded  # noqa: E402
from conftest import make_pair, write_pairs  # noqa: E402


def make_dataset(paths, label_size, batch_size, training, **kwargs):
    """Batches of pair files of one size, labels at `label_size`."""
    return make_from_decoded(
        decoded_dataset(paths, jpeg_header(paths[0])[0]), label_size, batch_size, training, **kwargs
    )


def test_decode_pair_full_size_matches_drawn_ids(tmp_path):
    paths = write_pairs(tmp_path, 1, size=32)
    _, ids_true = make_pair(32, 0)
    photo, ids = (t.numpy() for t in decode_pair(tf.constant(paths[0]), 32))
    assert photo.shape == (32, 32, 3) and photo.dtype == np.uint8
    assert ids.shape == (32, 32) and ids.dtype == np.uint8
    # JPEG blurs edges: rim pixels may be ignored or, rarely, take a
    # neighbouring colour; away from edges every pixel is exact.
    labelled = ids != 255
    assert (ids[labelled] == ids_true[labelled]).mean() > 0.97
    assert labelled.mean() > 0.85
    interior = np.ones_like(labelled)
    for r in (8, 16, 24):  # band edges
        interior[r - 2 : r + 2] = False
    interior[:6, :6] = False  # the void corner
    np.testing.assert_array_equal(ids[interior], ids_true[interior])


def test_labels_picked_with_nearest_only(tmp_path):
    paths = write_pairs(tmp_path, 1, size=64)
    _, ids_full = (t.numpy() for t in decode_pair(tf.constant(paths[0]), 64))
    x, y, w = next(iter(make_dataset(paths, 16, 1, training=False)))
    assert x.shape == (1, 64, 64, 3) and y.shape == (1, 16, 16, 19)
    # Nearest neighbour: every small id is the full-size id at the pixel under its centre.
    ids_small = np.where(w.numpy()[0] == 1, y.numpy()[0].argmax(-1), 255)
    np.testing.assert_array_equal(ids_small, ids_full[2::4, 2::4])


def test_to_model_inputs_one_hot_and_weights():
    ids = tf.constant([[[0, 255], [18, 3]]], tf.uint8)
    photo = tf.zeros((1, 2, 2, 3), tf.uint8)
    x, y, w = (t.numpy() for t in to_model_inputs(photo, ids))
    assert x.dtype == y.dtype == w.dtype == np.uint8 and y.shape == (1, 2, 2, 19)
    np.testing.assert_array_equal(w, [[[1, 0], [1, 1]]])
    np.testing.assert_array_equal(y.sum(-1), w)
    assert y[0, 1, 0, 18] == 1 and y[0, 0, 1].sum() == 0


def test_dataset_batches_shapes_and_alignment(tmp_path):
    paths = write_pairs(tmp_path, 6, size=32)
    ds = make_dataset(paths, 32, 4, training=True, seed=1, augment="flip")
    batches = list(ds)
    assert [b[0].shape[0] for b in batches] == [4, 2]
    for x, y, w in batches:
        assert x.shape[1:] == (32, 32, 3) and y.shape[1:] == (32, 32, 19) and w.shape[1:] == (32, 32)
        # Flip keeps photo and mask aligned: the void corner (weight 0) sits
        # at the top-left or top-right, where the photo has no class colour.
        for i in range(x.shape[0]):
            void = w[i].numpy() == 0
            left, right = void[:4, :4].mean(), void[:4, -4:].mean()
            assert max(left, right) > 0.6 and min(left, right) < 0.2


def test_pipelines_run_without_the_autotuning_thread(tmp_path):
    # Dropping an iterator waits out that thread's sleep (`FIXED_KNOBS`):
    # Keras drops the training and validation iterators every epoch.
    paths = write_pairs(tmp_path, 4, size=16)
    for training in (True, False):
        ds = make_dataset(paths, 16, 2, training=training, seed=1)
        assert ds.options().autotune.enabled is False
        assert sum(int(x.shape[0]) for x, _, _ in ds) == 4


def test_shuffle_is_seeded_and_reshuffles(tmp_path):
    paths = write_pairs(tmp_path, 8, size=16)

    def epochs(seed):
        ds = make_dataset(paths, 16, 8, training=True, seed=seed)
        # Each synthetic photo has its own pixel sum: a fingerprint of order.
        return [tuple(x.numpy().sum(axis=(1, 2, 3)).tolist()) for _ in range(2) for x, _, _ in ds]

    first, second = epochs(3)
    assert sorted(first) == sorted(second)  # the same samples ...
    assert first != second  # ... in a new order each epoch
    assert epochs(3) == [first, second]  # and the same seed repeats it


def test_split_is_seeded_and_disjoint():
    files = [f"{i}.jpg" for i in range(100)]
    tr, va = split_train_val(files, 0.15, seed=7)
    assert len(va) == 15 and len(tr) == 85
    assert not set(tr) & set(va) and set(tr) | set(va) == set(files)
    assert split_train_val(files, 0.15, seed=7) == (tr, va)
    assert split_train_val(files, 0.15, seed=8)[1] != va


@pytest.mark.parametrize("n, fraction", [(100, 0.15), (2472, 0.15), (20, 0.5), (3, 0.15), (10, 0.9)])
def test_split_holds_out_runs_of_neighbours(n, fraction):
    files = [f"{i}.jpg" for i in range(n)]
    tr, va = split_train_val(files, fraction, seed=3)
    assert len(va) == min(max(1, round(n * fraction)), n - 1)
    assert not set(tr) & set(va) and set(tr) | set(va) == set(files) and tr and va
    index = sorted(int(f.split(".")[0]) for f in va)
    runs = 1 + sum(b - a > 1 for a, b in zip(index, index[1:], strict=False))
    assert runs == min(VAL_BLOCKS, len(va), len(tr) + 1)  # distinct runs that never touch
    assert split_train_val(files, fraction, seed=3) == (tr, va)


def test_header_checks(tmp_path):
    import cv2

    good = write_pairs(tmp_path, 1, size=32)[0]
    assert check_pair(good) is None
    assert jpeg_header(good) == (32, 64, 3)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    png = tmp_path / "png.jpg"
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((8, 16, 3), np.uint8))
    png.write_bytes((tmp_path / "x.png").read_bytes())
    cv2.imwrite(str(tmp_path / "square.jpg"), np.zeros((32, 32, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "gray.jpg"), np.zeros((32, 64), np.uint8))
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(open(good, "rb").read()[:20])
    reasons = {
        n: check_pair(str(tmp_path / n))
        for n in ("empty.jpg", "text.jpg", "png.jpg", "square.jpg", "gray.jpg", "trunc.jpg")
    }
    assert reasons["empty.jpg"] == "empty file"
    assert "not a JPEG" in reasons["text.jpg"]
    assert "PNG" in reasons["png.jpg"]
    assert "not a side-by-side pair" in reasons["square.jpg"]
    assert "1-channel" in reasons["gray.jpg"]
    assert "truncated" in reasons["trunc.jpg"]


def test_scan_keeps_the_first_pairs_size(tmp_path):
    small = write_pairs(tmp_path / "a", 2, size=16)
    large = write_pairs(tmp_path / "b", 1, size=32)
    good, skipped = scan_pairs([small[0], *large, small[1]])
    assert good == small and [p for p, _ in skipped] == large
    assert "64x32, not 32x16" in skipped[0][1]


def test_list_images_natural_order(tmp_path):
    for n in ("10.jpg", "2.jpg", "1.JPG", "notes.txt"):
        (tmp_path / n).write_bytes(b"x")
    os.mkdir(tmp_path / "sub.jpg")
    assert [os.path.basename(p) for p in list_images(str(tmp_path))] == ["1.JPG", "2.jpg", "10.jpg"]


def test_corrupt_body_is_dropped_not_fatal(tmp_path):
    paths = write_pairs(tmp_path, 3, size=32)
    data = open(paths[1], "rb").read()
    with open(paths[1], "wb") as f:  # header intact, body cut
        f.write(data[: len(data) // 3])
    # The listing's check names it; the pipeline still drops such a file.
    assert "does not decode" in check_pair(paths[1])
    n = sum(int(x.shape[0]) for x, _, _ in make_dataset(paths, 32, 8, training=False))
    assert n == 2


def test_class_frequencies_leave_out_void(tmp_path):
    from cityscapes_unet.data.tf_pipeline import class_frequencies, decoded_dataset

    paths = write_pairs(tmp_path, 3, size=32)
    freq = class_frequencies(decoded_dataset(paths, 32))
    assert freq.shape == (19,)
    np.testing.assert_allclose(freq.sum(), 1.0)
    # Only the classes drawn by make_pair appear.
    assert set(np.flatnonzero(freq > 0.01)) <= {0, 2, 8, 10, 13}
