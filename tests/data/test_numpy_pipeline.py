"""numpy_pipeline: the TensorFlow-free pipeline against tf_pipeline's tf.data one."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from cityscapes_unet.data.numpy_pipeline import (
    PairDataset,
    class_frequencies_np,
    decode_files,
    decode_pair_np,
)
from cityscapes_unet.data.source import DataSpec, from_pairs, skip_epochs
from conftest import ROOT, SHARED_TRAIN, write_pairs
from utils_func import CLASSES, IGNORE_ID, NUM_CLASSES


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


def _tf_batches(files, label_size, batch, training=False, **kwargs):
    from cityscapes_unet.data.files import pair_height
    from cityscapes_unet.data.tf_pipeline import decoded_dataset, make_dataset

    decoded = decoded_dataset(files, pair_height(files[0]))
    return [tuple(t.numpy() for t in b) for b in make_dataset(decoded, label_size, batch, training, **kwargs)]


def _np_batches(files, label_size, batch, training=False, **kwargs):
    ds = PairDataset(
        decode_files(files, decode_pair_np(files[0])[1].shape[0]), label_size, batch, training, **kwargs
    )
    return [ds[i] for i in range(len(ds))]


def assert_same_batches(tf_batches, np_batches):
    assert len(tf_batches) == len(np_batches)
    for theirs, ours in zip(tf_batches, np_batches, strict=True):
        for a, b in zip(ours, theirs, strict=True):
            assert a.dtype == b.dtype == np.uint8
            np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not os.path.isdir(SHARED_TRAIN), reason="real pairs not present")
def test_real_pairs_decode_like_tf(tf):
    from cityscapes_unet.data.files import list_images
    from cityscapes_unet.data.tf_pipeline import class_frequencies, decode_pair, decoded_dataset

    files = list_images(SHARED_TRAIN)
    files = files[:: max(1, len(files) // 8)][:8]
    for f in files:
        photo, ids = decode_pair_np(f)
        t_photo, t_ids = (t.numpy() for t in decode_pair(tf.constant(f), 256))
        np.testing.assert_array_equal(photo, t_photo)
        np.testing.assert_array_equal(ids, t_ids)
    # Labels picked at the network's sizes, and the class shares, bit for bit.
    for size in (80, 96, 144):
        assert_same_batches(_tf_batches(files, size, 4), _np_batches(files, size, 4))
    np.testing.assert_array_equal(
        class_frequencies_np(decode_files(files, 256).ids), class_frequencies(decoded_dataset(files, 256))
    )


@pytest.mark.parametrize("label_size", [16, 32, 48])
def test_synthetic_batches_like_tf(tf, tmp_path, label_size):
    files = write_pairs(tmp_path, 5, size=32, seed=label_size)
    assert_same_batches(
        _tf_batches(files, label_size, 2, pad_to=4), _np_batches(files, label_size, 2, pad_to=4)
    )


def test_batches_shapes_dtypes_and_void(tmp_path):
    files = write_pairs(tmp_path, 10, size=32)
    ds = PairDataset(decode_files(files, 32), 16, 4, training=False)
    batches = [ds[i] for i in range(len(ds))]
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    with pytest.raises(IndexError):
        ds[3]
    x, y, w = (np.concatenate([b[k] for b in batches]) for k in range(3))
    assert x.dtype == y.dtype == w.dtype == np.uint8
    # Photos at their own size, labels at the network's.
    assert x.shape[1:] == (32, 32, 3) and y.shape[1:] == (16, 16, 19) and w.shape[1:] == (16, 16)
    decoded = [decode_pair_np(f) for f in files]
    np.testing.assert_array_equal(x, np.stack([p for p, _ in decoded]))
    ids = np.stack([i[1::2, 1::2] for _, i in decoded])  # nearest, half-pixel centres: every odd pixel
    void = ids >= NUM_CLASSES
    assert void[:, 0, 0].all()  # the synthetic pairs' void corner
    np.testing.assert_array_equal(w, (~void).astype(np.uint8))
    np.testing.assert_array_equal(y.sum(-1), w)
    np.testing.assert_array_equal(y.argmax(-1)[~void], ids[~void])
    ds.on_epoch_end()  # validation batches do not change between epochs
    np.testing.assert_array_equal(ds[0][0], batches[0][0])


def test_class_frequencies_leave_out_void(tmp_path):
    files = write_pairs(tmp_path, 6, size=32)
    freq = class_frequencies_np(decode_files(files, 32).ids)
    assert freq.dtype == np.float64 and freq.shape == (NUM_CLASSES,) and freq.sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(class_frequencies_np(np.full((4, 4), IGNORE_ID, np.uint8)), 0)


def test_training_order_is_seeded_and_reshuffled(tmp_path):
    decoded = decode_files(write_pairs(tmp_path, 12, size=16), 16)

    def epochs(seed, n=3):
        ds, out = PairDataset(decoded, 16, 5, training=True, seed=seed), []
        for _ in range(n):
            x = np.concatenate([ds[i][0] for i in range(len(ds))])
            out.append([next(k for k, r in enumerate(decoded.photos) if np.array_equal(r, s)) for s in x])
            ds.on_epoch_end()
        return out

    first = epochs(seed=3)
    assert all(sorted(e) == list(range(12)) for e in first)  # each sample once
    assert len({tuple(e) for e in first}) == 3  # reshuffled every epoch
    assert epochs(seed=3) == first and epochs(seed=4) != first


def test_flip_keeps_photo_and_mask_aligned(tmp_path):
    # Vertical bands of classes, the photo painted in the class colours; no
    # layout is another's mirror, so a mirrored photo tells its file.
    lut = {c.train_id: c.color for c in CLASSES}
    layouts = [(0, 2, 8, 10), (2, 8, 10, 13), (8, 10, 13, 0), (10, 13, 0, 2), (13, 0, 2, 8), (0, 8, 2, 13)]
    files = []
    for i, classes in enumerate(layouts):
        label = np.zeros((32, 32, 3), np.uint8)
        for k, c in enumerate(classes):
            label[:, k * 8 : (k + 1) * 8] = lut[c]
        files.append(str(tmp_path / f"{i}.jpg"))
        cv2.imwrite(
            files[-1],
            cv2.cvtColor(np.concatenate([label, label], 1), cv2.COLOR_RGB2BGR),
            [cv2.IMWRITE_JPEG_QUALITY, 100],
        )
    decoded = decode_files(files, 32)
    ds = PairDataset(decoded, 32, 6, training=True, seed=1, augment="flip")
    colors = np.array([c.color for c in CLASSES], int)
    seen = set()
    for _ in range(4):
        x, y, w = ds[0]
        for k in range(len(x)):
            how = [
                0 if np.array_equal(c, x[k]) else 1 if np.array_equal(c[:, ::-1], x[k]) else None
                for c in decoded.photos
            ]
            assert sum(h is not None for h in how) == 1
            seen |= {h for h in how if h is not None}
            photo_class = np.abs(x[k][..., None, :].astype(int) - colors).sum(-1).argmin(-1)
            assert (photo_class[w[k] == 1] == y[k].argmax(-1)[w[k] == 1]).mean() > 0.95
        ds.on_epoch_end()
    assert seen == {0, 1}  # both flipped and unflipped samples


def test_undecodable_and_other_size_files_are_skipped(tmp_path):
    files = write_pairs(tmp_path, 3, size=16)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(open(files[0], "rb").read()[:200])
    larger = write_pairs(tmp_path / "large", 1, size=32)
    with pytest.raises(ValueError, match="not a decodable JPEG"):
        decode_pair_np(truncated)
    with pytest.warns(UserWarning, match="truncated.jpg"):
        decoded = decode_files([*files, str(truncated), *larger], 16)
    assert decoded.files == files and [p for p, _ in decoded.skipped] == [str(truncated), *larger]
    with pytest.raises(ValueError, match="no decodable pair"), pytest.warns(UserWarning):
        decode_files([str(truncated)], 16)


@pytest.mark.slow
def test_runs_without_tensorflow(tmp_path):
    # Runs under JAX (requirements-backends.txt); skips where it is not installed.
    pytest.importorskip("jax")
    files = write_pairs(tmp_path, 6, size=16)
    script = f"""
