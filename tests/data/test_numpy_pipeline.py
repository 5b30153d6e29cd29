"""numpy_pipeline: the TensorFlow-free pipeline against tf_pipeline's tf.data one."""

import os
import platform
import subprocess
import sys

import cv2
import numpy as np
import pytest

from cityscapes_unet.data.numpy_pipeline import (
    PairDataset,
    class_frequencies_np,
    decode_pair_np,
    nearest_source_indices,
    resize_area,
    resize_nearest,
    to_model_inputs_np,
)
from conftest import ROOT, SHARED_TRAIN, write_pairs
from utils_func import CLASSES, IGNORE_ID, NUM_CLASSES

# TensorFlow's area kernel is reproduced operation by operation in float32;
# on x86-64 (no fused multiply-add in TF's CPU kernels) the photos are the
# same bytes. Elsewhere a compiler may fuse, which can move a tie by one.
EXACT_AREA = platform.machine().lower() in ("x86_64", "amd64")


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


def assert_photo_close(ours, theirs):
    if EXACT_AREA:
        np.testing.assert_array_equal(ours, theirs)
    else:
        diff = np.abs(ours.astype(int) - theirs.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def assert_same_as_tf(tf, path, size):
    from cityscapes_unet.data.tf_pipeline import decode_pair

    photo, ids, full = decode_pair_np(path, size, full_labels=True)
    t_photo, t_ids, t_full = (t.numpy() for t in decode_pair(tf.constant(str(path)), size, full_labels=True))
    assert photo.dtype == ids.dtype == full.dtype == np.uint8
    assert photo.shape == t_photo.shape == (size, size, 3) and ids.shape == t_ids.shape == (size, size)
    np.testing.assert_array_equal(full, t_full)
    np.testing.assert_array_equal(ids, t_ids)
    assert_photo_close(photo, t_photo)
    # Without the full labels only the picked pixels' colours are looked up:
    # the same photo and ids.
    np.testing.assert_array_equal(decode_pair_np(path, size)[1], ids)
    np.testing.assert_array_equal(decode_pair(tf.constant(str(path)), size)[1].numpy(), ids)


# (in, out): down, up, and sizes where float64 arithmetic would pick other
# pixels than TensorFlow's float32 (26 -> 11, 2 -> 41).
SIZE_PAIRS = [(256, 112), (256, 128), (256, 100), (32, 48), (26, 11), (2, 41), (64, 64)]


@pytest.mark.parametrize("n_in, n_out", SIZE_PAIRS)
def test_nearest_resize_picks_tf_source_pixels(tf, n_in, n_out):
    img = np.random.default_rng(n_in * 1000 + n_out).integers(0, 256, (n_in, n_in + 5), dtype=np.uint8)
    ref = tf.image.resize(img[..., None], (n_out, n_out + 3), method="nearest")[..., 0].numpy()
    np.testing.assert_array_equal(resize_nearest(img, n_out, n_out + 3), ref)
    # The indices alone, on an image that holds its own row numbers.
    rows = np.arange(n_in, dtype=np.int32)[:, None, None]
    ref_rows = tf.image.resize(rows, (n_out, 1), method="nearest")[:, 0, 0].numpy()
    np.testing.assert_array_equal(nearest_source_indices(n_in, n_out), ref_rows)


@pytest.mark.parametrize("n_in, n_out", SIZE_PAIRS)
def test_area_resize_matches_tf(tf, n_in, n_out):
    img = np.random.default_rng(n_out).integers(0, 256, (n_in, n_in + 5, 3), dtype=np.uint8)
    ref = tf.image.resize(img, (n_out, n_out + 3), method="area")
    ref = tf.cast(tf.round(tf.clip_by_value(ref, 0, 255)), tf.uint8).numpy()
    assert_photo_close(resize_area(img, n_out, n_out + 3), ref)


@pytest.mark.skipif(not os.path.isdir(SHARED_TRAIN), reason="real pairs not present")
def test_real_pairs_decode_like_tf(tf):
    from cityscapes_unet.data.files import list_images
    from cityscapes_unet.data.tf_pipeline import class_frequencies, decoded_dataset

    files = list_images(SHARED_TRAIN)
    files = files[:: max(1, len(files) // 8)][:8]
    for f in files:
        for size in (112, 256):
            assert_same_as_tf(tf, f, size)
    ds = PairDataset(files, 112, 4, training=False)
    np.testing.assert_array_equal(class_frequencies_np(ds), class_frequencies(decoded_dataset(files, 112)))


@pytest.mark.parametrize("size", [16, 32, 48, 80])
def test_synthetic_pairs_decode_like_tf(tf, tmp_path, size):
    for path in write_pairs(tmp_path, 3, size=64, seed=size):
        assert_same_as_tf(tf, path, size)


def test_class_frequencies_match_tf(tf, tmp_path):
    from cityscapes_unet.data.tf_pipeline import class_frequencies, decoded_dataset

    files = write_pairs(tmp_path, 6, size=32)
    ds = PairDataset(files, 24, 4, training=True)
    freq = class_frequencies_np(ds)
    assert freq.dtype == np.float64 and freq.shape == (NUM_CLASSES,)
    np.testing.assert_array_equal(freq, class_frequencies(decoded_dataset(files, 24)))
    np.testing.assert_array_equal(class_frequencies_np(list(ds.ids)), freq)
    assert freq.sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(class_frequencies_np(np.full((4, 4), IGNORE_ID, np.uint8)), 0)


def test_batches_shapes_dtypes_and_void(tmp_path):
    files = write_pairs(tmp_path, 10, size=32)
    ds = PairDataset(files, 16, 4, training=False)
    assert len(ds) == 3
    batches = [ds[i] for i in range(len(ds))]
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    with pytest.raises(IndexError):
        ds[3]
    for x, y, w in batches:
        assert x.dtype == y.dtype == w.dtype == np.uint8
        assert x.shape[1:] == (16, 16, 3) and y.shape[1:] == (16, 16, 19) and w.shape[1:] == (16, 16)
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    w = np.concatenate([b[2] for b in batches])
    # Not training: the file order, the decoded arrays unchanged.
    decoded = [decode_pair_np(f, 16) for f in files]
    np.testing.assert_array_equal(x, np.stack([p for p, _ in decoded]))
    ids = np.stack([i for _, i in decoded])
    void = ids >= NUM_CLASSES
    assert void[:, 0, 0].all()  # the synthetic pairs' void corner
    np.testing.assert_array_equal(w, (~void).astype(np.uint8))
    np.testing.assert_array_equal(y.sum(-1), w)
    assert (y[void] == 0).all()
    np.testing.assert_array_equal(y.argmax(-1)[~void], ids[~void])
    # Validation batches do not change between epochs.
    ds.on_epoch_end()
    np.testing.assert_array_equal(ds[0][0], batches[0][0])


def _order(ds, reference):
    # Which cached sample each position of the epoch holds.
    x = np.concatenate([ds[i][0] for i in range(len(ds))])
    return [next(k for k, r in enumerate(reference) if np.array_equal(r, s)) for s in x]


def test_training_order_is_seeded_and_reshuffled(tmp_path):
    files = write_pairs(tmp_path, 12, size=16)

    def epochs(seed, n=3):
        ds = PairDataset(files, 16, 5, training=True, seed=seed, augment="none")
        out = []
        for _ in range(n):
            out.append(_order(ds, ds.photos))
            ds.on_epoch_end()
        return out

    first = epochs(seed=3)
    assert all(sorted(e) == list(range(12)) for e in first)  # each sample once
    assert len({tuple(e) for e in first}) == 3  # reshuffled every epoch
    assert epochs(seed=3) == first  # reproducible
    assert epochs(seed=4) != first


def _column_pair(classes, size=32):
    # Vertical bands, one class each, with the photo painted in the class
    # colours: whether photo and mask line up shows in every pixel.
    lut = {c.train_id: c.color for c in CLASSES}
    band = size // len(classes)
    label = np.zeros((size, size, 3), np.uint8)
    for i, c in enumerate(classes):
        label[:, i * band : (i + 1) * band] = lut[c]
    return np.concatenate([label, label], axis=1)


def test_flip_keeps_photo_and_mask_aligned(tmp_path):
    # No layout is another's mirror: a mirrored photo tells its file.
    layouts = [(0, 2, 8, 10), (2, 8, 10, 13), (8, 10, 13, 0), (10, 13, 0, 2), (13, 0, 2, 8), (0, 8, 2, 13)]
    files = []
    for i, classes in enumerate(layouts):
        pair = _column_pair(classes)
        files.append(str(tmp_path / f"{i}.jpg"))
        cv2.imwrite(files[-1], cv2.cvtColor(pair, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])
    ds = PairDataset(files, 32, 6, training=True, seed=1, augment="flip")
    colors = np.array([c.color for c in CLASSES], int)
    flipped = unflipped = 0
    for _ in range(4):
        x, y, w = ds[0]
        for k in range(len(x)):
            how = [_same(cached, x[k]) for cached in ds.photos]
            assert sum(h is not None for h in how) == 1
            flipped += 1 in how
            unflipped += 0 in how
            # The photo's colour at each labelled pixel is its class colour.
            labelled = w[k] == 1
            photo_class = np.abs(x[k][..., None, :].astype(int) - colors).sum(-1).argmin(-1)
            assert (photo_class[labelled] == y[k].argmax(-1)[labelled]).mean() > 0.95
        ds.on_epoch_end()
    assert flipped > 0 and unflipped > 0


def _same(cached, photo):
    # 0: the cached photo, 1: it mirrored, None: neither.
    if np.array_equal(cached, photo):
        return 0
    return 1 if np.array_equal(cached[:, ::-1], photo) else None


def test_augment_choices(tmp_path):
    files = write_pairs(tmp_path, 2, size=16)
    with pytest.raises(NotImplementedError, match="augment='full'"):
        PairDataset(files, 16, 2, training=True, augment="full")
    PairDataset(files, 16, 2, training=False, augment="full")  # ignored out of training
    with pytest.raises(ValueError, match="augment must be one of"):
        PairDataset(files, 16, 2, training=True, augment="zoom")
    assert PairDataset(files, 16, 2, training=True, augment=True).augment == "flip"
    assert PairDataset(files, 16, 2, training=True, augment=False).augment == "none"


def test_undecodable_files_are_skipped(tmp_path):
    files = write_pairs(tmp_path, 3, size=16)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(open(files[0], "rb").read()[:200])
    with pytest.raises(ValueError, match="not a decodable JPEG"):
        decode_pair_np(truncated, 16)
    with pytest.warns(UserWarning, match="truncated.jpg"):
        ds = PairDataset([*files, str(truncated)], 16, 2, training=False)
    assert ds.files == files and [p for p, _ in ds.skipped] == [str(truncated)]
    with pytest.raises(ValueError, match="no decodable pair"), pytest.warns(UserWarning):
        PairDataset([str(truncated)], 16, 2, training=False)


def test_runs_without_tensorflow(tmp_path):
    # Runs under JAX (requirements-backends.txt); skips where it is not installed.
    pytest.importorskip("jax")
    files = write_pairs(tmp_path, 6, size=16)
    script = f"""
import sys
from cityscapes_unet.data import numpy_pipeline, source
assert "tensorflow" not in sys.modules, "numpy_pipeline or source imported tensorflow"


class NoTensorFlow:
    # From here on, as on a machine without it: any import of tensorflow
    # fails. (Not sys.modules["tensorflow"] = None: Keras takes a key there
    # as TensorFlow loaded.)
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError("No module named 'tensorflow'")


sys.meta_path.insert(0, NoTensorFlow())
import keras
files = {files!r}
train = numpy_pipeline.PairDataset(files, 16, 4, training=True)
val = numpy_pipeline.PairDataset(files, 16, 4, training=False)
model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255),
                          keras.layers.Conv2D(19, 1, activation="softmax")])
model.compile("adam", "categorical_crossentropy")
model.fit(train, validation_data=val, epochs=2, verbose=0)
# Keras called on_epoch_end after each epoch (and, in Keras 3.15, once
# more before the first: fit() resets its iterator after building).
assert train.epoch >= 2, train.epoch
print("ok", keras.backend.backend())
"""
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-2:] == ["ok", "jax"]


@pytest.mark.parametrize("pipeline", ["numpy", "tf"])
def test_run_samples_at_the_run_size_or_the_data_size(tmp_path, pipeline):
    """The progress pictures take samples at the network's size; the final
    panels, drawn by the saved model, at the data's own size."""
    if pipeline == "tf":
        pytest.importorskip("tensorflow")
    from cityscapes_unet.data.source import from_pairs

    files = write_pairs(tmp_path, 6, size=32)
    data = from_pairs(files[:4], files[4:], "test", 16, 2, 0, "none", pipeline)
    assert data.source_size == 32
    names, photos, ids = data.samples(2, False)
    assert names == ["5.jpg", "6.jpg"] and photos.shape == (2, 16, 16, 3) and ids.shape == (2, 16, 16)
    names, photos, ids = data.samples(2, False, data.source_size)
    assert photos.shape == (2, 32, 32, 3) and ids.shape == (2, 32, 32)
    # At the data's size: the left half as it is, the labels decoded at full size.
    photo, full_ids = decode_pair_np(files[4], 32)
    np.testing.assert_array_equal(ids[0], full_ids)
    assert np.abs(photos[0].astype(int) - photo).max() <= 1  # JPEG decoders may differ by 1


@pytest.mark.parametrize("pipeline", ["numpy", "tf"])
def test_skip_epochs_serves_the_epoch_an_uninterrupted_run_reaches(tmp_path, pipeline):
    """A resumed run skips the epochs it has done (`source.skip_epochs`):
    its next epoch has the order and flips of that epoch of the run."""
    if pipeline == "tf":
        pytest.importorskip("tensorflow")
    from cityscapes_unet.data.source import from_pairs, skip_epochs

    def read_epoch(train):
        if pipeline == "tf":
            return np.concatenate([x.numpy() for x, _, _ in train])
        batches = [train[i][0] for i in range(len(train))]
        train.on_epoch_end()
        return np.concatenate(batches)

    files = write_pairs(tmp_path, 8, size=32)
    run = from_pairs(files, files[:2], "test", 16, 4, 3, "flip", pipeline).train
    epochs = [read_epoch(run) for _ in range(3)]
    assert not np.array_equal(epochs[2], epochs[0])  # each epoch its own draw
    resumed = from_pairs(files, files[:2], "test", 16, 4, 3, "flip", pipeline).train
    skip_epochs(resumed, 2)
    np.testing.assert_array_equal(read_epoch(resumed), epochs[2])


def test_padded_batches_match_tf(tf, tmp_path):
    """Both pipelines pad with weightless samples and expand ids the same way
    (`decode.targets`, `decode.padding`)."""
    from cityscapes_unet.data.tf_pipeline import make_dataset, to_model_inputs

    files = write_pairs(tmp_path, 5, size=16)
    ours = PairDataset(files, 16, 2, training=False, pad_to=4)
    theirs = [tuple(t.numpy() for t in b) for b in make_dataset(files, 16, 2, training=False, pad_to=4)]
    assert len(ours) == len(theirs) == 3
    for i, batch in enumerate(theirs):
        for a, b in zip(ours[i], batch, strict=True):
            assert a.shape[0] == 4 and a.dtype == b.dtype == np.uint8
            np.testing.assert_array_equal(a, b)
    # The last batch: one sample, three pads with zero photos, masks and weights.
    x, y, w = ours[2]
    assert not x[1:].any() and not y[1:].any() and not w[1:].any() and w[0].any()
    ids = np.array([[0, 18, 19, IGNORE_ID]], np.uint8)
    tf_inputs = [t.numpy() for t in to_model_inputs(tf.constant(ids), tf.constant(ids))]
    for _, y, w in (to_model_inputs_np(ids, ids), tf_inputs):
        np.testing.assert_array_equal(w, [[1, 1, 0, 0]])
        np.testing.assert_array_equal(y.argmax(-1)[w == 1], [0, 18])
        np.testing.assert_array_equal(y.sum(-1), w)
