"""The one photo resize (`area_matrix`) in its three forms, and the nearest pick of class ids."""

import os

import keras
import numpy as np
import pytest

from cityscapes_unet.resize import area_matrix, area_resize, nearest_indices, nearest_resize
from conftest import SHARED_TRAIN
from segmentation_model import resize_photo


def _layer_resize(photos: np.ndarray, size: int, mirror: bool = False) -> np.ndarray:
    x = keras.Input(photos.shape[1:])
    model = keras.Model(x, resize_photo(x, photos.shape[1], size, mirror=mirror))
    return np.asarray(model.predict(photos.astype(np.float32), verbose=0))


def _real_photos(count: int = 4) -> np.ndarray:
    from cityscapes_unet.data.files import list_images
    from cityscapes_unet.data.numpy_pipeline import decode_pair_np

    files = list_images(SHARED_TRAIN)[::700][:count]
    return np.stack([decode_pair_np(f)[0] for f in files])


def test_area_matrix_by_hand():
    # 4 -> 3: each output pixel covers 4/3 input pixels.
    np.testing.assert_allclose(
        area_matrix(4, 3), [[0.75, 0.25, 0, 0], [0, 0.5, 0.5, 0], [0, 0, 0.25, 0.75]], atol=1e-7
    )
    np.testing.assert_allclose(area_matrix(2, 4), [[1, 0], [1, 0], [0, 1], [0, 1]])  # enlarging repeats
    for n, m in ((256, 96), (256, 144), (32, 48)):
        np.testing.assert_allclose(area_matrix(n, m).sum(1), 1, atol=1e-6)


@pytest.mark.skipif(not os.path.isdir(SHARED_TRAIN), reason="real pairs not present")
@pytest.mark.parametrize("size", [96, 144, 320])
def test_numpy_twin_equals_the_models_layer_on_real_photos(size):
    photos = _real_photos()
    ours = np.stack([area_resize(p, size, size) for p in photos])
    np.testing.assert_allclose(ours, _layer_resize(photos, size), atol=2e-3)
    np.testing.assert_allclose(
        _layer_resize(photos, size, mirror=True), _layer_resize(photos[:, :, ::-1], size), atol=2e-3
    )


def test_numpy_twin_equals_the_models_layer():
    photos = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3)).astype(np.uint8)
    for size in (16, 24, 56):
        ours = np.stack([area_resize(p, size, size) for p in photos])
        np.testing.assert_allclose(ours, _layer_resize(photos, size), atol=2e-3)
    np.testing.assert_array_equal(area_resize(photos[0], 40, 40), photos[0])  # the identity at its size


def test_tf_twin_rounds_the_same_resize():
    tf = pytest.importorskip("tensorflow")
    from cityscapes_unet.data.tf_pipeline import area_resize as tf_area_resize

    photo = np.random.default_rng(1).integers(0, 256, (60, 90, 3)).astype(np.uint8)
    theirs = tf_area_resize(tf.constant(photo), 32).numpy()
    ours = area_resize(photo, 32, 32)
    assert theirs.dtype == np.uint8 and np.abs(theirs - ours).max() <= 0.5 + 1e-3


@pytest.mark.parametrize(
    "n_in, n_out", [(256, 112), (256, 144), (256, 100), (32, 48), (26, 11), (2, 41), (64, 64)]
)
def test_nearest_picks_tensorflows_source_pixels(n_in, n_out):
    tf = pytest.importorskip("tensorflow")
    rows = np.arange(n_in, dtype=np.int32)[:, None, None]
    ref = tf.image.resize(rows, (n_out, 1), method="nearest")[:, 0, 0].numpy()
    np.testing.assert_array_equal(nearest_indices(n_in, n_out), ref)
    ids = np.random.default_rng(n_in).integers(0, 20, (3, n_in, n_in), dtype=np.uint8)
    picked = nearest_resize(ids, n_out, n_out, axis=1)
    assert picked.shape == (3, n_out, n_out) and set(np.unique(picked)) <= set(np.unique(ids))
    np.testing.assert_array_equal(picked[1], nearest_resize(ids[1], n_out, n_out))