import sys
from cityscapes_unet.data import numpy_pipeline, source
assert "tensorflow" not in sys.modules, "numpy_pipeline or source imported tensorflow"


class NoTensorFlow:
    # From here on, as on a machine without it (not sys.modules["tensorflow"]
    # = None: Keras takes a key there as TensorFlow loaded).
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError("No module named 'tensorflow'")


sys.meta_path.insert(0, NoTensorFlow())
import keras
data = source.from_pairs({files!r}, {files[:2]!r}, "test", source.DataSpec(4, pipeline="numpy"))
train, val = data.datasets(8)
model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.AveragePooling2D(2),
                          keras.layers.Conv2D(19, 1, activation="softmax")])
model.compile("adam", "categorical_crossentropy")
model.fit(train, validation_data=val, epochs=2, verbose=0)
assert train.epoch >= 2, train.epoch  # Keras drew each epoch anew
print("ok", keras.backend.backend())
"""
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-2:] == ["ok", "jax"]


@pytest.mark.parametrize("pipeline", ["numpy", "tf"])
def test_samples_are_the_photos_and_labels_at_their_size(tmp_path, pipeline):
    if pipeline == "tf":
        pytest.importorskip("tensorflow")
    files = write_pairs(tmp_path, 6, size=32)
    data = from_pairs(files[:4], files[4:], "test", DataSpec(2, pipeline=pipeline))
    assert data.source_size == 32 and (data.n_train, data.n_val) == (4, 2)
    names, photos, ids = data.samples(2, False)
    assert names == ["5.jpg", "6.jpg"] and photos.shape == (2, 32, 32, 3) and ids.shape == (2, 32, 32)
    photo, full_ids = decode_pair_np(files[4])
    np.testing.assert_array_equal(photos[0], photo)
    np.testing.assert_array_equal(ids[0], full_ids)


@pytest.mark.parametrize("pipeline", ["numpy", "tf"])
def test_skip_epochs_serves_the_epoch_an_uninterrupted_run_reaches(tmp_path, pipeline):
    """A resumed run skips the epochs it has done: its next epoch has the order and flips of the run's."""
    if pipeline == "tf":
        pytest.importorskip("tensorflow")

    def read_epoch(train):
        if pipeline == "tf":
            return np.concatenate([x.numpy() for x, _, _ in train])
        batches = [train[i][0] for i in range(len(train))]
        train.on_epoch_end()
        return np.concatenate(batches)

    files = write_pairs(tmp_path, 8, size=32)
    spec = DataSpec(4, seed=3, augment="flip", pipeline=pipeline)
    run = from_pairs(files, files[:2], "test", spec).datasets(16)[0]
    epochs = [read_epoch(run) for _ in range(3)]
    assert not np.array_equal(epochs[2], epochs[0])  # each epoch its own draw
    resumed = from_pairs(files, files[:2], "test", spec).datasets(16)[0]
    skip_epochs(resumed, 2)
    np.testing.assert_array_equal(read_epoch(resumed), epochs[2])


def test_padded_batches_are_weightless(tmp_path):
    files = write_pairs(tmp_path, 5, size=16)
    x, y, w = PairDataset(decode_files(files, 16), 16, 2, training=False, pad_to=4)[2]
    # The last batch: one sample, three pads with zero photos, masks and weights.
    assert x.shape[0] == 4 and not x[1:].any() and not y[1:].any() and not w[1:].any() and w[0].any()
